"""The emulated boards' flash: littlefs on a host file, mounted at /flash, kept across restarts."""

from __future__ import annotations

from mcutrain.emulator import FLASH_SIZE, Emulator
from mcutrain.runner import run_on


def test_file_written_to_flash_survives_emulator_restart(emulated_board, tmp_path):
    flash = tmp_path / "flash.img"
    with Emulator(emulated_board, flash=flash) as emu:
        assert flash.stat().st_size == FLASH_SIZE
        out = emu.exec(
            "import os\n"
            "print(os.getcwd())\n"
            "with open('/flash/persist.txt', 'w') as f: f.write('written before restart')"
        )
        assert out.strip() == "/flash"  # boot.py/main.py and scripts run from /flash
        first_qemu = emu.command()

        emu.restart()
        assert emu.command() == first_qemu
        assert emu.exec("print(open('/flash/persist.txt').read())") == "written before restart\n"


def test_boot_py_and_main_py_run_from_flash_at_every_boot(emulated_board, tmp_path):
    with Emulator(emulated_board, flash=tmp_path / "flash.img") as emu:
        emu.exec(
            "for name in ('boot', 'main'):\n"
            "    with open(name + '.py', 'w') as f:\n"
            "        f.write('open(%r, \"a\").write(\"x\")\\n' % ('ran_' + name + '.txt'))"
        )
        emu.restart()
        out = emu.exec(
            "import os\n"
            "print(sorted(n for n in os.listdir() if n.startswith('ran_')),"
            " open('ran_boot.txt').read().count('x') >= 1,"
            " open('ran_main.txt').read().count('x') >= 1)"
        )
        assert out.strip() == "['ran_boot.txt', 'ran_main.txt'] True True"


def test_flash_block_device_rejects_out_of_range_access(emulated):
    code = """
import qemu
flash = qemu.Flash()
blocks = flash.ioctl(4, 0)
buf = bytearray(16)
for args in ((-1, buf), (0, buf, -4), (blocks, buf), (blocks - 1, buf, 4090), (0, None)):
    try:
        flash.readblocks(*args)
    except (ValueError, TypeError) as e:
        print(type(e).__name__, end=' ')
flash.readblocks(blocks - 1, buf, 4080)  # the last 16 bytes are fine
print(blocks)
"""
    out = run_on(emulated, code).split()
    assert out[:5] == ["ValueError", "ValueError", "ValueError", "ValueError", "TypeError"]
    assert int(out[5]) == 512  # the launcher's 2 MiB image in 4 KiB blocks
