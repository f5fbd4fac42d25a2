"""Partial int8 updates on random layer shapes, bit for bit against the integer reference:
odd channel counts (1, primes, not multiples of the kernels' 2- and 4-channel blocks), kernel
sizes, strides, paddings, Conv1d, depthwise, pointwise and Linear, batches of 1-3, TopK and
ChannelRatio at ratios from 5% to all. The fixed cases are in test_partial_update_int8_device.py;
these draw new shapes from a seed, so a kernel path that only one shape reaches is covered too."""

from __future__ import annotations

import numpy as np
import pytest
from device_arrays import DeviceScript
from int8_partial_reference import PartialCase, random_arrays

RATIOS = (0.05, 0.1, 0.25, 0.34, 0.5, 0.75, 1.0)
# Configurations per target (the emulated boards run ~50x slower than the unix port) and per
# device script (a script's source must stay small).
CONFIGS = {"unix": 240}
BOARD_CONFIGS, PER_SCRIPT = 24, 6


def _out(n: int, k: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - k) // stride + 1


def _window(rng: np.random.Generator):
    """kh, kw, stride, pad_h, pad_w and an input size the kernel fits."""
    kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    s = int(rng.integers(1, 3))
    ph, pw = int(rng.integers(0, kh)), int(rng.integers(0, kw))
    return kh, kw, s, ph, pw, int(rng.integers(kh, 12)), int(rng.integers(kw, 12))


def random_case(rng: np.random.Generator, name: str) -> PartialCase:
    kind = str(rng.choice(["linear", "conv", "depthwise", "conv1d", "pointwise"]))
    n = int(rng.integers(1, 4))
    ratio = float(rng.choice(RATIOS))
    policy_kind = "topk" if rng.random() < 0.8 else "channels"
    policy = f"mt.TopK({ratio})" if policy_kind == "topk" else f"mt.ChannelRatio({ratio})"
    geometry: dict | None
    if kind == "linear":
        i, o = int(rng.integers(1, 70)), int(rng.integers(1, 40))
        src, xs, ws, dys, geometry = f"mt.Linear({i}, {o}, dtype=mt.int8)", (n, i), (o, i), (n, o), None
    elif kind == "conv1d":
        ci, co, k = int(rng.integers(1, 9)), int(rng.integers(1, 13)), int(rng.integers(1, 5))
        s, p = int(rng.integers(1, 3)), int(rng.integers(0, k))
        length = int(rng.integers(k, 20))
        src = f"mt.Conv1d({ci}, {co}, {k}, stride={s}, padding={p}, dtype=mt.int8)"
        xs, ws, dys = (n, length, ci), (co, k, ci), (n, _out(length, k, s, p), co)
        geometry = dict(stride=s, padding=(0, p), groups=1)
    elif kind == "pointwise":
        ci, co = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        h, w = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        src, xs, ws, dys = f"mt.Conv2d({ci}, {co}, 1, dtype=mt.int8)", (n, h, w, ci), (co, 1, 1, ci), (n, h, w, co)
        geometry = dict(stride=1, padding=0, groups=1)
    else:
        depthwise = kind == "depthwise"
        ci = int(rng.integers(1, 17 if depthwise else 9))
        co = ci if depthwise else int(rng.integers(1, 13))
        kh, kw, s, ph, pw, h, w = _window(rng)
        groups = ci if depthwise else 1
        src = (f"mt.Conv2d({ci}, {co}, ({kh}, {kw}), stride={s}, padding=({ph}, {pw}), groups={groups}, "
               f"dtype=mt.int8)")
        xs, ws, dys = (n, h, w, ci), (co, kh, kw, ci // groups), (n, _out(h, kh, s, ph), _out(w, kw, s, pw), co)
        geometry = dict(stride=s, padding=(ph, pw), groups=groups)
    x, w_, w_scale, b, dy = random_arrays(rng, xs, ws, dys)
    return PartialCase(name, src, policy, policy_kind, ratio, geometry, x, w_, w_scale, b, dy)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_int8_partial_update_on_random_shapes(target, rounding):
    count = CONFIGS.get(target.name, BOARD_CONFIGS)
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
