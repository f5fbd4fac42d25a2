"""The framed, resumable transfer: the protocol in-process (the real receiver code under
CPython, over pipes), the receiver on the unix port, and pushes to the emulated boards."""

from __future__ import annotations

import hashlib
import os
import random
import select
import subprocess
import threading
import zlib
from pathlib import Path

import pytest
from conftest import require_firmware
from mcutrain import transfer, transfer_device
from mcutrain.transfer import (
    HEADER,
    Link,
    LinkError,
    SerialLink,
    TransferError,
    frame,
    push_bytes,
    send_data,
)


def payload(n: int, seed: int = 1) -> bytes:
    data = bytearray(random.Random(seed).randbytes(n))
    data[100:108] = b"\x03\x04\r\n\x01\x02\x00\xa5"  # REPL control bytes and the frame magic
    return bytes(data)


# -- an in-process board: the receiver in a thread, joined to the host by two pipes --------


class MpStream:
    """A pipe end with MicroPython's stream methods (readinto(buf, n), short reads)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def readinto(self, buf: bytearray | memoryview, n: int | None = None) -> int:
        n = len(buf) if n is None else n
        data = os.read(self.fd, min(n, 700))  # short reads, as from a pipe on the unix port
        memoryview(buf)[: len(data)] = data
        return len(data)

    def write(self, data: bytes) -> int:
        return os.write(self.fd, data)


class PipeLink:
    def __init__(self, wfd: int, rfd: int) -> None:
        self.wfd, self.rfd = wfd, rfd
        self.written = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.wfd, view)
            view = view[n:]
        self.written += len(data)

    def read(self, timeout: float) -> bytes:
        if not select.select([self.rfd], [], [], timeout)[0]:
            return b""
        data = os.read(self.rfd, 4096)
        if not data:
            raise LinkError("closed")
        return data


class FakeBoard:
    """One receiver session on the host filesystem (a fresh one after each dropped link)."""

    def __init__(self, dest: Path, size: int, frame_max: int = 512) -> None:
        to_board_r, self._to_board_w = os.pipe()
        self._from_board_r, from_board_w = os.pipe()
        self.link = PipeLink(self._to_board_w, self._from_board_r)
        poll = select.poll()
        poll.register(to_board_r, select.POLLIN)
        self.receiver = transfer_device.Receiver(
            MpStream(to_board_r), MpStream(from_board_w), poll, frame_max,
            quiet_ms=30, idle_ms=5000,
        )  # fmt: skip
        self.outcome: str | BaseException | None = None
        self._fds = [to_board_r, from_board_w]

        def serve() -> None:
            try:
                self.outcome = self.receiver.run(str(dest), size)
            except BaseException as e:
                self.outcome = e
            finally:
                for fd in self._fds:
                    os.close(fd)

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def drop(self) -> None:
        """Unplug the cable: the host's ends close, the receiver sees end of input."""
        os.close(self._to_board_w)
        self.thread.join(timeout=10)
        os.close(self._from_board_r)

    def close(self) -> None:
        self.thread.join(timeout=10)
        for fd in (self._to_board_w, self._from_board_r):
            try:
                os.close(fd)
            except OSError:
                pass


