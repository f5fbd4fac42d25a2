# Mount the board's flash (a host file, through semihosting) at /flash and make it the working
# directory. Only a blank image (every byte 0x00, as the launcher creates it, or 0xFF, erased
# flash) is formatted; an image that holds something littlefs cannot mount is reported and
# left untouched, and the board runs without /flash. To erase such an image on purpose:
#     import vfs, qemu; vfs.VfsLfs2.mkfs(qemu.Flash())     then reset the board
# (or `mcutrain emulate --format-flash`, see boards/README.md). Running this file again
# (`import _boot`) retries the mount and prints the same report.
import os
import sys
import vfs
import qemu


def _blank(bdev):
    # Whether every block reads as all 0x00 or all 0xFF (a new or erased image).
    size = bdev.ioctl(5, 0)
    buf = bytearray(size)
    zeros, ones = bytes(size), b"\xff" * size
    first = None
    for block in range(bdev.ioctl(4, 0)):
        bdev.readblocks(block, buf)
        if first is None:
            first = zeros if buf == zeros else ones if buf == ones else None
            if first is None:
                return False
        elif buf != first:
            return False
    return True


def _remove_stale_temporaries(path, depth=0):
    # mt.save writes PATH.tmp and renames it over PATH; a power cut in between leaves the tmp
    # (empty, or a whole .mtm/.mtd): PATH itself is still the old or the new file.
    for entry in os.ilistdir(path):
        name, kind = entry[0], entry[1]
        full = path + "/" + name
        if kind == 0x4000 and depth < 8:
            _remove_stale_temporaries(full, depth + 1)
        elif name.endswith(".tmp"):
            try:
                with open(full, "rb") as f:
                    head = f.read(4)
                if head in (b"", b"MTM\0", b"MTD\0"):
                    os.remove(full)
            except OSError:
                pass


def _mount():
    try:
        bdev = qemu.Flash()
    except OSError as e:
        print("mcutrain: no flash image; running without a filesystem:", e)
        return
    try:
        fs = vfs.VfsLfs2(bdev)
    except OSError as e:
        if not _blank(bdev):
            print("mcutrain: /flash NOT mounted: the flash image holds data that is not a "
                  "littlefs this firmware can mount (%r). It is kept untouched; running "
                  "without /flash. To erase it: import vfs, qemu; "
                  "vfs.VfsLfs2.mkfs(qemu.Flash()), then reset." % (e,))
            return
        vfs.VfsLfs2.mkfs(bdev)
        fs = vfs.VfsLfs2(bdev)
        print("mcutrain: formatted the blank flash image as littlefs")
    vfs.mount(fs, "/flash")
    os.chdir("/flash")
    if "/flash/lib" not in sys.path:
        sys.path.append("/flash/lib")
    try:
        _remove_stale_temporaries("/flash")
    except OSError as e:
        print("mcutrain: could not clear stale *.tmp files:", e)


try:
    mounted = "flash" in os.listdir("/")
except OSError:  # nothing mounted at all
    mounted = False
if not mounted:
    _mount()
del mounted
del _mount, _blank, _remove_stale_temporaries, os, sys, vfs, qemu
