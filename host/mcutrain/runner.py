"""Run MicroPython code on any target: the unix port as a process, emulated boards over mpremote."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

from .boards import Board, find_firmware, get_board
from .emulator import DEFAULT_EXEC_TIMEOUT, Emulator
from .errors import DeviceError, DeviceTimeout, decode_output


class Target(Protocol):
    """Somewhere to run device code. `exec`/`run_file` return what the code printed and raise
    DeviceError (with `exc_type`) when it raises, DeviceTimeout when it runs too long."""

    board: Board

    @property
    def name(self) -> str: ...

    def exec(self, code: str, timeout: float | None = DEFAULT_EXEC_TIMEOUT) -> str: ...

    def run_file(
        self, path: Path | str, timeout: float | None = DEFAULT_EXEC_TIMEOUT, capture: bool = True
    ) -> str: ...

    def close(self) -> None: ...


class UnixTarget:
    """The unix port. It has no raw REPL, so each script is a fresh `micropython` process."""

    def __init__(
        self,
        micropython: Path | str | None = None,
        heap: int | None = None,
        cwd: Path | str | None = None,
    ) -> None:
        self.board = get_board("unix")
        self.micropython = find_firmware(self.board, micropython)
        self.heap = heap
        self.cwd = cwd

    @property
    def name(self) -> str:
        return self.board.name

    def exec(self, code: str, timeout: float | None = DEFAULT_EXEC_TIMEOUT) -> str:
        return self._run(["-c", code], timeout, capture=True)

    def run_file(
        self, path: Path | str, timeout: float | None = DEFAULT_EXEC_TIMEOUT, capture: bool = True
    ) -> str:
        return self._run([str(Path(path).absolute())], timeout, capture)

    def close(self) -> None:
        pass

    def __enter__(self) -> UnixTarget:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, args: list[str], timeout: float | None, capture: bool) -> str:
        heap = ["-X", f"heapsize={self.heap}"] if self.heap else []
        command = [str(self.micropython), *heap, *args]
        pipe = subprocess.PIPE if capture else None
        try:
            done = subprocess.run(
                command,
                stdout=pipe,
                stderr=pipe,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                cwd=self.cwd,
            )
        except subprocess.TimeoutExpired as e:
            raise DeviceTimeout(
                f"unix: {args[-1][:60]!r} took more than {timeout} s",
                decode_output(e.stdout) + decode_output(e.stderr),
            ) from None
        if done.returncode != 0:
            raise DeviceError(
                f"unix: {args[-1][:60]!r} failed (exit {done.returncode})",
                decode_output(done.stdout) + decode_output(done.stderr),
            )
        return decode_output(done.stdout)


class EmulatedTarget:
    """An emulated board. Each script starts after a soft reset, so scripts do not share state.

    After a timeout the board is restarted (same flash image): a script stuck in C code
    would otherwise ignore the Ctrl-C that mpremote sends next.
    """

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.board = emulator.board

    @property
    def name(self) -> str:
        return self.board.name

    def exec(self, code: str, timeout: float | None = DEFAULT_EXEC_TIMEOUT) -> str:
        return self._recovering(lambda: self.emulator.exec(code, timeout))

    def run_file(
        self, path: Path | str, timeout: float | None = DEFAULT_EXEC_TIMEOUT, capture: bool = True
    ) -> str:
        return self._recovering(lambda: self.emulator.run_file(path, timeout, capture))

    def mpremote(
        self,
        *args: str,
        timeout: float | None = DEFAULT_EXEC_TIMEOUT,
        capture: bool = True,
        cwd: Path | str | None = None,
    ) -> str:
        """`mpremote connect <this board> ARGS...` (see run_mpremote())."""
        return self._recovering(
            lambda: self.emulator.mpremote(*args, timeout=timeout, capture=capture, cwd=cwd)
        )

    def close(self) -> None:
        self.emulator.close()

    def __enter__(self) -> EmulatedTarget:
        self.emulator.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _recovering(self, run: Callable[[], str]) -> str:
        self.emulator.start()  # no-op when running; boots again if QEMU died
        try:
            return run()
        except DeviceTimeout:
            self.emulator.restart()
            raise


def open_target(
    board: str,
    *,
    flash: Path | str | None = None,
    heap: int | None = None,
    firmware: Path | str | None = None,
    qemu_args: Sequence[str] = (),
    flash_size: int | None = None,
) -> UnixTarget | EmulatedTarget:
    """A target for `board`, not yet started; use it as a context manager. `qemu_args` are
    extra QEMU arguments for an emulated board (e.g. the cycle model's plugin)."""
    if get_board(board).emulated:
        return EmulatedTarget(
            Emulator(board, flash=flash, heap=heap, firmware=firmware, qemu_args=qemu_args,
                     flash_size=flash_size)  # fmt: skip
        )
    if flash is not None or flash_size is not None:
        raise ValueError("the unix board has no flash image; it uses the host filesystem")
    return UnixTarget(micropython=firmware, heap=heap)


def run_on(
    target: Target, code_or_script: str | Path, timeout: float | None = DEFAULT_EXEC_TIMEOUT
) -> str:
    """Run source code (str) or a script file (Path) on `target`; what it printed."""
    if isinstance(code_or_script, Path):
        return target.run_file(code_or_script, timeout)
    return target.exec(code_or_script, timeout)