class FaultyLink:
    """Passes writes through, but lets a test corrupt, lose, or cut the bytes of one frame."""

    def __init__(self, inner: Link, *, flip_frame: int = -1, lose_frame: int = -1,
                 cut_after: int = -1, on_cut=None) -> None:  # fmt: skip
        self.inner = inner
        self.frames = 0
        self.flip_frame, self.lose_frame = flip_frame, lose_frame
        self.cut_after = cut_after
        self.on_cut = on_cut
        self.written = 0

    def write(self, data: bytes) -> None:
        if data[:1] == bytes([transfer.MAGIC]) and data[1] == transfer.T_DATA:
            self.frames += 1
            if self.frames == self.flip_frame:
                data = data[:40] + bytes([data[40] ^ 0x10]) + data[41:]
            if self.frames == self.lose_frame:
                data = data[:30] + data[31:]  # one byte lost on the wire
        if 0 <= self.cut_after < self.written + len(data):
            # The link dies mid-frame: half of this frame is all the board gets.
            self.inner.write(data[: len(data) // 2])
            self.cut_after = -1
            if self.on_cut:
                self.on_cut()
            raise LinkError("link dropped")
        self.inner.write(data)
        self.written += len(data)

    def read(self, timeout: float) -> bytes:
        return self.inner.read(timeout)


def test_frame_header_carries_type_length_offset_and_crc_over_header_and_payload():
    f = frame(transfer.T_DATA, 0x01020304, b"abc")
    magic, kind, length, offset, crc = HEADER.unpack(f[: HEADER.size])
    assert (magic, kind, length, offset) == (0xA5, transfer.T_DATA, 3, 0x01020304)
    assert crc == zlib.crc32(b"abc", zlib.crc32(f[1:8]))
    assert f[HEADER.size :] == b"abc"


def test_push_in_process_writes_exact_bytes_and_removes_partial(tmp_path):
    data = payload(50_000)
    board = FakeBoard(tmp_path / "d.bin", len(data))
    seen: list[int] = []
    report = send_data(board.link, data, frame_size=512, window=2048,
                       progress=lambda done, total: seen.append(done))  # fmt: skip
    board.close()
    assert board.outcome == "done"
    assert (tmp_path / "d.bin").read_bytes() == data
    assert not (tmp_path / "d.bin.part").exists()
    assert report.digest == hashlib.sha256(data).hexdigest()
    assert (report.nacks, report.resumed_from, report.wire_bytes) == (0, 0, len(data))
    assert seen[-1] == len(data) and seen == sorted(seen)


@pytest.mark.parametrize("fault", ["flip_frame", "lose_frame"])
def test_corrupted_or_short_frame_is_resent_without_duplication(tmp_path, fault):
    data = payload(20_000)
    board = FakeBoard(tmp_path / "d.bin", len(data))
    link = FaultyLink(board.link, **{fault: 5})
    report = send_data(link, data, frame_size=512, window=2048, stall_timeout=0.3)
    board.close()
    assert report.nacks >= 1
    assert (tmp_path / "d.bin").read_bytes() == data


def test_link_dropped_mid_frame_resumes_from_what_the_board_verified(tmp_path):
    data = payload(40_000)
    dest = tmp_path / "d.bin"
    board = FakeBoard(dest, len(data))
    link = FaultyLink(board.link, cut_after=15_000)
    with pytest.raises(LinkError):
        send_data(link, data, frame_size=512, window=2048)
    board.drop()
    have = (tmp_path / "d.bin.part").stat().st_size
    assert 0 < have <= 15_000 and have % 512 == 0  # only whole, checked frames were kept
    assert (tmp_path / "d.bin.part").read_bytes() == data[:have]

    board = FakeBoard(dest, len(data))
    report = send_data(board.link, data, frame_size=512, window=2048)
    board.close()
    assert report.resumed_from == have
    assert report.wire_bytes == len(data) - have  # nothing sent twice
    assert dest.read_bytes() == data


def test_partial_file_of_other_data_is_restarted_from_zero(tmp_path):
    data = payload(10_000)
    (tmp_path / "d.bin.part").write_bytes(payload(3000, seed=2))
    board = FakeBoard(tmp_path / "d.bin", len(data))
    report = send_data(board.link, data, frame_size=512, window=2048)
    board.close()
    assert report.resumed_from == 0
    assert (tmp_path / "d.bin").read_bytes() == data


def test_board_hash_mismatch_keeps_old_file_and_removes_partial(tmp_path):
    data = payload(30_000)
    dest = tmp_path / "d.bin"
    dest.write_bytes(b"old")
    board = FakeBoard(dest, len(data))
    tampered = False

    def tamper(done: int, total: int) -> None:
        # Flash corrupts what the board already wrote: only the final hash can tell.
        nonlocal tampered
        if done > 20_000 and not tampered:
            with open(tmp_path / "d.bin.part", "r+b") as f:
                f.write(b"X")
            tampered = True

    with pytest.raises(TransferError, match="hash mismatch"):
        send_data(board.link, data, frame_size=512, window=1024, progress=tamper)
    board.close()
    assert tampered
    assert dest.read_bytes() == b"old"
    assert not (tmp_path / "d.bin.part").exists()


def test_receiver_refuses_file_larger_than_free_space(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer_device.os, "statvfs", lambda p: (512, 512, 100, 10, 10))
    board = FakeBoard(tmp_path / "d.bin", 10_000)
    with pytest.raises(TransferError, match="not enough space"):
        send_data(board.link, payload(10_000), frame_size=512)
    board.close()
    assert board.outcome == "aborted"


# -- the receiver on MicroPython itself: the unix port over pipes ------------------------


class ProcessLink(PipeLink):
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        super().__init__(proc.stdin.fileno(), proc.stdout.fileno())


def test_receiver_runs_on_micropython_unix_port(tmp_path):
    micropython = require_firmware("unix")
    data = payload(30_000)
    script = transfer.receiver_script("sub/d.bin", len(data), 1024)
    proc = subprocess.Popen([str(micropython), "-c", script], cwd=tmp_path,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        report = send_data(ProcessLink(proc), data, frame_size=1024, window=4096)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert report.algo == "sha256"
    assert (tmp_path / "sub" / "d.bin").read_bytes() == data


# -- the emulated boards, through their UART ----------------------------------------------


def board_sha256(emulated, path: str) -> str:
    return emulated.exec(
        "import hashlib, binascii\n"
        f"h = hashlib.sha256()\nf = open({path!r}, 'rb')\n"
        "while True:\n b = f.read(1024)\n if not b: break\n h.update(b)\n"
        "print(binascii.hexlify(h.digest()).decode())"
    ).strip()


def board_remove(emulated, *paths: str) -> None:
    emulated.exec(
        "import os\nfor p in %r:\n try: os.remove(p)\n except OSError: pass" % (paths,)
    )


def test_push_to_emulated_board_lands_file_with_matching_hash(emulated):
    data = payload(24_000, seed=3)
    emulated.emulator.drain_uart()
    try:
        result = push_bytes(emulated.emulator.device, data, "t/push.bin")
        assert result.digest == hashlib.sha256(data).hexdigest()
        assert board_sha256(emulated, "/flash/t/push.bin") == result.digest
        assert result.bytes_per_s > 0 and result.retries == 0
    finally:
        board_remove(emulated, "/flash/t/push.bin")


def test_push_to_emulated_board_survives_crc_error(emulated):
    data = payload(12_000, seed=4)
    emulated.emulator.drain_uart()
    try:
        result = push_bytes(emulated.emulator.device, data, "crc.bin",
                            wrap_link=lambda link: FaultyLink(link, flip_frame=3))  # fmt: skip
        assert result.nacks >= 1 and result.retries == 0
        assert board_sha256(emulated, "crc.bin") == hashlib.sha256(data).hexdigest()
    finally:
        board_remove(emulated, "crc.bin")


def test_push_to_emulated_board_resumes_after_link_dropped_mid_frame(emulated):
    data = payload(40_000, seed=5)
    links: list[FaultyLink] = []

    def drop_once(link: Link) -> Link:
        if links:  # the second connection works
            return link
        assert isinstance(link, SerialLink)
        faulty = FaultyLink(link, cut_after=20_000, on_cut=link.port.close)
        links.append(faulty)
        return faulty

    emulated.emulator.drain_uart()
    try:
        result = push_bytes(emulated.emulator.device, data, "drop.bin", wrap_link=drop_once)
        # One retry for the cut; on a loaded machine the first reconnect can itself time out
        # (seen once in a clean-clone CI run: retries == 2, the file still whole and resumed).
        assert 1 <= result.retries <= 2
        # The receiver was left waiting mid-frame, with Ctrl-C off; the retry got it back
        # and resumed after the last whole frame the board had checked and written.
        assert 0 < result.resumed_from <= 20_000
        assert result.wire_bytes == len(data) - result.resumed_from
        assert board_sha256(emulated, "drop.bin") == hashlib.sha256(data).hexdigest()
        assert emulated.exec("import os; print(os.stat('drop.bin')[6])").strip() == str(len(data))
    finally:
        board_remove(emulated, "drop.bin", "drop.bin.part")
