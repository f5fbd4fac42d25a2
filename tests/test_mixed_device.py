"""dtype="mixed" Linear and Conv layers (layer_mixed.h) on every target: the forward pass is
the int8 layer's on the quantized input, bit for bit; the backward pass is float32 on the
dequantized weights; the update is the fp32 SGD step (QAS), requantized per channel."""

from __future__ import annotations

import numpy as np
import pytest
from device_arrays import ALLOCATION_CHECK, DeviceScript, tensor_expr
from device_errors import assert_raises_clearly
from mcutrain.reference import functional as F
from mcutrain.reference import quantized as Q
from mcutrain.runner import run_on

pytestmark = pytest.mark.fpu_kernels  # also on qemu-rv32f (conftest.py)

# name, constructor, x shape, weight shape, stride, padding, groups, bias
CASES = [
    ("conv_3x2_stride2_batch3", "mt.Conv2d(5, 7, (3, 2), stride=2, padding=(1, 0), dtype=mt.mixed)",
     (3, 8, 6, 5), (7, 3, 2, 5), (2, 2), (1, 0), 1, True),
    ("conv_grouped_pad2", "mt.Conv2d(4, 6, 3, stride=(2, 1), padding=2, groups=2, bias=False, dtype='mixed')",
     (2, 9, 7, 4), (6, 3, 3, 2), (2, 1), (2, 2), 2, False),
    ("conv_depthwise", "mt.Conv2d(5, 5, 3, padding=1, groups=5, dtype=mt.mixed)",
     (2, 6, 7, 5), (5, 3, 3, 1), (1, 1), (1, 1), 5, True),
    ("conv1d", "mt.Conv1d(3, 4, 3, padding=1, dtype=mt.mixed)", (2, 9, 3), (4, 3, 3), None, None, 1, True),
    ("linear_batch1", "mt.Linear(37, 5, dtype=mt.mixed)", (1, 37), (5, 37), None, None, 1, True),
    ("linear_batch3_no_bias", "mt.Linear(9, 13, bias=False, dtype=mt.mixed)", (3, 9), (13, 9), None, None, 1, False),
]
LR = 0.25


def _as_2d(name, x, w, stride, padding):
    """Conv1d as the 2-D kernels run it (height one); others unchanged."""
    if name == "conv1d":
        return x[:, None], w[:, None], (1, 1), (0, 1)
    return x, w, stride, padding


def _reference(name, x, w, ws, b, stride, padding, groups):
    """The device's mixed forward: x quantized with its own range, then the int8 layer's
    two-pass forward (range, then output); returns (y float32, quant state, bias_q)."""
    qp = Q.qparams_asymmetric(float(x.min()), float(x.max()))
    xq = Q.quantize(x, qp.scale, qp.zero_point)
    bias_q = None if b is None else Q.quantize_bias(b, qp.scale, ws)
    q = Q.S8Quant(qp.scale, qp.zero_point)
    if w.ndim == 2:
        fwd = lambda q: Q.linear_s8_forward(xq, w, ws, bias_q, q)  # noqa: E731
    else:
        x2, w2, s2, p2 = _as_2d(name, xq, w, stride, padding)
        fwd = lambda q: Q.conv2d_s8_forward(x2, w2, ws, bias_q, q, s2, p2, groups)  # noqa: E731
    _, (lo, hi) = fwd(q)
    q.y_scale, q.y_zero_point = Q.qparams_asymmetric(lo, hi)
    y, _ = fwd(q)
    return Q.dequantize(y, q.y_scale, q.y_zero_point).reshape(-1)


def _float_grads(name, x, w_real, dy, stride, padding, groups):
    if w_real.ndim == 2:
        return F.linear_backward(x, w_real, dy)
    x2, w2, s2, p2 = _as_2d(name, x, w_real, stride, padding)
    dx, dw, db = F.conv2d_backward(x2, w2, dy.reshape(dy.shape[0], 1, *dy.shape[1:]) if name == "conv1d" else dy,
                                   s2, p2, groups)
    return dx.reshape(x.shape), dw.reshape(w_real.shape), db


