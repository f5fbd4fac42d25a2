"""Fast, checksummed, resumable file transfer to a board over mpremote's serial connection.

`mpremote fs cp` sends a file as Python literals, one exec per chunk: a few KB/s over a UART.
Here the host enters the raw REPL, starts a small receiver on the board (transfer_device.py,
sent as a script) and streams binary frames that it reads from `sys.stdin.buffer`.

Host to board, frames:
    0xA5, type u8, length u16, offset u32, crc32 u32, payload   (little-endian)
    The CRC covers type, length, offset and the payload. Types: START (offset = where to
    resume: 0 or the partial file's size), DATA, END (offset = file size, payload = the
    host's digest in hex).
Board to host, text lines:
    R algo size digest frame_max free   ready; size and digest describe DEST.part
    A pos                               everything before pos is written
    N pos                               a frame was bad or missing: send again from pos
    D ok|bad digest size                the board hashed the file; on ok it is now DEST
    E message                           the receiver failed

The board acknowledges each frame; the host keeps up to `window` bytes unacknowledged so the
UART never idles while the board writes to flash. On a bad frame the board swallows input
until the host falls quiet, then names the offset to resume from; frames carry offsets, so
a repeat is acknowledged and skipped, never written twice. A dropped link leaves DEST.part:
on reconnect the board reports its size and hash and the host resumes after it when its own
data hashes the same. The file is renamed into place only when the board's hash of what it
wrote matches the host's (sha256, or CRC32 on firmware without hashlib).
"""

from __future__ import annotations

import hashlib
import os
import select
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import serial
from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from .errors import DeviceError

MAGIC = 0xA5
ABORT = 0x03
T_START = 0x53
T_DATA = 0x44
T_END = 0x45
HEADER = struct.Struct("<BBHII")  # magic, type, length, offset, crc32
MAX_FRAME = 4096
# On the emulated boards (bench_transfer.py) frame and window sizes from 256 B to 8 KB all
# reach the link's rate (QEMU moves one UART byte per main-loop turn); 1 KB frames keep the
# CRC and flash-write cost per byte low, and 4 KB in flight keeps the board's 512-byte RX
# ring full while it writes to flash.
DEFAULT_FRAME = 1024
DEFAULT_WINDOW = 4096

ProgressFn = Callable[[int, int], None]


class TransferError(RuntimeError):
    """The transfer failed for good (the board refused it, or retries ran out)."""


class LinkError(OSError):
    """The link stalled or closed; a retry may resume."""


class Link(Protocol):
    """A byte pipe to the board's stdin/stdout."""

    def write(self, data: bytes) -> None: ...

    def read(self, timeout: float) -> bytes:
        """What arrived within `timeout` seconds (b"" if nothing)."""
        ...


class SerialLink:
    """A Link over an open pyserial port, leaving the port's settings alone for mpremote."""

    def __init__(self, port: serial.Serial) -> None:
        self.port = port

    def write(self, data: bytes) -> None:
        self.port.write(data)

    def read(self, timeout: float) -> bytes:
        fd = self.port.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return b""
        data = os.read(fd, 4096)
        if not data:
            raise LinkError("serial port closed")
        return data


class LineReader:
    """Lines from a Link, keeping bytes that follow them for whoever reads next."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.buffer = bytearray()

    def line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end]).rstrip(b"\r")
                del self.buffer[: end + 1]
                return line.decode("utf-8", "replace")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.buffer += self.link.read(left)

    def until(self, marker: bytes, timeout: float) -> bytes | None:
        """Everything up to and including `marker`; None if it does not come in time."""
        deadline = time.monotonic() + timeout
        while (end := self.buffer.find(marker)) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.buffer += self.link.read(left)
        data = bytes(self.buffer[: end + len(marker)])
        del self.buffer[: end + len(marker)]
        return data


def frame(kind: int, offset: int, payload: bytes | memoryview = b"") -> bytes:
    """One frame: header with CRC32 over type, length, offset and payload."""
    head = struct.pack("<BHI", kind, len(payload), offset)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return bytes([MAGIC]) + head + struct.pack("<I", crc) + bytes(payload)


def digest(data: bytes | memoryview, algo: str) -> str:
    """The hex digest the board's receiver computes with `algo`."""
    if algo == "sha256":
        return hashlib.sha256(data).hexdigest()
    if algo == "crc32":
        return f"{zlib.crc32(data):08x}"
    raise TransferError(f"board offers unknown hash {algo!r}")


