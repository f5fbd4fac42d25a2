# The receiving end of mcutrain's framed transfer (see transfer.py for the protocol).
# MicroPython code: the host sends this file to the board as a raw-REPL script, followed by
# one call to main(). It also runs under CPython in the tests, given a stdin that has
# MicroPython's readinto(buf, n).
import binascii
import os
import struct
import sys

MAGIC = 0xA5
ABORT = 0x03  # Ctrl-C where a frame should start: the host wants the REPL back
T_START = 0x53
T_DATA = 0x44
T_END = 0x45
SYNC_EVERY = 16384  # commit to flash this often, so a reset loses little


def _hasher():
    try:
        import hashlib

        return "sha256", hashlib.sha256()
    except (ImportError, AttributeError):
        return "crc32", None


def file_digest(path, size, buf):
    """(algorithm, hex digest) of the first `size` bytes of `path`."""
    algo, h = _hasher()
    crc = 0
    if size:
        with open(path, "rb") as f:
            left = size
            while left:
                n = f.readinto(buf)
                if not n:
                    break
                n = min(n, left)
                data = buf if n == len(buf) else memoryview(buf)[:n]
                if h is None:
                    crc = binascii.crc32(data, crc)
                else:
                    h.update(data)
                left -= n
    if h is None:
        return algo, "%08x" % (crc & 0xFFFFFFFF)
    return algo, binascii.hexlify(h.digest()).decode()


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def _makedirs(path):
    parts = path.split("/")[:-1]
    at = ""
    for i, part in enumerate(parts):
        at = at + "/" + part if i else part
        if at:
            try:
                os.mkdir(at)
            except OSError:
                pass  # exists


class Receiver:
    def __init__(self, fin, fout, poll, frame_max, quiet_ms, idle_ms):
        self.fin = fin
        self.fout = fout
        self.poll = poll
        self.quiet_ms = quiet_ms
        self.idle_ms = idle_ms
        self.one = bytearray(1)
        self.head = bytearray(7)  # type, length, offset; the CRC covers these and the payload
        self.crc4 = bytearray(4)
        self.buf = bytearray(frame_max)
        self.mv = memoryview(self.buf)

    def send(self, line):
        self.fout.write(line.encode())
        if hasattr(self.fout, "flush"):
            self.fout.flush()

    def read(self, buf, n):
        got = self.fin.readinto(buf, n)
        while got is not None and 0 < got < n:  # short reads happen on pipes (unix port)
            more = self.fin.readinto(memoryview(buf)[got:], n - got)
            got = got + more if more else None
        if got != n:
            raise OSError("link closed")

    def resync(self, pos):
        # After a bad frame the rest of the host's window is stale: swallow input until the
        # host falls quiet, then say where to go on from.
        while self.poll.poll(self.quiet_ms):
            self.read(self.one, 1)
        self.send("N %d\n" % pos)

    def frame(self):
        """The next frame as (type, offset, payload), None on a bad frame, ABORT, or
        raises OSError on a silent host."""
        if not self.poll.poll(self.idle_ms):
            raise OSError("host silent")
        self.read(self.one, 1)
        if self.one[0] == ABORT:
            return ABORT
        if self.one[0] != MAGIC:
            return None
        self.read(self.head, 7)
        self.read(self.crc4, 4)
        kind, n, offset = struct.unpack("<BHI", self.head)
        if n > len(self.buf):
            return None
        if n:
            self.read(self.buf, n)
        data = self.buf if n == len(self.buf) else self.mv[:n]
        crc = binascii.crc32(data, binascii.crc32(self.head)) & 0xFFFFFFFF
        if crc != struct.unpack("<I", self.crc4)[0]:
            return None
        return kind, offset, data

    def run(self, dest, size):
        part = dest + ".part"
        have = _size(part)
        algo, digest = file_digest(part, have, self.buf)
        try:
            free = os.statvfs(part.rpartition("/")[0] or ".")
            free = free[0] * free[4]
        except (OSError, AttributeError):
            free = -1
        self.send("R %s %d %s %d %d\n" % (algo, have, digest, len(self.buf), free))
        f = None
        pos = 0
        synced = 0
        try:
            while True:
                fr = self.frame()
                if fr == ABORT:
                    return "aborted"
                if fr is None:
                    self.resync(pos)
                    continue
                kind, offset, data = fr
                if kind == T_START:
                    if f is not None:
                        f.close()
                    _makedirs(part)
                    if offset and offset == have:
                        f = open(part, "ab")
                        pos = offset
                    else:
                        f = open(part, "wb")
                        pos = 0
                    synced = pos
                    self.send("A %d\n" % pos)
                elif f is None:
                    self.resync(pos)
                elif kind == T_DATA:
                    end = offset + len(data)
                    if offset > pos:  # a frame went missing: go back for it
                        self.resync(pos)
                        continue
                    if end > pos:  # else a repeat of what we have: acknowledge, skip
                        f.write(data if offset == pos else memoryview(data)[pos - offset :])
                        pos = end
                        if pos - synced >= SYNC_EVERY:
                            f.flush()
                            synced = pos
                    self.send("A %d\n" % pos)
                elif kind == T_END:
                    if offset != pos or pos != size:
                        self.resync(pos)
                        continue
                    f.close()
                    f = None
                    want = bytes(data)  # before hashing reuses the buffer
                    algo, digest = file_digest(part, pos, self.buf)
                    ok = digest == want.decode()
                    if ok:
                        try:
                            os.remove(dest)
                        except OSError:
                            pass
                        os.rename(part, dest)
                    else:
                        os.remove(part)
                    self.send("D %s %s %d\n" % ("ok" if ok else "bad", digest, pos))
                    return "done"
                else:
                    self.resync(pos)
        finally:
            if f is not None:
                f.close()


def main(dest, size, frame_max=1024, quiet_ms=100, idle_ms=30000):
    import select

    try:
        import micropython

        micropython.kbd_intr(-1)  # the data may hold 0x03 bytes
    except (ImportError, AttributeError):
        micropython = None
    fin = sys.stdin.buffer
    poll = select.poll()
    poll.register(sys.stdin, select.POLLIN)
    r = Receiver(fin, sys.stdout.buffer, poll, frame_max, quiet_ms, idle_ms)
    try:
        r.run(dest, size)
    except OSError as e:
        r.send("E %s\n" % (e,))
    finally:
        if micropython is not None:
            micropython.kbd_intr(3)
