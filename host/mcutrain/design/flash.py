"""Flash a candidate network takes: its parameters, per dtype, plus the mcutrain module's code.

The code size is read from the linker map of a firmware build (build/<board>/firmware.map,
GNU ld): the sizes of every input section placed in flash (.text*, .rodata*, and .data*'s
initial values, which are copied from flash) of the objects compiled from usermod/mcutrain
(paths containing /mcutrain/). MicroPython itself, the board support and the frozen device
package are not counted: they are the same for every network and are the firmware's, not
the module's.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..boards import firmware_dir
from .arch import DTYPE_BYTES, Arch, size

FLASH_SECTIONS = (".text", ".rodata", ".data")
# " .text.name  0x00001234  0x5c /path/obj.o", the name possibly alone on the line before
_SECTION = re.compile(r"^ (\.\S+)?\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S+\.o)\s*$")


def module_code_bytes(map_file: Path | str, marker: str = "/mcutrain/") -> dict[str, int]:
    """Bytes by section kind (text, rodata, data) of the objects under `marker` in a GNU ld
    map file, and their total."""
    out = {"text": 0, "rodata": 0, "data": 0}
    pending: str | None = None
    in_discarded = False
    for line in Path(map_file).read_text(errors="replace").splitlines():
        if line.startswith("Discarded input sections"):
            in_discarded = True
        elif line.startswith("Memory Configuration") or line.startswith("Linker script and memory map"):
            in_discarded = False
        if in_discarded:
            continue
        name_only = re.match(r"^ (\.\S+)\s*$", line)
        if name_only:
            pending = name_only.group(1)
            continue
        m = _SECTION.match(line)
        if m:
            name = m.group(1) or pending
            pending = None
            if name is None or marker not in m.group(4):
                continue
            for kind in FLASH_SECTIONS:
                if name == kind or name.startswith(kind + "."):
                    out[kind[1:]] += int(m.group(3), 16)
                    break
        else:
            pending = None
    out["total"] = out["text"] + out["rodata"] + out["data"]
    return out


def parameter_bytes(arch: Arch) -> int:
    """Bytes of arch's parameters as a model file or flash image holds them: each in its
    dtype; int8 weights add a float32 scale per output channel (per-channel quantization)
    and keep an int32 bias."""
    total = 0
    for layer in arch.layers:
        for name, shape, dtype in layer.param_shapes():
            if dtype == "int8" and name == "bias":
                total += size(shape) * 4
            else:
                total += size(shape) * DTYPE_BYTES[dtype]
        if layer.has_params and layer.dtype == "int8" and layer.kind != "BatchNorm2d":
            total += layer.out_ch * 4  # weight_scale
    return total


def predict_flash(arch: Arch, board: str = "qemu-m4f", map_file: Path | str | None = None) -> dict[str, int]:
    """{"parameters", "code", "total"} bytes: arch's parameters and the module's code as
    built for `board` (from its firmware map)."""
    path = Path(map_file) if map_file is not None else firmware_dir() / board / "firmware.map"
    code = module_code_bytes(path)["total"]
    params = parameter_bytes(arch)
    return {"parameters": params, "code": code, "total": params + code}
