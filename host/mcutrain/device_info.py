"""What a board runs: firmware versions, board, free heap and flash, the module's features."""

from __future__ import annotations

import json
from typing import Any

from .device import Device

_MARK = "@mt-info "
# Runs on the board; sticks to what every MicroPython port has.
INFO_SCRIPT = """
import sys, gc, json, os
i = {}
v = sys.implementation
i["micropython"] = "%d.%d.%d" % v.version[:3]
i["platform"] = sys.platform
i["machine"] = getattr(v, "_machine", "")
try:
    import _mcutrain as m
    i["mcutrain"] = m.version()
    i["perf_unit"] = getattr(m, "PERF_UNIT", None)
    i["module"] = sorted(n for n in dir(m) if not n.startswith("_"))
except ImportError:
    i["mcutrain"] = None
try:
    import mcutrain
    i["package"] = sorted(n for n in dir(mcutrain) if not n.startswith("_"))
except ImportError:
    i["package"] = None
gc.collect()
i["heap_free"] = gc.mem_free()
i["heap_total"] = gc.mem_free() + gc.mem_alloc()
f = []
for name in ("hashlib", "select", "deflate", "array", "struct"):
    try:
        __import__(name)
        f.append(name)
    except ImportError:
        pass
i["float"] = "double" if 1.0 + 2.0 ** -40 != 1.0 else "single"
i["python_modules"] = f
try:
    s = os.statvfs(".")
    i["fs_free"] = s[0] * s[4]
    i["cwd"] = os.getcwd()
except (AttributeError, OSError):
    pass
print("@MARK@" + json.dumps(i))
""".replace("@MARK@", _MARK)


def device_info(device: Device) -> dict[str, Any]:
    """The board's facts as a dict (see INFO_SCRIPT for the keys), plus `board`."""
    out = device.exec(INFO_SCRIPT, timeout=30)
    for line in out.splitlines():
        if line.startswith(_MARK):
            info: dict[str, Any] = json.loads(line[len(_MARK) :])
            info["board"] = device.board if device.board != "serial" else device.port
            return info
    raise ValueError(f"the board did not report its info; it printed:\n{out}")


def format_info(info: dict[str, Any]) -> str:
    """`key: value` lines for people."""

    def kb(n: object) -> str:
        return f"{n} bytes ({int(n) / 1024:.1f} KB)" if isinstance(n, int) else "?"

    rows = [
        ("board", info.get("board")),
        ("machine", info.get("machine")),
        ("firmware", f"MicroPython {info.get('micropython')} ({info.get('platform')})"),
        ("mcutrain", info.get("mcutrain") or "not in this firmware"),
        ("heap free", f"{kb(info.get('heap_free'))} of {kb(info.get('heap_total'))}"),
    ]
    if "fs_free" in info:
        rows.append(("flash free", f"{kb(info['fs_free'])} at {info.get('cwd')}"))
    rows.append(("float", info.get("float")))
    if info.get("perf_unit"):
        rows.append(("perf_counter", info["perf_unit"]))
    rows.append(("module", ", ".join(info.get("module") or []) or "-"))
    if info.get("package") is not None:
        rows.append(("package", ", ".join(info["package"]) or "-"))
    rows.append(("python modules", ", ".join(info.get("python_modules") or [])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':{width + 1}} {v}" for k, v in rows)
