"""Emulated boards: QEMU with our firmware, its UART on a pty, driven with mpremote."""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import serial

from .boards import DEFAULT_BOARD, Board, find_firmware, get_board
from .errors import DeviceError, DeviceTimeout, EmulatorError, decode_output

FLASH_SIZE = 2 * 1024 * 1024
FLASH_BLOCK = 4096  # boards/qemu/flash.c: littlefs blocks; an image is a whole number of them


def check_flash_size(size: int) -> int:
    """`size` if it can be a flash image's size (at least 16 blocks, whole blocks, under 2 GiB:
    the board counts blocks in 32 bits and semihosting offsets are 32-bit), else ValueError."""
    if not (16 * FLASH_BLOCK <= size < 2**31) or size % FLASH_BLOCK:
        raise ValueError(f"a flash size must be a multiple of {FLASH_BLOCK} bytes from "
                         f"{16 * FLASH_BLOCK} to under 2 GiB, not {size}")  # fmt: skip
    return size
DEFAULT_BOOT_TIMEOUT = 30.0
DEFAULT_EXEC_TIMEOUT = 60.0
_PTY_LINE = re.compile(rb"char device redirected to (/dev/pts/\d+)")
_PROMPT = b">>> "

_running: weakref.WeakSet[Emulator] = weakref.WeakSet()


