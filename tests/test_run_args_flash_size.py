"""`mcutrain run SCRIPT -- ARGS` (the script's sys.argv) and `--flash-size` for emulated boards
(issue 20 item 8): through the CLI, on the unix port and a booted qemu-m4f."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, host_env, require_firmware

ARGV_SCRIPT = "import sys\nprint('@argv', sys.argv[1:])\n"
FLASH_SCRIPT = "import os\ns = os.statvfs('/flash')\nprint('@flash', s[0] * s[2])\n"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcutrain", *args], capture_output=True, text=True,
                          timeout=timeout, env=host_env(), cwd=ROOT)  # fmt: skip


@pytest.mark.parametrize("board", ["unix", "qemu-m4f"])
def test_arguments_after_double_dash_are_the_scripts_argv(tmp_path, board):
    require_firmware(board)
    script = tmp_path / "argv.py"
    script.write_text(ARGV_SCRIPT)
    flash = ["--flash", str(tmp_path / "f.img")] if board != "unix" else []
    done = cli("run", str(script), "--board", board, *flash, "--", "--epochs", "3", "a b", "--")
    assert done.returncode == 0, done.stderr
    assert "@argv ['--epochs', '3', 'a b', '--']" in done.stdout, done.stdout
    plain = cli("run", str(script), "--board", board, *flash)
    assert "@argv []" in plain.stdout, plain.stdout + plain.stderr


def test_double_dash_belongs_to_run_only():
    done = cli("boards", "--", "x")
    assert done.returncode == 2 and "arguments after -- are for `mcutrain run`" in done.stderr


def test_flash_size_makes_a_new_image_that_size_and_refuses_another_size(tmp_path):
    require_firmware("qemu-m4f")
    script = tmp_path / "flash.py"
    script.write_text(FLASH_SCRIPT)
    image = tmp_path / "big.img"
    done = cli("run", str(script), "--board", "qemu-m4f", "--flash", str(image), "--flash-size", "8M")
    assert done.returncode == 0, done.stderr
    assert image.stat().st_size == 8 * 1024 * 1024
    # littlefs's view: every block of the image (minus none: statvfs counts them all).
    size = int(next(line for line in done.stdout.splitlines() if line.startswith("@flash")).split()[1])
    assert size == 8 * 1024 * 1024, done.stdout
    again = cli("run", str(script), "--board", "qemu-m4f", "--flash", str(image), "--flash-size", "4M")
    assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr
    assert "is 8388608 bytes, not the 4194304 asked for" in again.stderr
    same = cli("run", str(script), "--board", "qemu-m4f", "--flash", str(image))  # keeps its size
    assert same.returncode == 0 and f"@flash {8 * 1024 * 1024}" in same.stdout, same.stderr


@pytest.mark.parametrize("size, words", [
    ("1000", "multiple of 4096"), ("4K", "from 65536"), ("3G", "under 2 GiB"), ("lots", "not a size"),
])
def test_flash_size_refuses_sizes_a_board_cannot_use(tmp_path, size, words):
    done = cli("run", str(tmp_path / "x.py"), "--board", "qemu-m4f", "--flash-size", size)
    assert done.returncode == 2 and words in done.stderr, done.stderr


def test_flash_size_is_for_emulated_boards(tmp_path):
    require_firmware("unix")
    script = tmp_path / "argv.py"
    script.write_text(ARGV_SCRIPT)
    done = cli("run", str(script), "--board", "unix", "--flash-size", "8M")
    assert done.returncode == 1 and "--flash-size is for emulated boards" in done.stderr, done.stderr
