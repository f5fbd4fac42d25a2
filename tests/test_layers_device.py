"""Every layer's forward and backward on the device against the numpy reference.

Each test sends one script with all its cases to a target (unix, qemu-m4f, qemu-rv32): random
inputs, weights and output gradients go in as exact float32, and the device's outputs, input
gradients and parameter gradients come back exactly (tests/device_arrays.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from device_arrays import DeviceScript, assert_close_bilinear, tensor_expr
from mcutrain.reference import functional as F
from random_layers import case_count, random_conv2d, random_conv2d_arrays

pytestmark = pytest.mark.fpu_kernels  # also on qemu-rv32f (conftest.py)

# (name, batch, h, w, in_c, out_c, kernel, stride, padding, groups, bias)
CONV2D_CASES = [
    ("square_3x3_pad1", 1, 5, 5, 3, 4, (3, 3), (1, 1), (1, 1), 1, True),
    ("non_square_stride2_batch3", 3, 8, 6, 5, 7, (3, 2), (2, 2), (1, 0), 1, True),
    ("grouped_stride2_pad2", 2, 9, 7, 4, 6, (3, 3), (2, 1), (2, 2), 2, False),
    ("depthwise_pad1", 1, 6, 7, 6, 6, (3, 3), (1, 1), (1, 1), 6, True),
    ("depthwise_stride2_batch3", 3, 8, 8, 5, 5, (3, 3), (2, 2), (1, 1), 5, True),
    ("pointwise", 2, 4, 5, 7, 5, (1, 1), (1, 1), (0, 0), 1, True),
    ("kernel_5x5_pad2", 1, 7, 7, 3, 2, (5, 5), (1, 1), (2, 2), 1, True),
    ("depthwise_multiplier2", 1, 5, 5, 3, 6, (3, 3), (1, 1), (1, 1), 3, True),
]

# (name, batch, length, in_c, out_c, kernel, stride, padding, groups)
CONV1D_CASES = [
    ("k3_pad1", 2, 11, 3, 4, 3, 1, 1, 1),
    ("k5_stride2_pad2", 1, 16, 5, 6, 5, 2, 2, 1),
    ("depthwise", 3, 9, 4, 4, 3, 1, 1, 4),
]

LINEAR_CASES = [("batch1", 1, 7, 5, True), ("batch3", 3, 64, 10, True), ("no_bias", 2, 9, 13, False)]


def _conv_case_script(script: DeviceScript, name: str, layer_expr: str, x, w, b, dy) -> None:
    script.add(f"layer = {layer_expr}")
    script.add(f"layer.weight.copy_from({tensor_expr(w)})")
    if b is not None:
        script.add(f"layer.bias.copy_from({tensor_expr(b)})")
    script.add(f"x = {tensor_expr(x)}")
    script.emit(f"{name}.y", "layer.forward(x)", dy.shape)
    script.emit(f"{name}.dx", f"layer.backward({tensor_expr(dy)})", x.shape)
    script.emit(f"{name}.dw", "layer.weight.grad", w.shape)
    if b is not None:
        script.emit(f"{name}.db", "layer.bias.grad", b.shape)


def _check_conv(results, name, x, w, b, dy, stride, padding, groups, terms_fwd):
    """Forward and the three gradients, each within the fp32 summation bound."""
    y = F.conv2d_forward(x, w, b, stride, padding, groups)
    y_mag = F.conv2d_forward(np.abs(x), np.abs(w), None if b is None else np.abs(b), stride, padding, groups)
    assert_close_bilinear(results[f"{name}.y"], y, y_mag, terms_fwd, f"{name} forward")
    dx, dw, db = F.conv2d_backward(x, w, dy, stride, padding, groups)
    mdx, mdw, mdb = F.conv2d_backward(np.abs(x), np.abs(w), np.abs(dy), stride, padding, groups)
    out_c = w.shape[0]
    assert_close_bilinear(results[f"{name}.dx"], dx, mdx, out_c * w.shape[1] * w.shape[2], f"{name} grad_input")
    assert_close_bilinear(results[f"{name}.dw"], dw, mdw, dy.size // out_c, f"{name} grad_weight")
    if b is not None:
        assert_close_bilinear(results[f"{name}.db"], db, mdb, dy.size // out_c, f"{name} grad_bias")


def test_conv2d_forward_and_gradients_match_reference(target):
    rng = np.random.default_rng(3)
    script = DeviceScript()
    cases = []
    for name, n, h, wd, cin, cout, k, s, p, g, bias in CONV2D_CASES:
        x = rng.standard_normal((n, h, wd, cin)).astype(np.float32)
        w = rng.standard_normal((cout, k[0], k[1], cin // g)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32) if bias else None
        oh = (h + 2 * p[0] - k[0]) // s[0] + 1
        ow = (wd + 2 * p[1] - k[1]) // s[1] + 1
        dy = rng.standard_normal((n, oh, ow, cout)).astype(np.float32)
        _conv_case_script(script, name, f"mt.Conv2d({cin}, {cout}, {k}, stride={s}, padding={p}, groups={g}, bias={bias})",
                          x, w, b, dy)
        cases.append((name, x, w, b, dy, s, p, g))
    results = script.run(target)
    for name, x, w, b, dy, s, p, g in cases:
        _check_conv(results, name, x, w, b, dy, s, p, g, w[0].size)


def test_conv1d_forward_and_gradients_match_reference(target):
    rng = np.random.default_rng(4)
    script = DeviceScript()
    cases = []
    for name, n, length, cin, cout, k, s, p, g in CONV1D_CASES:
        x = rng.standard_normal((n, length, cin)).astype(np.float32)
        w = rng.standard_normal((cout, k, cin // g)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        dy = rng.standard_normal((n, (length + 2 * p - k) // s + 1, cout)).astype(np.float32)
        _conv_case_script(script, name, f"mt.Conv1d({cin}, {cout}, {k}, stride={s}, padding={p}, groups={g})",
                          x, w, b, dy)
        cases.append((name, x, w, b, dy, s, p, g))
    results = script.run(target)
    for name, x, w, b, dy, s, p, g in cases:
        # Conv1d is Conv2d with a height of one: add that axis to compare.
        as2d = {f"{name}.{k}": results[f"{name}.{k}"][:, None] for k in ("y", "dx", "dw")}
        as2d[f"{name}.db"] = results[f"{name}.db"]
        _check_conv(as2d, name, x[:, None], w[:, None], b, dy[:, None], (1, s), (0, p), g, w[0].size)


def test_linear_forward_and_gradients_match_reference(target):
    rng = np.random.default_rng(5)
    script = DeviceScript()
    cases = []
    for name, n, fin, fout, bias in LINEAR_CASES:
        x = rng.standard_normal((n, fin)).astype(np.float32)
        w = rng.standard_normal((fout, fin)).astype(np.float32)
        b = rng.standard_normal(fout).astype(np.float32) if bias else None
        dy = rng.standard_normal((n, fout)).astype(np.float32)
        _conv_case_script(script, name, f"mt.Linear({fin}, {fout}, bias={bias})", x, w, b, dy)
        cases.append((name, x, w, b, dy))
    results = script.run(target)
    for name, x, w, b, dy in cases:
        y = F.linear_forward(x, w, b)
        assert_close_bilinear(results[f"{name}.y"], y, F.linear_forward(np.abs(x), np.abs(w), None if b is None else np.abs(b)),
                              x.shape[1], f"{name} forward")
        dx, dw, db = F.linear_backward(x, w, dy)
        mdx, mdw, mdb = F.linear_backward(np.abs(x), np.abs(w), np.abs(dy))
        assert_close_bilinear(results[f"{name}.dx"], dx, mdx, w.shape[0], f"{name} grad_input")
        assert_close_bilinear(results[f"{name}.dw"], dw, mdw, x.shape[0], f"{name} grad_weight")
        if b is not None:
            assert_close_bilinear(results[f"{name}.db"], db, mdb, x.shape[0], f"{name} grad_bias")


def _simple_layer(script: DeviceScript, name: str, layer_expr: str, x, dy, y_shape, params=()):
    script.add(f"layer = {layer_expr}")
    script.add(f"x = {tensor_expr(x)}")
    script.emit(f"{name}.y", "layer.forward(x)", y_shape)
    script.emit(f"{name}.dx", f"layer.backward({tensor_expr(dy)})", x.shape)
    for p, shape in params:
        script.emit(f"{name}.d{p}", f"layer.{p}.grad", shape)


def test_activation_pool_flatten_layers_match_reference(target):
    rng = np.random.default_rng(6)
    x4 = rng.standard_normal((3, 7, 5, 3)).astype(np.float32) * 4  # spans ReLU6's 0..6
    x3 = rng.standard_normal((2, 9, 5)).astype(np.float32)
    # Ties for max pooling: a coarse grid of values repeats within windows.
    xt = np.round(rng.standard_normal((2, 6, 6, 3)) * 2).astype(np.float32)
    logits = (rng.standard_normal((4, 6)) * 3).astype(np.float32)
    # (name, layer, input, forward, backward (x, y, dy) -> dx)
    cases = [
        ("relu", "mt.ReLU()", x4, F.relu_forward, lambda x, y, dy: F.relu_backward(y, dy)),
        ("relu6", "mt.ReLU6()", x4, F.relu6_forward, lambda x, y, dy: F.relu6_backward(y, dy)),
        ("softmax", "mt.Softmax()", logits, F.softmax_forward, lambda x, y, dy: F.softmax_backward(y, dy)),
        ("maxpool_2", "mt.MaxPool2d(2)", x4, lambda x: F.maxpool2d_forward(x, 2),
         lambda x, y, dy: F.maxpool2d_backward(x, dy, 2)),
        ("maxpool_3_s2_p1_ties", "mt.MaxPool2d(3, stride=2, padding=1)", xt,
         lambda x: F.maxpool2d_forward(x, 3, 2, 1), lambda x, y, dy: F.maxpool2d_backward(x, dy, 3, 2, 1)),
        ("avgpool_2x3", "mt.AvgPool2d((2, 3), stride=(1, 2), padding=(1, 1))", x4,
         lambda x: F.avgpool2d_forward(x, (2, 3), (1, 2), (1, 1)),
         lambda x, y, dy: F.avgpool2d_backward(x.shape, dy, (2, 3), (1, 2), (1, 1))),
        ("global_avgpool_4d", "mt.GlobalAvgPool()", x4, F.global_avgpool_forward,
         lambda x, y, dy: F.global_avgpool_backward(x.shape, dy)),
        ("global_avgpool_3d", "mt.GlobalAvgPool()", x3, F.global_avgpool_forward,
         lambda x, y, dy: F.global_avgpool_backward(x.shape, dy)),
        ("flatten", "mt.Flatten()", x4, F.flatten_forward, lambda x, y, dy: F.flatten_backward(x.shape, dy)),
    ]
    script = DeviceScript()
    expected = {}
    for name, expr, x, fwd, bwd in cases:
        y = fwd(x)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        _simple_layer(script, name, expr, x, dy, y.shape)
        expected[name] = (y, bwd(x, y, dy))
    results = script.run(target)
    for name, (y, dx) in expected.items():
        # Elementwise maths, means over a few values and exp: a few fp32 ulps relative to
        # the largest value involved.
        for key, ref in (("y", y), ("dx", dx)):
            got = results[f"{name}.{key}"]
            tol = 1e-6 * max(1.0, float(np.abs(ref).max()))
            assert np.abs(got - ref).max() <= tol, f"{name}.{key}: max error {np.abs(got - ref).max():.3g}"


# Random shapes: odd channel counts, grouped convolutions with and without channel
# multipliers, kernels to 5x5, strides to 3, paddings; the fixed cases above name the
# families, these reach the kernels' edge paths (blocks of 4 and 6, short rows) at random.
# Cases per target (the boards run ~50x slower) and a size cap that keeps a case's script
# and its printed results within a board's heap.
RANDOM_CASES, RANDOM_BOARD_CASES, RANDOM_MAX_VALUES = 120, 8, 2500


def test_conv2d_random_shapes_match_reference(target):
    rng = np.random.default_rng(11)
    for i in range(case_count(target, RANDOM_CASES, RANDOM_BOARD_CASES)):
        config = random_conv2d(rng, RANDOM_MAX_VALUES)
        _, _, _, cin, cout, k, s, p, g, bias = config
        x, w, b, dy = random_conv2d_arrays(rng, config, lambda a: a.astype(np.float32))
        layer = f"mt.Conv2d({cin}, {cout}, {k}, stride={s}, padding={p}, groups={g}, bias={bias})"
        script = DeviceScript()
        _conv_case_script(script, f"c{i}", layer, x, w, b, dy)
        _check_conv(script.run(target), f"c{i}", x, w, b, dy, s, p, g, w[0].size)


def test_pooling_random_shapes_match_reference(target):
    rng = np.random.default_rng(12)
    for i in range(case_count(target, RANDOM_CASES, RANDOM_BOARD_CASES)):
        k = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        p = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
        shape = (int(rng.integers(1, 4)), int(rng.integers(max(1, k[0] - 2 * p[0]), 12)),
                 int(rng.integers(max(1, k[1] - 2 * p[1]), 12)), int(rng.integers(1, 20)))
        x = rng.standard_normal(shape).astype(np.float32)
        if rng.random() < 0.4:
            x = np.round(x * 2).astype(np.float32)  # ties within max-pooling windows
        if rng.random() < 0.5:
            layer = f"mt.MaxPool2d({k}, stride={s}, padding={p})"
            y = F.maxpool2d_forward(x, k, s, p)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            dx = F.maxpool2d_backward(x, dy, k, s, p)
        else:
            layer = f"mt.AvgPool2d({k}, stride={s}, padding={p})"
            y = F.avgpool2d_forward(x, k, s, p)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            dx = F.avgpool2d_backward(x.shape, dy, k, s, p)
        script = DeviceScript()
        _simple_layer(script, f"p{i}", layer, x, dy, y.shape)
        results = script.run(target)
        for key, ref in (("y", y), ("dx", dx)):
            got = results[f"p{i}.{key}"]
            tol = 1e-6 * max(1.0, float(np.abs(ref).max()))
            assert np.abs(got - ref).max() <= tol, f"{layer} x{shape} {key}: max error {np.abs(got - ref).max():.3g}"


def test_batchnorm_train_eval_and_gradients_match_reference(target):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3, 4, 5, 6)) * 2 + 1).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, 6).astype(np.float32)
    beta = rng.standard_normal(6).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    script = DeviceScript()
    script.add("bn = mt.BatchNorm2d(6)")
    script.add(f"bn.weight.copy_from({tensor_expr(gamma)})")
    script.add(f"bn.bias.copy_from({tensor_expr(beta)})")
    script.add(f"x = {tensor_expr(x)}")
    script.emit("y", "bn.forward(x)", x.shape)
    script.emit("dx", f"bn.backward({tensor_expr(dy)})", x.shape)
    script.emit("dgamma", "bn.weight.grad", (6,))
    script.emit("dbeta", "bn.bias.grad", (6,))
    script.emit("running_mean", "bn.running_mean", (6,))
    script.emit("running_var", "bn.running_var", (6,))
    script.emit("y_eval", "bn.forward(x, training=False)", x.shape)
    results = script.run(target)

    rm, rv = np.zeros(6), np.ones(6)
    y, cache = F.batchnorm2d_forward_train(x, gamma, beta, rm, rv)
    dx, dgamma, dbeta = F.batchnorm2d_backward(dy, cache)
    y_eval = F.batchnorm2d_forward_eval(x, gamma, beta, rm, rv)
    # Means and variances over 60 values per channel, then a normalization: the error is
    # dominated by the variance's rounding, ~60 ulps of the normalized values (order 1-10).
    for key, ref in (("y", y), ("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta),
                     ("running_mean", rm), ("running_var", rv), ("y_eval", y_eval)):
        got = results[key]
        tol = 2e-5 * max(1.0, float(np.abs(ref).max()))
        assert np.abs(got - ref).max() <= tol, f"batchnorm {key}: max error {np.abs(got - ref).max():.3g}"


def test_losses_match_reference(target):
    rng = np.random.default_rng(8)
    logits = (rng.standard_normal((5, 7)) * 3).astype(np.float32)
    logits[0, 2] = 1e4  # large logits stay finite (log-sum-exp)
    labels = rng.integers(0, 7, 5)
    pred = rng.standard_normal((3, 4)).astype(np.float32)
    tgt = rng.standard_normal((3, 4)).astype(np.float32)
    script = DeviceScript()
    script.add(f"logits = {tensor_expr(logits)}")
    script.add(f"labels = {[int(v) for v in labels]}")
    script.add("import struct")
    script.emit("ce", "mt.Tensor([mt.cross_entropy(logits, labels)])", (1,))
    script.emit("dce", "mt.cross_entropy.backward(logits, labels)", logits.shape)
    script.add(f"pred = {tensor_expr(pred)}")
    script.add(f"tgt = {tensor_expr(tgt)}")
    script.emit("mse", "mt.Tensor([mt.mse(pred, tgt)])", (1,))
    script.emit("dmse", "mt.mse.backward(pred, tgt)", pred.shape)
    results = script.run(target)
    ce, dce = F.cross_entropy(logits, labels)
    m, dm = F.mse(pred, tgt)
    # The loss itself passes through a Python float: on the emulated boards those keep
    # 22 bits of mantissa, so compare it to 1e-6 relative; gradients come back exact fp32.
    assert results["ce"][0] == pytest.approx(ce, rel=1e-5)
    assert results["mse"][0] == pytest.approx(m, rel=1e-5)
    assert np.abs(results["dce"] - dce).max() <= 1e-6
    assert np.abs(results["dmse"] - dm).max() <= 1e-6
