"""Where a command runs: a real board on a serial port, an emulated board booted on demand
(and stopped afterwards), or the unix port as a host process."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .boards import get_board
from .emulator import DEFAULT_EXEC_TIMEOUT, Emulator, default_flash_path, run_mpremote
from .runner import EmulatedTarget, UnixTarget, open_target


@dataclass
class Device:
    """One connected board. `port` is what mpremote connects to (None for the unix port)."""

    board: str  # a board name, or "serial" for a board given by its port
    port: str | None
    target: UnixTarget | EmulatedTarget | None = None

    @property
    def serial_port(self) -> str:
        """The serial port, or ValueError for the unix port (it has no UART)."""
        if self.port is None:
            raise ValueError(
                f"the {self.board} board has no serial link; it reads host files directly"
            )
        return self.port

    @contextmanager
    def session(self) -> Iterator[None]:
        """Around direct use of the port (mpremote, our transfer): an emulated board is
        (re)started if needed and what it printed meanwhile is discarded before and after."""
        emulator = self._emulator()
        if emulator is not None:
            emulator.start()  # boots again if QEMU died
            self.port = emulator.device
            emulator.drain_uart()
        try:
            yield
        finally:
            if emulator is not None and emulator.running:
                emulator.drain_uart()

    @contextmanager
    def uart(self) -> Iterator[str]:
        """session() for a board on a serial link; the port."""
        self.serial_port  # noqa: B018 - raises for the unix port
        with self.session():
            yield self.serial_port

    def exec(self, code: str, timeout: float | None = DEFAULT_EXEC_TIMEOUT) -> str:
        """Run `code` (after a soft reset); what it printed."""
        if self.target is not None:
            return self.target.exec(code, timeout)
        return run_mpremote(self.serial_port, "exec", code, timeout=timeout)

    def script_command(self, script: Path, mount: Path | None = None, args: Sequence[str] = ()) -> list[str]:
        """The command that runs `script` with its output on stdout (mount: a host folder
        served at /remote, the script's working directory), with sys.argv = [script, *args]."""
        if self.port is None:
            if mount is not None:
                raise ValueError("--mount is for boards on a serial link; unix reads host files")
            assert isinstance(self.target, UnixTarget)
            return [str(self.target.micropython), str(script.absolute()), *args]
        mounted = ["mount", str(mount)] if mount is not None else []
        # mpremote soft-resets before its first command only: argv set by `exec` reaches `run`.
        argv = ["exec", f"import sys; sys.argv[:] = {[script.name, *args]!r}"]
        return [sys.executable, "-m", "mpremote", "connect", self.port, *mounted, *argv,
                "run", str(script)]  # fmt: skip

    def _emulator(self) -> Emulator | None:
        if isinstance(self.target, EmulatedTarget):
            return self.target.emulator
        return None


@contextmanager
def open_device(
    port: str | None = None,
    board: str = "qemu-m4f",
    *,
    flash: Path | str | None = None,
    heap: int | None = None,
    flash_size: int | None = None,
) -> Iterator[Device]:
    """The board at serial `port`, else `board` (an emulated one is booted with its flash image,
    default ~/.cache/mcutrain/BOARD-flash.img, made `flash_size` bytes if new, and stopped on
    exit)."""
    if port is not None:
        yield Device("serial", port)
        return
    spec = get_board(board)
    if spec.emulated and flash is None:
        flash = default_flash_path(board)
    with open_target(board, flash=flash, heap=heap, flash_size=flash_size) as target:
        if isinstance(target, EmulatedTarget):
            yield Device(board, target.emulator.device, target)
        else:
            yield Device(board, None, target)


def device_for_target(target: UnixTarget | EmulatedTarget) -> Device:
    """A Device on an already running target (the tests' session boards)."""
    if isinstance(target, EmulatedTarget):
        return Device(target.board.name, target.emulator.device, target)
    return Device(target.board.name, None, target)