def test_mixed_layers_forward_int8_and_step_in_fp32(target):
    rng = np.random.default_rng(51)
    script = DeviceScript()
    cases = []
    for name, src, x_shape, w_shape, stride, padding, groups, bias in CASES:
        x = rng.uniform(-1.0, 2.0, x_shape).astype(np.float32)
        w = rng.integers(-127, 128, w_shape).astype(np.int8)
        ws = rng.uniform(0.004, 0.02, w_shape[0]).astype(np.float32)
        b = rng.uniform(-0.5, 0.5, w_shape[0]).astype(np.float32) if bias else None
        y_ref = _reference(name, x, w, ws, b, stride, padding, groups)
        dy = rng.normal(0, 1, y_ref.size).astype(np.float32)
        script.add(f"layer = {src}")
        script.add(f"layer.weight.copy_from({tensor_expr(w, 'int8')})")
        script.add(f"layer.weight_scale.copy_from({tensor_expr(ws)})")
        if b is not None:
            script.add(f"layer.bias.copy_from({tensor_expr(b)})")
        script.add(f"x = {tensor_expr(x)}")
        script.emit(f"{name}.y", "layer.forward(x)", (y_ref.size,))
        script.add("opt = mt.SGD(layer, lr=%r, rounding='nearest')" % LR)
        script.add(f"dy = {tensor_expr(dy)}.reshape(layer.output.shape)")
        script.emit(f"{name}.dx", "layer.backward(dy, opt)", (x.size,))
        script.emit(f"{name}.w", "layer.weight", w.shape, "int8")
        script.emit(f"{name}.ws", "layer.weight_scale", ws.shape)
        if b is not None:
            script.emit(f"{name}.b", "layer.bias", b.shape)
        cases.append((name, x, w, ws, b, dy, y_ref, stride, padding, groups))
    results = script.run(target)
    for name, x, w, ws, b, dy, y_ref, stride, padding, groups in cases:
        # int8 forward: exactly the int8 layer's output, dequantized.
        assert np.array_equal(results[f"{name}.y"], y_ref), f"{name}: forward differs from the int8 reference"
        # fp32 backward on the dequantized weights: the input error as float32 computes it.
        w_real = Q.dequantize_weights(w, ws).astype(np.float64)
        out_shape = _out_shape(name, x.shape, w.shape, stride, padding)
        dx_ref, dw_ref, db_ref = _float_grads(name, x, w_real, dy.reshape(out_shape), stride, padding, groups)
        scale = np.abs(dx_ref).max() + 1e-6
        assert np.allclose(results[f"{name}.dx"], dx_ref.reshape(-1), rtol=1e-4, atol=1e-5 * scale), (
            f"{name}: input error differs from fp32")
        # The update: the fp32 step on the real weights (QAS), requantized per channel.
        v = w_real - LR * dw_ref
        mx = np.abs(v.reshape(v.shape[0], -1)).max(axis=1)
        keep = (mx <= 127 * ws) & (mx >= 0.5 * 127 * ws)
        s_new = np.where(keep, ws, mx / 127)
        assert np.allclose(results[f"{name}.ws"], s_new, rtol=1e-5), f"{name}: new weight scales differ"
        exact = v / s_new.reshape((-1,) + (1,) * (v.ndim - 1))
        got = results[f"{name}.w"].astype(np.float64)
        assert np.abs(got - exact).max() <= 0.5 + 1e-3, f"{name}: weights beyond half a step of the fp32 step"
        if b is not None:
            assert np.allclose(results[f"{name}.b"], b - LR * db_ref, rtol=1e-5, atol=1e-6), f"{name}: bias step"


def _out_shape(name, x_shape, w_shape, stride, padding):
    if len(w_shape) == 2:
        return (x_shape[0], w_shape[0])
    if name == "conv1d":
        k = w_shape[1]
        return (x_shape[0], x_shape[1] + 2 - k + 1, w_shape[0])
    (sh, sw), (ph, pw) = stride, padding
    oh = (x_shape[1] + 2 * ph - w_shape[1]) // sh + 1
    ow = (x_shape[2] + 2 * pw - w_shape[2]) // sw + 1
    return (x_shape[0], oh, ow, w_shape[0])


def test_mixed_model_learns_and_its_train_step_allocates_nothing(target):
    out = run_on(target, f"""
import gc, mcutrain as mt
mt.seed(3)
model = mt.Sequential(mt.Conv2d(1, 4, 3, padding=1, dtype=mt.mixed), mt.ReLU(), mt.MaxPool2d(2),
                      mt.Flatten(), mt.Linear(16, 2, dtype=mt.mixed))
print('dtypes', model[0].dtype, model[0].output is None, model[4].weight.dtype)
x = mt.zeros((2, 4, 4, 1))
for i in range(16):
    x[0][i // 4][i % 4][0] = 1.0 if i % 4 == 1 else 0.0
    x[1][i // 4][i % 4][0] = 1.0 if i // 4 == 1 else 0.0
opt = mt.SGD(model, lr=0.2)
y = [0, 1]
loss = mt.cross_entropy
first = model.train_step(x, y, loss, opt)
for i in range(20):
    model.train_step(x, y, loss, opt)
{ALLOCATION_CHECK}
print('loss', first, model.train_step(x, y, loss, opt))
print('out', model.output.dtype, model.predict(x).dtype)
""")
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["dtypes"].split()[0] == "mixed" and lines["dtypes"].split()[2] == "int8"
    first, last = map(float, lines["loss"].split())
    assert last < 0.2 * first, (first, last)
    assert int(lines["grown"]) <= (10 * 32 if target.name == "unix" else 0), lines["grown"]
    assert lines["out"].split() == ["float32", "float32"]


def test_mixed_bad_input_raises_clearly(target):
    cases = [
        ("mt.SGD(mt.Linear(2, 2, dtype=mt.mixed), lr=0.1, momentum=0.9)", "ValueError", "without momentum"),
        ("mt.Adam(mt.Linear(2, 2, dtype=mt.mixed))", "ValueError", "without momentum"),
        ("mt.SGD(mt.Linear(2, 2, dtype=mt.mixed), lr=0.1, momentum=0.5, update=mt.TopK(0.5))", "ValueError",
         "without momentum"),
        ("mt.Linear(2, 2, dtype='mixd')", "ValueError", "mixd"),
        ("mt.Sequential(mt.Convert(mt.int8), mt.Linear(2, 2, dtype=mt.mixed)).predict(mt.zeros((1, 2)))",
         "ValueError", "int8"),
        ("mt.Linear(2, 2, dtype=mt.mixed).forward(mt.Tensor([[1.0, float('nan')]]))", "ValueError", "not finite"),
        ("lin.backward(mt.zeros((1, 2)))", "ValueError", "mt.SGD"),
    ]
    setup = ["import mcutrain as mt", "lin = mt.Linear(2, 2, dtype=mt.mixed)", "lin.forward(mt.zeros((1, 2)))"]
    assert_raises_clearly(target, cases, setup, after="lin.forward(mt.zeros((1, 2)))")
