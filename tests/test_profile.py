"""Profile mode of the cycle-model plugin (bench/profile_step.py): per-function instructions of one
perf_counter() region on qemu-m4f sum to that region's perf_counter() count exactly (on the
RISC-V boards, to within a few instructions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_firmware

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from mcutrain.cycle_model import CycleModel, by_function  # noqa: E402
from mcutrain.runner import open_target, run_on  # noqa: E402

# Two regions: a Linear forward (t1 - t0), then a ReLU forward (t2 - t1).
SCRIPT = """
import mcutrain as mt
lin, relu = mt.Linear(64, 32), mt.ReLU()
x = mt.zeros((4, 64))
y = lin.forward(x)
relu.forward(y)
t0 = mt.perf_counter()
y = lin.forward(x)
t1 = mt.perf_counter()
relu.forward(y)
t2 = mt.perf_counter()
print(t1 - t0, t2 - t1)
"""


def firmware_and_plugin(board: str) -> Path:
    """The board's firmware (or skip), with the cycle-model plugin built."""
    path = require_firmware(board)
    subprocess.run(["make", "-s", "-C", str(ROOT), "cycle-model"], check=True)
    return path


@pytest.fixture(scope="module")
def firmware() -> Path:
    return firmware_and_plugin("qemu-m4f")


def profiled(firmware: Path, region: int):
    model = CycleModel(firmware, profile=region)
    try:
        with open_target("qemu-m4f", qemu_args=model.qemu_args()) as target:
            printed = [int(n) for n in run_on(target, SCRIPT).split()]
        return model.profile(), model.regions(), printed
    finally:
        model.close()


@pytest.mark.parametrize("region", [1, 0])
def test_a_profiled_region_sums_to_its_perf_counter_count(firmware, region):
    profile, regions, (linear, relu) = profiled(firmware, region)
    want = linear if region == 1 else relu  # 0: the last region
    functions = by_function(profile, firmware)
    assert sum(insns for _, insns, _ in functions) == profile.instructions == want
    assert sum(cycles for _, _, cycles in functions) == profile.cycles
    assert regions[profile.region - 1] == (profile.instructions, profile.cycles)
    names = [name for name, _, _ in functions]
    if region == 1:
        assert "mt_linear_f32_forward" in names
        assert any("gemm" in n or "panel" in n for n in names[:3]), names[:3]  # the GEMM leads
    else:
        assert "mt_relu_f32_forward" in names
        assert "mt_linear_f32_forward" not in names


@pytest.mark.parametrize("board", ["qemu-rv32", "qemu-rv32f"])
def test_a_risc_v_profile_counts_the_region_within_a_few_instructions(board):
    """On the RISC-V boards the plugin marks the instret read (cycles there are meaningless):
    the blocks sum to the region, which is perf_counter()'s count give or take the few
    instructions between the marks and the CSR read."""
    path = firmware_and_plugin(board)
    model = CycleModel(path, profile=1)
    try:
        with open_target(board, qemu_args=model.qemu_args()) as target:
            linear, _ = (int(n) for n in run_on(target, SCRIPT).split())
        profile = model.profile()
    finally:
        model.close()
    functions = by_function(profile, path)
    assert sum(insns for _, insns, _ in functions) == profile.instructions
    assert abs(profile.instructions - linear) <= 16, (profile.instructions, linear)
    names = [name for name, _, _ in functions]
    assert "mt_linear_f32_forward" in names and "mt_relu_f32_forward" not in names