def default_flash_path(board: str) -> Path:
    """The flash image `mcutrain emulate` keeps between sessions, like a real board's flash."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mcutrain" / f"{board}-flash.img"


def mpremote_command(device: str, *args: str) -> list[str]:
    """`mpremote connect DEVICE ARGS...`, using the mpremote installed beside this Python."""
    return [sys.executable, "-m", "mpremote", "connect", device, *args]


def run_mpremote(
    device: str,
    *args: str,
    timeout: float | None = DEFAULT_EXEC_TIMEOUT,
    capture: bool = True,
    cwd: Path | str | None = None,
) -> str:
    """Run mpremote against `device`; return its stdout ("" when not captured).

    Raises DeviceError when mpremote fails (a device exception gives `exc_type`), and
    DeviceTimeout when it takes longer than `timeout` seconds (mpremote is then killed; the
    next mpremote command interrupts the script still running on the board with Ctrl-C).
    """
    command = mpremote_command(device, *args)
    pipe = subprocess.PIPE if capture else None
    try:
        done = subprocess.run(
            command, stdout=pipe, stderr=pipe, stdin=subprocess.DEVNULL, timeout=timeout, cwd=cwd
        )
    except subprocess.TimeoutExpired as e:
        output = decode_output(e.stdout) + decode_output(e.stderr)
        raise DeviceTimeout(
            f"`{_shell(args)}` on {device} took more than {timeout} s", output
        ) from None
    output = decode_output(done.stdout)
    if done.returncode != 0:
        raise DeviceError(
            f"`{_shell(args)}` on {device} failed (mpremote exit {done.returncode})",
            output + decode_output(done.stderr),
        )
    return output


def _shell(args: tuple[str, ...]) -> str:
    return " ".join(a if len(a) < 60 else a[:57] + "..." for a in args)


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel send QEMU SIGTERM if we die without cleaning up
    (SIGKILL, crash) -- Linux only. Looked up here: the forked child must not import."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    PR_SET_PDEATHSIG = 1

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_parent_death_signal


_set_parent_death_signal = _parent_death_signal()


class Emulator:
    """One QEMU process running a board's firmware.

        with Emulator("qemu-m4f") as emu:
            print(emu.exec("import mcutrain; print(mcutrain.version())"))

    `flash` is the host file backing the board's flash (created, `flash_size` bytes or 2 MiB,
    if missing; an existing one of another size than a given `flash_size` is refused); None
    gives a temporary image removed on close. `heap` is the MicroPython heap in bytes.
    QEMU is always stopped on exit from the `with` block, including on KeyboardInterrupt.

    `qemu_args` go at the end of QEMU's command line (e.g. the cycle model's -plugin, see
    cycle_model.py); none by default.

    `hold_uart` keeps the UART's pty open between commands: QEMU notices that a pty was
    opened only on a 1 s poll, which would add a second to every mpremote command. It is
    for an emulator that only this object drives (output left between commands is
    discarded); `mcutrain emulate`, whose users connect at any time, turns it off.
    """

    def __init__(
        self,
        board: str = DEFAULT_BOARD,
        flash: Path | str | None = None,
        heap: int | None = None,
        firmware: Path | str | None = None,
        timeout: float = DEFAULT_BOOT_TIMEOUT,
        hold_uart: bool = True,
        qemu_args: Sequence[str] = (),
        flash_size: int | None = None,
    ) -> None:
        self.board: Board = get_board(board)
        self.flash_size = check_flash_size(flash_size) if flash_size is not None else None
        if not self.board.emulated:
            raise ValueError(f"board {board!r} is not emulated (it runs as a host process)")
        self.firmware = find_firmware(self.board, firmware)
        self.heap = heap if heap is not None else self.board.default_heap
        self.timeout = timeout
        self.hold_uart = hold_uart
        self.qemu_args = list(qemu_args)
        self._uart: serial.Serial | None = None
        self._flash = Path(flash).expanduser().absolute() if flash is not None else None
        self._temporary_flash = flash is None
        self._tmpdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []
        self._log = bytearray()
        self._log_changed = threading.Condition()
        self._flash_lock: IO[bytes] | None = None
        self._device: str | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Emulator:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def flash(self) -> Path:
        if self._flash is None:
            self._flash = self._workdir() / "flash.img"
        return self._flash

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def device(self) -> str:
        """The pty that is the board's UART (what `mpremote connect` takes)."""
        if self._device is None or not self.running:
            raise EmulatorError(f"{self.board.name} emulator is not running")
        return self._device

    @property
    def pid(self) -> int | None:
        """QEMU's process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def output(self) -> str:
        """What QEMU itself printed (not the board's UART)."""
        with self._log_changed:
            return self._log.decode("utf-8", "replace")

    def start(self) -> Emulator:
        """Boot the board and wait until its REPL answers; stop QEMU again if that fails."""
        if self.running:
            return self
        try:
            self._lock_flash()
            self._launch()
            deadline = time.monotonic() + self.timeout
            self._device = self._wait_for_pty(deadline)
            self._wait_for_repl(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop QEMU (terminate, then kill); the flash image stays."""
        proc, self._proc = self._proc, None
        self._device = None
        if self._uart is not None:
            self._uart.close()
            self._uart = None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            for reader in self._readers:
                reader.join(timeout=2)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            _running.discard(self)
        self._readers = []
        if self._flash_lock is not None:
            self._flash_lock.close()  # releases the flock
            self._flash_lock = None

    def restart(self) -> Emulator:
        """A new QEMU on the same flash image: like pressing the board's reset button."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop QEMU and remove the temporary flash image, if this emulator made one."""
        self.stop()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        if self._temporary_flash:
            self._flash = None  # a later start() gets a fresh one

    def wait(self) -> int:
        """Block until QEMU exits by itself; its exit status."""
        if self._proc is None:
            raise EmulatorError(f"{self.board.name} emulator is not running")
        return self._proc.wait()

    # -- running code ---------------------------------------------------------------------

    def mpremote(
        self,
        *args: str,
        timeout: float | None = DEFAULT_EXEC_TIMEOUT,
        capture: bool = True,
        cwd: Path | str | None = None,
    ) -> str:
        """`mpremote connect <this board> ARGS...`; its stdout. See run_mpremote()."""
        device = self.device
        self.drain_uart()
        try:
            return run_mpremote(device, *args, timeout=timeout, capture=capture, cwd=cwd)
        finally:
            self.drain_uart()

    def drain_uart(self) -> bytes:
        """Discard what the board printed while no command was connected (with hold_uart)."""
        drained = bytearray()
        if self._uart is not None:
            while waiting := self._uart.in_waiting:
                drained += self._uart.read(waiting)
        return bytes(drained)

    def exec(self, code: str, timeout: float | None = DEFAULT_EXEC_TIMEOUT) -> str:
        """Run `code` on the board (after a soft reset); what it printed."""
        script = self._workdir() / "exec.py"
        script.write_text(code)
        return self.run_file(script, timeout)

    def run_file(
        self, path: Path | str, timeout: float | None = DEFAULT_EXEC_TIMEOUT, capture: bool = True
    ) -> str:
        """Run a host file on the board (after a soft reset); what it printed."""
        return self.mpremote("run", str(path), timeout=timeout, capture=capture)

    # -- internals ------------------------------------------------------------------------

    def _workdir(self) -> Path:
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix=f"mcutrain-{self.board.name}-"))
        return self._tmpdir

    def _lock_flash(self) -> None:
        # Two emulators writing one littlefs image would corrupt it.
        flash = self.flash
        flash.parent.mkdir(parents=True, exist_ok=True)
        if not flash.exists():
            with open(flash, "wb") as f:
                f.truncate(self.flash_size or FLASH_SIZE)
        elif self.flash_size is not None and flash.stat().st_size != self.flash_size:
            # littlefs keeps its block count: a resized image would not mount (or lose files).
            raise EmulatorError(
                f"flash image {flash} is {flash.stat().st_size} bytes, not the {self.flash_size} asked "
                "for: give another --flash, or erase it at the new size (mcutrain emulate "
                "--format-flash --flash-size N; its files are lost)"
            )
        lock = open(flash, "rb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise EmulatorError(
                f"flash image {flash} is in use by another emulator (if `mcutrain emulate` is "
                "running, use its board with mpremote, or give this one another --flash)"
            ) from None
        self._flash_lock = lock

    def _qemu_flash_path(self) -> str:
        # -semihosting-config splits on commas and the firmware's argument parser on spaces.
        path = str(self.flash)
        if re.search(r"[\s,]", path):
            link = self._workdir() / "flash.img.link"
            link.unlink(missing_ok=True)
            link.symlink_to(path)
            path = str(link)
        return path

    def command(self) -> list[str]:
        """The QEMU command line."""
        b = self.board
        assert b.qemu is not None
        return [
            b.qemu,
            *b.machine_args,
            "-kernel", str(self.firmware),
            "-display", "none",
            "-monitor", "none",
            "-serial", "pty",
            # One guest instruction per virtual ns: perf_counter() counts are exact, repeatable.
            "-icount", "shift=0",
            "-semihosting-config",
            f"enable=on,target=native,arg=mcutrain,arg=flash={self._qemu_flash_path()},"
            f"arg=heap={self.heap}",
            *self.qemu_args,
        ]  # fmt: skip

    def _launch(self) -> None:
        command = self.command()
        if shutil.which(command[0]) is None:
            raise EmulatorError(f"{command[0]} not found (install QEMU: `make setup`)")
        with self._log_changed:
            self._log.clear()
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Ctrl-C in a terminal reaches only us; we stop QEMU in order.
            start_new_session=True,
            preexec_fn=_set_parent_death_signal,
        )
        _running.add(self)
        self._readers = [
            threading.Thread(target=self._collect, args=(pipe,), daemon=True)
            for pipe in (self._proc.stdout, self._proc.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _collect(self, pipe: IO[bytes] | None) -> None:
        # Drains a QEMU pipe for the whole run, so QEMU never blocks on a full pipe.
        assert pipe is not None
        while True:
            try:
                chunk = os.read(pipe.fileno(), 4096)
            except (OSError, ValueError):
                chunk = b""
            with self._log_changed:
                self._log += chunk
                self._log_changed.notify_all()
            if not chunk:
                return

    def _wait_for_pty(self, deadline: float) -> str:
        while True:
            with self._log_changed:
                m = _PTY_LINE.search(self._log)
                if m:
                    return m.group(1).decode()
                self._log_changed.wait(max(0.0, min(deadline - time.monotonic(), 0.2)))
            self._check_alive("before opening its serial pty")
            if time.monotonic() > deadline:
                raise EmulatorError(self._failure("QEMU did not report its serial pty"))

    def _wait_for_repl(self, deadline: float) -> None:
        seen = bytearray()
        uart = serial.Serial()
        try:
            uart.port, uart.baudrate, uart.timeout = self._device, 115200, 0.1
            uart.open()
            while _PROMPT not in seen:
                self._check_alive("before its REPL answered", seen)
                if time.monotonic() > deadline:
                    raise EmulatorError(
                        self._failure(f"no REPL prompt within {self.timeout} s", seen)
                    )
                uart.write(b"\r\n")
                poll_end = time.monotonic() + 0.5
                while _PROMPT not in seen and time.monotonic() < poll_end:
                    seen += uart.read(256)
        except serial.SerialException as e:
            # The pty closes when QEMU exits: report why QEMU went, not the symptom.
            uart.close()
            assert self._proc is not None
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            self._check_alive("before its REPL answered", seen)
            raise EmulatorError(self._failure(f"UART failed ({e})", seen)) from e
        except BaseException:
            uart.close()
            raise
        if self.hold_uart:
            self._uart = uart
        else:
            uart.close()

    def _check_alive(self, when: str, uart: bytes | bytearray = b"") -> None:
        assert self._proc is not None
        status = self._proc.poll()
        if status is not None:
            for reader in self._readers:
                reader.join(timeout=1)
            raise EmulatorError(self._failure(f"QEMU exited with status {status} {when}", uart))

    def _failure(self, what: str, uart: bytes | bytearray = b"") -> str:
        lines = [
            f"{self.board.name}: {what}.",
            f"command: {' '.join(self.command())}",
            f"QEMU output:\n{self.output.strip() or '(none)'}",
        ]
        if uart:
            lines.append(f"UART output:\n{uart.decode('utf-8', 'replace').strip()}")
        return "\n".join(lines)


@atexit.register
def _stop_all() -> None:
    for emu in list(_running):
        emu.stop()


__all__ = [
    "DeviceError",
    "DeviceTimeout",
    "Emulator",
    "EmulatorError",
    "default_flash_path",
    "mpremote_command",
    "run_mpremote",
]
