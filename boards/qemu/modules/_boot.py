# Mount the board's flash (a host file, through semihosting) at /flash, formatting
# it with littlefs the first time, and make it the working directory.
import os
import sys
import vfs
import qemu

try:
    bdev = qemu.Flash()
except OSError as e:
    print("mcutrain: no flash image; running without a filesystem:", e)
else:
    try:
        fs = vfs.VfsLfs2(bdev)
    except OSError:
        vfs.VfsLfs2.mkfs(bdev)
        fs = vfs.VfsLfs2(bdev)
    vfs.mount(fs, "/flash")
    os.chdir("/flash")
    sys.path.append("/flash/lib")
    del fs
del os, sys, vfs, qemu
