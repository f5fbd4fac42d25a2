"""The Emulator never leaves QEMU behind and explains failures with QEMU's own words."""

from __future__ import annotations

import pytest
from conftest import is_running, require_firmware
from mcutrain.emulator import Emulator
from mcutrain.errors import DeviceTimeout, EmulatorError, device_exception_name


def test_keyboard_interrupt_in_with_block_stops_qemu(emulated_board):
    with pytest.raises(KeyboardInterrupt):
        with Emulator(emulated_board) as emu:
            pid = emu.pid
            assert pid is not None and is_running(pid)
            raise KeyboardInterrupt
    assert not is_running(pid)


@pytest.mark.parametrize(
    "board, failure",
    [
        # All-zero vectors: the M4F locks up at reset and QEMU aborts, saying so.
        ("qemu-m4f", "Lockup"),
        # rv32 executes the zeros as illegal instructions forever: no REPL ever.
        ("qemu-rv32", "no REPL prompt within 2 s"),
    ],
)
def test_boot_failure_raises_with_qemu_output_and_leaves_no_qemu(board, failure, tmp_path):
    junk = tmp_path / "zeros.elf"
    junk.write_bytes(bytes(64 * 1024))
    emu = Emulator(board, firmware=junk, flash=tmp_path / "flash.img", timeout=2)
    with pytest.raises(EmulatorError, match=failure) as raised:
        with emu:
            pass
    assert "char device redirected to /dev/pts/" in str(raised.value)  # QEMU's own output
    assert not emu.running


def test_second_emulator_on_same_flash_image_is_refused(tmp_path):
    require_firmware("qemu-m4f")
    flash = tmp_path / "flash.img"
    with Emulator("qemu-m4f", flash=flash):  # any board: the lock is the launcher's
        with pytest.raises(EmulatorError, match="in use by another emulator"):
            with Emulator("qemu-m4f", flash=flash):
                pass


def test_script_stuck_on_board_times_out_and_board_recovers(emulated):
    with pytest.raises(DeviceTimeout):
        emulated.exec("while True:\n    pass", timeout=3)
    assert emulated.exec("print('alive')") == "alive\n"


def test_device_exception_name_is_the_last_traceback_line():
    output = (
        "partial output\n"
        "Traceback (most recent call last):\n"
        '  File "<stdin>", line 3, in <module>\n'
        "ValueError: dot: lengths differ (3 and 2)\n"
    )
    assert device_exception_name(output) == "ValueError"
    assert device_exception_name("Traceback (most recent call last):\nKeyboardInterrupt\n") == (
        "KeyboardInterrupt"
    )
    assert device_exception_name("no traceback here\n") is None


def test_heap_option_sets_the_boards_micropython_heap(emulated_board):
    heap = 100_000
    with Emulator(emulated_board, heap=heap) as emu:
        usable = int(emu.exec("import gc; print(gc.mem_free() + gc.mem_alloc())"))
    # The GC keeps its allocation tables inside the heap: about 1/40 of it (2 bits per
    # 16-byte block, plus the finaliser bits), so 95 % is a generous floor.
    assert 0.95 * heap <= usable <= heap
