"""Errors shared by the emulator and the device runners."""

from __future__ import annotations

import re

_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


class EmulatorError(RuntimeError):
    """QEMU failed to start, died, or its board never showed a REPL."""


class DeviceError(RuntimeError):
    """A script raised an exception on the device (or the tool driving it failed).

    `output` is everything the device and the tool printed; `exc_type` is the name of the
    device exception (e.g. "TypeError") when a traceback was printed, else None.
    """

    def __init__(self, message: str, output: str) -> None:
        super().__init__(f"{message}\n{output}".rstrip())
        self.output = output
        self.exc_type = device_exception_name(output)


class DeviceTimeout(DeviceError, TimeoutError):
    """A script on the device did not finish in time."""


def decode_output(data: bytes | str | None) -> str:
    """Text from a tool's or board's output, with the UART's CRLF line ends made LF."""
    if data is None:
        return ""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    return data.replace("\r\n", "\n")


def device_exception_name(output: str) -> str | None:
    """The exception type from the last traceback in `output`, if there is one."""
    lines = output.replace("\r\n", "\n").split("\n")
    try:
        start = max(i for i, line in enumerate(lines) if line.startswith("Traceback ("))
    except ValueError:
        return None
    for line in lines[start + 1 :]:
        if line.startswith(" "):
            continue
        m = _EXC_LINE.match(line)
        if m:
            return m.group(1)
    return None