@dataclass
class Ready:
    algo: str
    have: int
    digest: str
    frame_max: int
    free: int


@dataclass
class SendReport:
    bytes: int
    resumed_from: int
    wire_bytes: int  # payload bytes sent, repeats included
    nacks: int
    digest: str
    algo: str


def _expect_ready(reader: LineReader, timeout: float) -> Ready:
    deadline = time.monotonic() + timeout
    while (line := reader.line(max(0.0, deadline - time.monotonic()))) is not None:
        if line.startswith("R "):
            algo, have, dig, frame_max, free = line[2:].split()
            return Ready(algo, int(have), dig, int(frame_max), int(free))
        if line.startswith("E "):
            raise TransferError(f"receiver failed: {line[2:]}")
        _check_ended(reader, line)
    raise LinkError("receiver did not answer")


def send_data(
    link: Link,
    data: bytes,
    *,
    frame_size: int = DEFAULT_FRAME,
    window: int = DEFAULT_WINDOW,
    progress: ProgressFn | None = None,
    ready_timeout: float = 60.0,
    stall_timeout: float = 2.0,
    done_timeout: float = 120.0,
    max_stalls: int = 5,
    reader: LineReader | None = None,
) -> SendReport:
    """Run the protocol against a receiver that has started on the other end of `link`."""
    reader = reader or LineReader(link)
    size = len(data)
    view = memoryview(data)
    ready = _expect_ready(reader, ready_timeout)
    frame_size = max(1, min(frame_size, ready.frame_max))
    max_window = window = max(window, frame_size)
    start = 0
    if 0 < ready.have <= size and digest(view[: ready.have], ready.algo) == ready.digest:
        start = ready.have
    if ready.free >= 0 and size - start > ready.free + (ready.have if start == 0 else 0):
        link.write(bytes([ABORT]))
        raise TransferError(
            f"not enough space on the board: {size - start} bytes to write, {ready.free} free"
        )
    full_digest = digest(view, ready.algo)
    filler = bytes(ready.frame_max + HEADER.size)
    acked = sent = start
    wire = nacks = stalls = 0
    started = end_sent = False
    link.write(frame(T_START, start))
    while True:
        if started:
            while sent < size and sent - acked < window:
                n = min(frame_size, size - sent)
                link.write(frame(T_DATA, sent, view[sent : sent + n]))
                sent += n
                wire += n
            if acked == size and not end_sent:
                link.write(frame(T_END, size, full_digest.encode()))
                end_sent = True
        line = reader.line(done_timeout if end_sent else stall_timeout)
        if line is None:
            stalls += 1
            if stalls > max_stalls:
                raise LinkError(f"no answer from the board after {stalls} tries")
            link.write(filler)  # completes a frame the board is stuck in; it then NAKs
            continue
        kind, _, rest = line.partition(" ")
        if kind == "A":
            pos = int(rest)
            if not started:
                started, acked, sent = True, pos, pos
                if progress is not None:
                    progress(acked, size)
            elif pos > acked:
                stalls = 0
                acked = pos
                window = min(max_window, window + frame_size // 8)
                if progress is not None:
                    progress(acked, size)
        elif kind == "N":
            # A board without flow control drops bytes when its buffer overflows: send less
            # at a time after each loss, more again as acknowledgements come.
            nacks += 1
            window = max(frame_size, window // 2)
            acked = sent = int(rest)
            end_sent = False
            if not started:
                link.write(frame(T_START, start))
        elif kind == "D":
            verdict, dev_digest, dev_size = rest.split()
            if verdict != "ok" or dev_digest != full_digest or int(dev_size) != size:
                raise TransferError(
                    f"hash mismatch: board has {dev_digest} ({dev_size} bytes), host "
                    f"{full_digest} ({size} bytes); the partial file was removed"
                )
            return SendReport(size, start, wire, nacks, dev_digest, ready.algo)
        elif kind == "E":
            raise TransferError(f"receiver failed: {rest}")
        else:
            _check_ended(reader, line)  # else stray output: ignore it


def _check_ended(reader: LineReader, line: str) -> None:
    """Raise if `line` shows that the receiver script ended (the raw REPL's 0x04 marker)."""
    if "\x04" not in line and not line.startswith("Traceback"):
        return
    rest = reader.until(b"\x04>", 1.0) or bytes(reader.buffer)
    text = (line + "\n" + rest.decode("utf-8", "replace")).replace("\x04", "")
    text = text.strip().removesuffix(">").strip()
    raise TransferError(f"the transfer script stopped on the board:\n{text}")


def finish_exec(reader: LineReader, timeout: float = 10.0) -> str:
    """Wait for the raw REPL's end-of-output markers; the script's error output."""
    if reader.until(b"\x04", timeout) is None:
        raise LinkError("the receiver script did not end")
    err = reader.until(b"\x04", timeout)
    if err is None:
        raise LinkError("the receiver script did not end")
    return err[:-1].decode("utf-8", "replace")


def receiver_source() -> str:
    """The board-side receiver, as sent (comment lines dropped: they only cost paste time)."""
    text = (Path(__file__).with_name("transfer_device.py")).read_text()
    return "\n".join(ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))


def receiver_script(
    dest: str, size: int, frame_max: int = DEFAULT_FRAME, quiet_ms: int = 100
) -> str:
    return f"{receiver_source()}\nmain({dest!r}, {size}, {frame_max}, {quiet_ms})\n"


def break_in(link: Link, patience: float = 10.0) -> None:
    """Get a board back to a REPL, even from a receiver left waiting mid-frame by a dropped
    link (Ctrl-C is off there, since the data may contain 0x03). Tries for `patience`
    seconds, waiting longer for quiet each round: an emulator's pty drops the board's output
    until QEMU notices the port was opened again (it polls once a second, later on a loaded
    machine), and a slow board may still be reading the zeros when a short wait ends, so one
    probe can miss; enter_raw_repl then reports a board that never answered."""
    reader = LineReader(link)
    deadline = time.monotonic() + patience
    quiet = 0.3
    while True:
        link.write(b"\r\x03\r\x01")
        if reader.until(b"raw REPL; CTRL-B to exit\r\n", 0.5) is not None or time.monotonic() > deadline:
            return
        # Zeros complete any half-read frame (the receiver NAKs and waits for quiet), then
        # Ctrl-C where a frame should start ends the receiver.
        link.write(bytes(MAX_FRAME + HEADER.size))
        _drain(link, quiet)
        link.write(b"\x03")
        _drain(link, quiet)
        quiet = min(2 * quiet, 2.0)


def _drain(link: Link, quiet: float) -> None:
    while link.read(quiet):
        pass


@dataclass
class TransferResult:
    dest: str
    bytes: int
    seconds: float  # the whole push: connecting, starting the receiver, data, hashing
    resumed_from: int
    retries: int
    wire_bytes: int  # payload bytes sent by the last attempt, repeats included
    nacks: int
    algo: str
    digest: str

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


LinkWrapper = Callable[[Link], Link]


def push_bytes(
    port: str,
    data: bytes,
    dest: str,
    *,
    frame_size: int = DEFAULT_FRAME,
    window: int = DEFAULT_WINDOW,
    retries: int = 3,
    progress: ProgressFn | None = None,
    wrap_link: LinkWrapper | None = None,
) -> TransferResult:
    """Write `data` to `dest` on the board at serial `port`, resuming after dropped links.

    `wrap_link` lets tests put a faulty link between the host and the board.
    """
    t0 = time.monotonic()
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(0.2 * attempt)
        try:
            transport = SerialTransport(port, baudrate=115200)
        except TransportError as e:
            last = e
            continue
        try:
            raw = SerialLink(transport.serial)
            link: Link = wrap_link(raw) if wrap_link is not None else raw
            break_in(raw)
            transport.enter_raw_repl(soft_reset=True)
            transport.exec_raw_no_follow(receiver_script(dest, len(data), frame_size))
            reader = LineReader(link)
            report = send_data(
                link, data, frame_size=frame_size, window=window, progress=progress, reader=reader
            )
            err = finish_exec(reader)
            if err:
                raise DeviceError(f"the receiver on {port} failed", err)
            transport.exit_raw_repl()
        except (LinkError, OSError, serial.SerialException, TransportError) as e:
            last = e
            continue
        finally:
            try:
                transport.close()
            except (OSError, serial.SerialException):
                pass
        return TransferResult(
            dest=dest,
            bytes=len(data),
            seconds=time.monotonic() - t0,
            resumed_from=report.resumed_from,
            retries=attempt,
            wire_bytes=report.wire_bytes,
            nacks=report.nacks,
            algo=report.algo,
            digest=report.digest,
        )
    raise TransferError(f"pushing to {port} failed after {retries + 1} attempts: {last}")


_SENDER = """
import sys, os, struct, binascii
def _send(path, chunk):
    try:
        import hashlib
        h = hashlib.sha256()
    except (ImportError, AttributeError):
        h = None
    out = sys.stdout.buffer
    try:
        size = os.stat(path)[6]
    except OSError:
        out.write(("E no such file on the board: %s\\n" % path).encode())
        return
    out.write(("P %d %d\\n" % (size, chunk)).encode())
    buf = bytearray(chunk)
    crc = 0
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            data = buf if n == chunk else memoryview(buf)[:n]
            out.write(struct.pack("<II", n, binascii.crc32(data)))
            out.write(data)
            if h is None:
                crc = binascii.crc32(data, crc)
            else:
                h.update(data)
    if h is None:
        out.write(("H crc32 %08x\\n" % (crc & 0xFFFFFFFF)).encode())
    else:
        out.write(("H sha256 %s\\n" % binascii.hexlify(h.digest()).decode()).encode())
"""


def receive_data(reader: LineReader, timeout: float = 30.0) -> bytes:
    """Read what the _SENDER script writes: size, CRC-checked chunks, then the whole hash."""
    line = reader.line(timeout)
    while line is not None and not line.startswith("P "):
        if line.startswith("E "):
            raise TransferError(line[2:])
        _check_ended(reader, line)
        line = reader.line(timeout)
    if line is None:
        raise LinkError("the board did not start sending")
    size = int(line.split()[1])
    data = bytearray()
    while len(data) < size:
        head = _read_exact(reader, 8, timeout)
        n, crc = struct.unpack("<II", head)
        chunk = _read_exact(reader, n, timeout)
        if zlib.crc32(chunk) != crc:
            raise LinkError(f"CRC error in the chunk at offset {len(data)}")
        data += chunk
    line = reader.line(timeout)
    if line is None or not line.startswith("H "):
        raise LinkError(f"expected the file's hash, got {line!r}")
    _, algo, dev_digest = line.split()
    if digest(bytes(data), algo) != dev_digest:
        raise LinkError("the file's hash does not match what arrived")
    return bytes(data)


def _read_exact(reader: LineReader, n: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while len(reader.buffer) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LinkError("the board stopped sending")
        reader.buffer += reader.link.read(left)
    data = bytes(reader.buffer[:n])
    del reader.buffer[:n]
    return data


def pull_bytes(port: str, path: str, *, chunk: int = 1024, retries: int = 2) -> bytes:
    """The contents of `path` on the board, CRC-checked per chunk and hashed whole (for
    models and results: small files, so a failed pull simply starts again)."""
    last: Exception | None = None
    for _ in range(retries + 1):
        try:
            transport = SerialTransport(port, baudrate=115200)
        except TransportError as e:
            last = e
            continue
        try:
            link = SerialLink(transport.serial)
            break_in(link)
            transport.enter_raw_repl(soft_reset=True)
            transport.exec_raw_no_follow(f"{_SENDER}\n_send({path!r}, {chunk})\n")
            reader = LineReader(link)
            data = receive_data(reader)
            err = finish_exec(reader)
            if err:
                raise DeviceError(f"reading {path} on {port} failed", err)
            transport.exit_raw_repl()
            return data
        except (LinkError, OSError, serial.SerialException, TransportError) as e:
            last = e
        finally:
            try:
                transport.close()
            except (OSError, serial.SerialException):
                pass
    raise TransferError(f"pulling {path} from {port} failed: {last}")


def push_file(port: str, src: Path | str, dest: str, **kwargs: object) -> TransferResult:
    """push_bytes() of a host file."""
    return push_bytes(port, Path(src).read_bytes(), dest, **kwargs)  # type: ignore[arg-type]
