"""Everything the cost model predicts for one candidate on one board profile, in one dict.

    estimate(arch, "nrf52840")
    # {"board": ..., "ram": {"train_step": {...memory() dict}, "inference": {...}},
    #  "flash": {...}, "cost": {"train_step": {"instructions", "cycles", "seconds"}, ...},
    #  "fits_heap": {"train_step": bool, "inference": bool}, "fit_quality": "approximation"}
"""

from __future__ import annotations

from typing import Any

from .arch import Arch
from .costs import load_fits, predict_cost
from .flash import predict_flash
from .memory import GEMM_PACK_BOARDS, predict_memory
from .profiles import get_profile


def estimate(arch: Arch, board: str = "qemu-m4f", momentum: bool = False) -> dict[str, Any]:
    """RAM (training step with mt.SGD, inference), flash and cost of arch on `board`. RAM and
    flash are computed for the build the profile's cost fits come from (the scratch of a
    pointwise conv depends on it); cost is None where no fits apply."""
    profile = get_profile(board)
    build = profile.cost_fits or ("qemu-rv32" if "RV32" in profile.isa else "qemu-m4f")
    pack = build in GEMM_PACK_BOARDS
    ram = {"train_step": predict_memory(arch, False, "sgd", momentum, gemm_pack=pack),
           "inference": predict_memory(arch, True, gemm_pack=pack)}
    cost: dict[str, dict[str, float]] | None = None
    if profile.cost_fits is not None:
        cost = {k: dict(v) for k, v in predict_cost(arch, load_fits(profile.cost_fits)).items()}
        for v in cost.values():
            if "cycles" in v and profile.clock_hz:
                v["seconds"] = v["cycles"] / profile.clock_hz
    return {
        "board": profile.name,
        "ram": ram,
        "flash": predict_flash(arch, build),
        "cost": cost,
        "fits_heap": {k: v["total"] <= profile.heap for k, v in ram.items()},
        "fit_quality": profile.fit_quality,
    }
