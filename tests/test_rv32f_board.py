"""qemu-rv32f: rv32imafc + Zfh with the hard-float ABI, the FPU on from reset.

The board runs qemu-rv32's code built for ilp32f, so what it must show beyond the shared board
tests (conftest's `emulated` fixtures) is that floats really run on the FPU: the ELF says
single-float ABI and calls no soft-float routine, and the same float32 work that costs
qemu-rv32 hundreds of instructions per multiply-add costs a few here.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import require_firmware
from mcutrain.runner import open_target, run_on

EF_RISCV_FLOAT_ABI = 0x6
EF_RISCV_FLOAT_ABI_SINGLE = 0x2
SOFT_FLOAT_ROUTINES = ("__addsf3", "__mulsf3", "__divsf3", "__subsf3")


def elf_flags(path) -> int:
    header = path.read_bytes()[:52]
    assert header[:4] == b"\x7fELF" and header[4] == 1, "not a 32-bit ELF"
    return int.from_bytes(header[36:40], "little")


def test_firmware_is_hard_float_ilp32f_without_soft_float_calls():
    firmware = require_firmware("qemu-rv32f")
    assert elf_flags(firmware) & EF_RISCV_FLOAT_ABI == EF_RISCV_FLOAT_ABI_SINGLE
    nm = shutil.which("riscv64-unknown-elf-nm")
    if nm is None:
        pytest.skip("riscv64-unknown-elf-nm not installed")
    symbols = set(subprocess.run([nm, str(firmware)], capture_output=True, text=True, check=True)
                  .stdout.split())
    assert not symbols & set(SOFT_FLOAT_ROUTINES)


LINEAR_FORWARD = """
import mcutrain as mt
layer = mt.Linear(64, 64)
x = mt.zeros((4, 64))
x.fill(0.5)
layer.forward(x)
t0 = mt.perf_counter()
y = layer.forward(x)
t1 = mt.perf_counter()
print(t1 - t0, sum(y.reshape((256,)).tolist()))
"""


def test_float32_work_runs_on_the_fpu_not_in_soft_float():
    counts = {}
    for board in ("qemu-rv32", "qemu-rv32f"):
        require_firmware(board)
        with open_target(board) as target:
            instructions, total = run_on(target, LINEAR_FORWARD).split()
        counts[board] = (int(instructions), float(total))
    # Same weights (same default init stream) and input: the same result on both boards.
    assert counts["qemu-rv32"][1] == pytest.approx(counts["qemu-rv32f"][1], rel=1e-5)
    # 16,384 multiply-adds: soft float spends ~100 instructions on each, the FPU ~2.
    assert counts["qemu-rv32f"][0] * 20 < counts["qemu-rv32"][0], counts
