"""Device names as mpremote spells them, and the default device from the environment.

    auto        the first USB serial port found (one with a USB vendor and product id)
    a0, a1 ...  /dev/ttyACM0, /dev/ttyACM1 ...      (mpremote's shortcuts, any number here)
    u0, u1 ...  /dev/ttyUSB0, ...
    c0, c1 ...  COM0, ...
    id:SERIAL   the port of the USB device with that serial number
    port:PATH   PATH, even if it looks like one of the above
    PATH        a serial device, e.g. /dev/ttyACM0 or an emulator's /dev/pts/3

MCUTRAIN_DEVICE holds the device commands use when no --device is given (mpremote has no such
variable: it connects to `auto` by default). An explicit --board wins over it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence

DEVICE_ENV = "MCUTRAIN_DEVICE"
_SHORTCUT = re.compile(r"^([auc])(\d+)$")
_PREFIXES = {"a": "/dev/ttyACM", "u": "/dev/ttyUSB", "c": "COM"}


class PortError(ValueError):
    """A device name that names no usable serial port; the message is one line."""


def _ports() -> Sequence[object]:
    from serial.tools import list_ports

    return sorted(list_ports.comports(), key=lambda p: p.device)


def usb_ports() -> list[str]:
    """USB serial ports (those with a vendor and product id), sorted, as mpremote's `auto`
    sees them."""
    return [p.device for p in _ports() if p.vid is not None and p.pid is not None]  # type: ignore[attr-defined]


def _found() -> str:
    ports = [p.device for p in _ports()]  # type: ignore[attr-defined]
    return f"ports found: {', '.join(ports)}" if ports else "no serial ports found"


def expand_device(name: str) -> str:
    """The port a device name stands for (see the module doc); PortError if it has none."""
    name = name.strip()
    if not name:
        raise PortError("empty device name (give a port such as /dev/ttyACM0, a0 or auto)")
    if name == "auto":
        ports = usb_ports()
        if not ports:
            raise PortError("--device auto: no USB serial port found (is the board plugged in? "
                            f"{_found()})")  # fmt: skip
        return ports[0]
    if name.startswith("port:"):
        return name[len("port:") :]
    if name.startswith("id:"):
        serial = name[len("id:") :]
        for p in _ports():
            if getattr(p, "serial_number", None) == serial:
                return str(p.device)  # type: ignore[attr-defined]
        raise PortError(f"no USB device with serial number {serial!r} ({_found()})")
    m = _SHORTCUT.match(name)
    if m:
        return _PREFIXES[m[1]] + m[2]
    return name


def check_port(port: str) -> None:
    """A one-line PortError when `port` cannot be a serial port here: missing, not a device,
    or not ours to open."""
    if sys.platform == "win32" or "://" in port:  # COM ports; pyserial URLs (socket://...)
        return
    if not os.path.isabs(port):
        raise PortError(f"{port} is not a serial port here ({_found()}; give auto, a0, u0, c0 "
                        "or a path such as /dev/ttyACM0)")  # fmt: skip
    if not os.path.exists(port):
        raise PortError(f"no serial port {port} ({_found()})")
    if os.path.isdir(port) or os.path.isfile(port):
        raise PortError(f"{port} is not a serial port (it is a {'folder' if os.path.isdir(port) else 'file'})")
    if not os.access(port, os.R_OK | os.W_OK):
        hint = " (on Linux, join the dialout group)" if sys.platform.startswith("linux") else ""
        raise PortError(f"no permission to open {port}{hint}")


def resolve_device(
    device: str | None, *, board_given: bool = False, env: Mapping[str, str] | None = None
) -> str | None:
    """The serial port to use: `device` (a name as above), else $MCUTRAIN_DEVICE unless a board
    was named explicitly, else None (boot the board's emulator). Checked: PortError if unusable."""
    env = os.environ if env is None else env
    if device is None and not board_given:
        device = env.get(DEVICE_ENV) or None
        if device is not None:
            try:
                port = expand_device(device)
                check_port(port)
            except PortError as e:
                raise PortError(f"{DEVICE_ENV}={device}: {e}") from None
            return port
    if device is None:
        return None
    port = expand_device(device)
    try:
        check_port(port)
    except PortError as e:
        if port == device:
            raise
        raise PortError(f"{device}: {e}") from None
    return port


__all__ = ["DEVICE_ENV", "PortError", "check_port", "expand_device", "resolve_device", "usb_ports"]
