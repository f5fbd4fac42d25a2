"""int8 updates on random layer shapes (random_layers.py), bit for bit against the integer
reference: TopK and ChannelRatio at ratios from 5% to all, and full updates. The fixed cases
are in test_partial_update_int8_device.py; these draw new shapes from a seed, so a kernel path
that only one shape reaches is covered too."""

from __future__ import annotations

import numpy as np
import pytest
from device_arrays import DeviceScript
from int8_partial_reference import PartialCase, random_arrays
from random_layers import case_count, random_layer, random_policy

# Configurations per target (the emulated boards run ~50x slower than the unix port) and per
# device script (a script's source must stay small).
CONFIGS, BOARD_CONFIGS, PER_SCRIPT = 240, 24, 6


def random_case(rng: np.random.Generator, name: str) -> PartialCase:
    shape = random_layer(rng)
    kind, ratio, policy = random_policy(rng)
    x, w, w_scale, b, dy = random_arrays(rng, shape.x_shape, shape.w_shape, shape.dy_shape)
    return PartialCase(name, shape.device_src("int8"), policy, kind, ratio, shape.geometry, x, w, w_scale, b, dy)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_int8_partial_update_on_random_shapes(target, rounding):
    count = case_count(target, CONFIGS, BOARD_CONFIGS)
    rng = np.random.default_rng(2026 if rounding == "nearest" else 2027)
    cases = [random_case(rng, f"c{i}") for i in range(count)]
    for first in range(0, count, PER_SCRIPT):
        script = DeviceScript()
        chunk = cases[first:first + PER_SCRIPT]
        for case in chunk:
            case.add_to(script, rounding)
        got = script.run(target, timeout=300)
        for case in chunk:
            case.check(got, rounding)
