"""Partial updates of int8 layers (layer_s8_partial.c) on every target, bit for bit against
the integer reference: the selection is numpy's top-k of the integer error magnitudes
(ties to the lower index), the input error and the update are the int8 kernels' on the
selected channels alone, and every unselected weight, scale and bias keeps its bytes."""

from __future__ import annotations

import numpy as np
import pytest
from device_arrays import DeviceScript, tensor_expr
from int8_partial_reference import DY_SCALE, F32, LR, X_SCALE, X_ZP, PartialCase, random_arrays
from mcutrain.reference.partial import topk_count, topk_indices

# name, layer source, x shape, weight shape, dy shape, policy source, (kind, ratio), conv
# geometry (None for Linear)
CASES = [
    ("linear", "mt.Linear(40, 9, dtype=mt.int8)", (2, 40), (9, 40), (2, 9), "mt.TopK(0.4)", ("topk", 0.4), None),
    ("conv", "mt.Conv2d(5, 7, 3, stride=2, padding=1, dtype=mt.int8)", (2, 7, 7, 5), (7, 3, 3, 5), (2, 4, 4, 7),
     "mt.TopK(0.2, 0.5)", ("topk", 0.5), dict(stride=2, padding=1, groups=1)),
    ("depthwise", "mt.Conv2d(6, 6, 3, padding=1, groups=6, dtype=mt.int8)", (1, 5, 5, 6), (6, 3, 3, 1),
     (1, 5, 5, 6), "mt.TopK(0.5)", ("topk", 0.5), dict(stride=1, padding=1, groups=6)),
    ("channels", "mt.Conv2d(4, 7, (2, 3), padding=(1, 0), dtype=mt.int8)", (1, 4, 6, 4), (7, 2, 3, 4),
     (1, 5, 4, 7), "mt.ChannelRatio(0.5)", ("channels", 0.5), dict(stride=1, padding=(1, 0), groups=1)),
    ("conv1d", "mt.Conv1d(4, 6, 3, padding=1, dtype=mt.int8)", (2, 9, 4), (6, 3, 4), (2, 9, 6), "mt.TopK(0.5)",
     ("topk", 0.5), dict(stride=1, padding=(0, 1), groups=1)),
]


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_int8_partial_update_matches_the_integer_reference(target, rounding):
    rng = np.random.default_rng(17)
    script = DeviceScript()
    cases = []
    for name, layer_src, x_shape, w_shape, dy_shape, policy, (kind, ratio), geometry in CASES:
        x, w, ws, b, dy = random_arrays(rng, x_shape, w_shape, dy_shape)
        dy[..., 1] = 0                      # no error at all
        dy[..., 2] = -dy[..., 3]            # a tie: the lower index wins
        case = PartialCase(name, layer_src, policy, kind, ratio, geometry, x, w, ws, b, dy)
        case.add_to(script, rounding)
        cases.append(case)
    got = script.run(target, timeout=300)
    for case in cases:
        case.check(got, rounding)


def test_int8_bias_only_steps_the_float_bias_and_keeps_the_weights(target):
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (3, 12)).astype(np.int8)
    w = rng.integers(-100, 101, (5, 12)).astype(np.int8)
    ws = rng.uniform(0.004, 0.02, 5).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, 5).astype(np.float32)
    dy = rng.integers(-50, 51, (3, 5)).astype(np.int8)
    script = DeviceScript()
    script.add("layer = mt.Linear(12, 5, dtype=mt.int8)")
    script.add(f"layer.weight.copy_from({tensor_expr(w, 'int8')})")
    script.add(f"layer.weight_scale.copy_from({tensor_expr(ws)})")
    script.add(f"layer.bias.copy_from({tensor_expr(b)})")
    script.add(f"opt = mt.SGD(layer, lr={LR}, update=mt.BiasOnly())")
    script.add(f"layer.forward(mt.Tensor(bytes.fromhex('{x.tobytes().hex()}'), {x.shape}, dtype=mt.int8, "
               f"scale={X_SCALE}, zero_point={X_ZP}))")
    script.add(f"dx = layer.backward(mt.Tensor(bytes.fromhex('{dy.tobytes().hex()}'), {dy.shape}, dtype=mt.int8, "
               f"scale={DY_SCALE}), opt)")
    script.emit("w", "layer.weight", w.shape, "int8")
    script.emit("ws", "layer.weight_scale", ws.shape)
    script.emit("b", "layer.bias", b.shape)
    got = script.run(target)
    assert got["w"].tobytes() == w.tobytes() and got["ws"].tobytes() == ws.tobytes()
    step = F32(F32(LR) * F32(DY_SCALE)) * dy.astype(np.int64).sum(axis=0).astype(np.float32)
    np.testing.assert_array_equal(got["b"], (b - step).astype(np.float32))


@pytest.mark.parametrize("layer_src, x_shape, w_shape", [
    ("mt.Linear(24, 10, dtype=mt.mixed)", (3, 24), (10, 24)),
    ("mt.Conv2d(3, 8, 3, padding=1, dtype=mt.mixed)", (2, 5, 5, 3), (8, 3, 3, 3)),
])
def test_mixed_topk_updates_only_the_selected_rows(target, layer_src, x_shape, w_shape):
    # Mixed layers: the float32 backward with the error of unselected channels dropped,
    # then only the selected rows requantized; the other rows keep their bytes.
    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, x_shape).astype(np.float32)
    out = w_shape[0]
    dy_shape = x_shape[:-1] + (out,)
    # Channel c's error magnitude grows with a permutation of the channels: a clear top-k.
    rank = rng.permutation(out) + 1
    dy = (rng.choice([-1.0, 1.0], dy_shape) * rank * 0.01).astype(np.float32)
    k = topk_count(out, 0.3, 0.3, 1.0)
    expected = topk_indices(np.abs(dy).reshape(-1, out).sum(axis=0), k)
    script = DeviceScript()
    script.add("mt.seed(3)")
    script.add(f"layer = {layer_src}")
    script.add("opt = mt.SGD(layer, lr=0.05, update=mt.TopK(0.3))")
    script.add(f"layer.forward({tensor_expr(x)})")
    script.emit("w0", "layer.weight", w_shape, "int8")
    script.emit("s0", "layer.weight_scale", (out,))
    script.emit("b0", "layer.bias", (out,))
    script.add(f"layer.backward({tensor_expr(dy)}, opt)")
    script.emit("w1", "layer.weight", w_shape, "int8")
    script.emit("s1", "layer.weight_scale", (out,))
    script.emit("b1", "layer.bias", (out,))
    script.emit("sel", "mt.Tensor(layer.selected)", (k,))
    got = script.run(target)
    assert list(got["sel"].astype(int)) == list(expected)
    rest = np.setdiff1d(np.arange(out), expected)
    for name in ("w", "s", "b"):
        assert got[f"{name}1"][rest].tobytes() == got[f"{name}0"][rest].tobytes(), name
    assert np.all(got["b1"][expected] != got["b0"][expected])  # every selected bias took a step
    # The selected bias took the float32 step: b - lr * sum of its error.
    np.testing.assert_allclose(got["b1"][expected], got["b0"][expected] - 0.05 * dy.reshape(-1, out).sum(axis=0)[
        expected], rtol=0, atol=1e-6)
