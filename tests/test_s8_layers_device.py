"""int8 (fully quantized) parameterless and joining layers on the device (unix, qemu-m4f,
qemu-rv32): AvgPool2d and Residual against the integer reference (mcutrain.reference.quantized)
bit for bit, and within stated bounds of float64 on the dequantized operands; bad input.

Scales reach the device as Python literals; the emulated boards' 30-bit floats hold the ones
used here exactly, so the reference sees the device's values. A scale the device computes is
sent back as a float32 tensor through a Python float, so it is compared to 2**-20 relative.
"""

from __future__ import annotations

import numpy as np
from device_arrays import ALLOCATION_CHECK, DeviceScript, bars, labels_expr, tensor_expr
from device_errors import assert_raises_clearly
from mcutrain.reference import functional as F
from mcutrain.reference import quantized as Q
from mcutrain.runner import run_on

X_SCALE, X_ZP = 0.046875, 5
DY_SCALE = 0.0078125
SCALE_RTOL = 2.0**-20  # a device scale through a 30-bit Python float


def s8_expr(a: np.ndarray, scale: float, zero_point: int = 0) -> str:
    return (f"mt.Tensor(bytes.fromhex('{a.astype(np.int8).tobytes().hex()}'), {a.shape}, dtype=mt.int8, "
            f"scale={scale}, zero_point={zero_point})")


def emit_int8_pass(script: DeviceScript, name: str, layer: str, x_expr: str, y_shape: tuple, dy_expr: str,
                   x_shape: tuple, backward_args: str = "") -> None:
    """Emit `name`.y and .yq (`layer`'s forward on x_expr, its output's scale and zero point)
    and `name`.dx and .dxq (its backward on dy_expr, then backward_args)."""
    script.emit(f"{name}.y", f"{layer}.forward({x_expr})", y_shape, "int8")
    script.emit(f"{name}.yq", f"mt.Tensor([{layer}.output.scale, {layer}.output.zero_point])", (2,))
    script.add(f"dx = {layer}.backward({dy_expr}{backward_args})")
    script.emit(f"{name}.dx", "dx", x_shape, "int8")
    script.emit(f"{name}.dxq", "mt.Tensor([dx.scale, dx.zero_point])", (2,))


# (name, x shape, kernel, stride, padding): the keyword-spotting case (2x2, no overlap) first
AVGPOOL_CASES = [
    ("k2_no_overlap_batch2", (2, 6, 5, 3), 2, None, 0),
    ("k3_stride2_pad1_overlap", (1, 7, 6, 4), 3, 2, 1),
    ("k3x2_stride1x2_pad1x0_batch3", (3, 5, 8, 2), (3, 2), (1, 2), (1, 0)),
    ("k1_identity", (1, 3, 3, 2), 1, None, 0),
]


def test_int8_avgpool2d_matches_the_integer_reference_bit_for_bit(target):
    rng = np.random.default_rng(51)
    script = DeviceScript()
    cases = []
    for name, shape, kernel, stride, padding in AVGPOOL_CASES:
        x = rng.integers(-128, 128, shape).astype(np.int8)
        y = Q.avgpool2d_s8_forward(x, X_ZP, kernel, stride, padding)
        dy = rng.integers(-127, 128, y.shape).astype(np.int8)
        script.add(f"layer = mt.AvgPool2d({kernel!r}, stride={stride!r}, padding={padding!r})")
        emit_int8_pass(script, name, "layer", s8_expr(x, X_SCALE, X_ZP), y.shape, s8_expr(dy, DY_SCALE), x.shape)
        cases.append((name, shape, kernel, stride, padding, x, y, dy))
    results = script.run(target)
    for name, shape, kernel, stride, padding, x, y, dy in cases:
        assert np.array_equal(results[f"{name}.y"], y), f"{name}: forward differs from the integer reference"
        assert results[f"{name}.yq"].tolist() == [X_SCALE, X_ZP], f"{name}: the mean keeps the quantization"
        dx, dx_scale = Q.avgpool2d_s8_grad_input(shape, dy, DY_SCALE, kernel, stride, padding)
        assert np.array_equal(results[f"{name}.dx"], dx), f"{name}: input gradient differs"
        got_scale, got_zp = results[f"{name}.dxq"]
        assert abs(got_scale - dx_scale) <= SCALE_RTOL * dx_scale and got_zp == 0, (name, got_scale, dx_scale)

        # Against float64: the forward is the exact mean rounded once (half a step of x's
        # scale; a mean of in-range values cannot saturate); the input gradient is exact when
        # windows do not overlap (cover 1), else within half a step of its scale; the float32
        # scale dy_scale * cover / area adds its own rounding (2**-23 relative, twice).
        xr = Q.dequantize(x, X_SCALE, X_ZP).astype(np.float64)
        ref = F.avgpool2d_forward(xr, kernel, stride, padding)
        yr = Q.dequantize(y, X_SCALE, X_ZP).astype(np.float64)
        assert np.all(np.abs(yr - ref) <= 0.5 * X_SCALE), f"{name}: forward beyond half a step"
        dx_ref = F.avgpool2d_backward(shape, dy.astype(np.float64) * DY_SCALE, kernel, stride, padding)
        cover = Q.avgpool2d_s8_cover(shape, kernel, stride, padding)
        err = np.abs(dx.astype(np.float64) * dx_scale - dx_ref)
        bound = (0.0 if cover == 1 else 0.5 * dx_scale) + 2.0**-22 * np.abs(dx_ref)
        assert np.all(err <= bound), f"{name}: input gradient beyond its bound"



# ---- Residual and Add ----------------------------------------------------------------------


def _sum_reference(a, sa, za, b, sb, zb, symmetric=False):
    """The device's two-pass int8 sum (a first pass measures the range): (y, scale, zero point)."""
    qmin, qmax = (-Q.SYM_MAX, Q.SYM_MAX) if symmetric else (Q.ACT_MIN, Q.ACT_MAX)
    _, (lo, hi) = Q.add_s8(Q.add_s8_make(sa, sb, 1.0), a, za, b, zb, 0, qmin, qmax)
    qp = Q.qparams_symmetric(max(-lo, hi)) if symmetric else Q.qparams_asymmetric(lo, hi)
    y, _ = Q.add_s8(Q.add_s8_make(sa, sb, qp.scale), a, za, b, zb, qp.zero_point, qmin, qmax)
    return y, qp.scale, qp.zero_point


def _pointwise(rng, c):
    """A frozen int8 1x1 Conv2d's weights: (w, w_scale, bias)."""
    w = rng.integers(-127, 128, (c, 1, 1, c)).astype(np.int8)
    ws = rng.uniform(0.004, 0.02, c).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    return w, ws, b


def _pointwise_script(script, name, w, ws, b):
    script.add(f"{name} = mt.Conv2d({w.shape[0]}, {w.shape[0]}, 1, dtype=mt.int8)")
    script.add(f"{name}.weight.copy_from({tensor_expr(w, 'int8')})")
    script.add(f"{name}.weight_scale.copy_from({tensor_expr(ws)})")
    script.add(f"{name}.bias.copy_from({tensor_expr(b)})")
    script.add(f"{name}.trainable = False")


def _pointwise_reference(x, w, ws, b, dy):
    """The frozen conv's forward and input gradient as layer_s8.c computes them (two passes
    each): ((y, scale, zp), (dx, scale))."""
    bias_q = Q.quantize_bias(b, X_SCALE, ws)
    q = Q.S8Quant(X_SCALE, X_ZP)
    _, (lo, hi) = Q.conv2d_s8_forward(x, w, ws, bias_q, q, 1, 0, 1)
    q.y_scale, q.y_zero_point = Q.qparams_asymmetric(lo, hi)
    y, _ = Q.conv2d_s8_forward(x, w, ws, bias_q, q, 1, 0, 1)
    q.dy_scale, q.dx_scale = DY_SCALE, 1.0
    _, absmax = Q.conv2d_s8_grad_input(x.shape, w, ws, dy, q, 1, 0, 1)
    q.dx_scale = Q.qparams_symmetric(absmax).scale
    dx, _ = Q.conv2d_s8_grad_input(x.shape, w, ws, dy, q, 1, 0, 1)
    return (y, q.y_scale, q.y_zero_point), (dx, q.dx_scale)


def test_int8_residual_matches_the_integer_reference_bit_for_bit(target):
    rng = np.random.default_rng(52)
    shape = (2, 5, 4, 3)
    script = DeviceScript()
    cases = []
    # conv_body: body and identity shortcut in different scales; pool_body_conv_shortcut: the
    # shortcut is a layer, so two layers' input errors meet.
    for name in ("conv_body", "pool_body_conv_shortcut"):
        x = rng.integers(-128, 128, shape).astype(np.int8)
        dy = rng.integers(-127, 128, shape).astype(np.int8)
        w, ws, b = _pointwise(rng, shape[3])
        _pointwise_script(script, "conv", w, ws, b)
        (yc, sc, zc), (dxc, sdc) = _pointwise_reference(x, w, ws, b, dy)
        if name == "conv_body":
            script.add("res = mt.Residual(conv)")
            y, ys, yz = _sum_reference(yc, sc, zc, x, X_SCALE, X_ZP)
            dx, dxs, _ = _sum_reference(dxc, sdc, 0, dy, DY_SCALE, 0, symmetric=True)
        else:
            script.add("res = mt.Residual(mt.AvgPool2d(3, stride=1, padding=1), shortcut=conv)")
            yp = Q.avgpool2d_s8_forward(x, X_ZP, 3, 1, 1)
            y, ys, yz = _sum_reference(yp, X_SCALE, X_ZP, yc, sc, zc)
            dxp, sdp = Q.avgpool2d_s8_grad_input(shape, dy, DY_SCALE, 3, 1, 1)
            dx, dxs, _ = _sum_reference(dxp, sdp, 0, dxc, sdc, 0, symmetric=True)
        script.add(f"x = {s8_expr(x, X_SCALE, X_ZP)}")
        emit_int8_pass(script, name, "res", "x", shape, s8_expr(dy, DY_SCALE), shape)
        cases.append((name, y, ys, yz, dx, dxs))
    results = script.run(target)
    for name, y, ys, yz, dx, dxs in cases:
        assert np.array_equal(results[f"{name}.y"], y), f"{name}: forward differs from the integer reference"
        got_s, got_z = results[f"{name}.yq"]
        assert abs(got_s - ys) <= SCALE_RTOL * ys and got_z == yz, (name, got_s, got_z, ys, yz)
        assert np.array_equal(results[f"{name}.dx"], dx), f"{name}: input gradient differs"
        got_s, got_z = results[f"{name}.dxq"]
        assert abs(got_s - dxs) <= SCALE_RTOL * dxs and got_z == 0, (name, got_s, dxs)


def test_int8_add_sums_different_scales_within_half_a_step_and_tracks_its_range(target):
    rng = np.random.default_rng(53)
    shape = (3, 17)
    sa, za, sb, zb = 0.03125, -7, 0.0078125, 20
    pairs = [tuple(rng.integers(-128, 128, shape).astype(np.int8) for _ in range(2)) for _ in range(3)]
    pairs[1][0][0, :4] = [127, -128, 127, -128]  # a wider second range
    script = DeviceScript()
    script.add("add = mt.Add()")
    for i, (a, b) in enumerate(pairs):
        script.emit(f"y{i}", f"add.forward({s8_expr(a, sa, za)}, {s8_expr(b, sb, zb)})", shape, "int8")
        script.emit(f"q{i}", f"mt.Tensor([add.backward({s8_expr(a, 0.5)})[1].scale])", (1,))
    results = script.run(target)
    # The first call measures the range; each call quantizes with the moving average of the
    # ranges before it, then adds its own (momentum 0.9).
    tracker = Q.RangeTracker(momentum=0.9)
    for i, (a, b) in enumerate(pairs):
        if tracker.count == 0:
            _, (lo, hi) = Q.add_s8(Q.add_s8_make(sa, sb, 1.0), a, za, b, zb)
            tracker.observe(lo, hi)
            measured = True
        else:
            measured = False
        s, z = Q.qparams_asymmetric(tracker.min, tracker.max)
        y, (lo, hi) = Q.add_s8(Q.add_s8_make(sa, sb, s), a, za, b, zb, z)
        if not measured:
            tracker.observe(lo, hi)
        assert np.array_equal(results[f"y{i}"], y), f"sum {i} differs from the integer reference"
        assert results[f"q{i}"][0] == 0.5  # backward passes dy on unchanged
        # Against float64: one rounding (half a step) unless the tracked range clips the sum.
        ref = Q.dequantize(a, sa, za).astype(np.float64) + Q.dequantize(b, sb, zb).astype(np.float64)
        got = Q.dequantize(y, s, z).astype(np.float64)
        inside = (ref > (Q.ACT_MIN - z) * s) & (ref < (Q.ACT_MAX - z) * s)
        assert np.all(np.abs(got - ref)[inside] <= 0.5 * s * (1 + 2.0**-20)), f"sum {i} beyond half a step"



# ---- Softmax -------------------------------------------------------------------------------

SOFTMAX_CASES = [("classes10_batch3", (3, 10), 0.0625), ("one_class", (2, 1), 0.5),
                 ("sharp_3d", (2, 3, 7), 0.25), ("classes300", (1, 300), 0.03125)]


def test_int8_softmax_matches_the_reference_and_its_integer_backward_bit_for_bit(target):
    rng = np.random.default_rng(55)
    script = DeviceScript()
    cases = []
    for name, shape, x_scale in SOFTMAX_CASES:
        x = rng.integers(-128, 128, shape).astype(np.int8)
        dy = rng.integers(-127, 128, shape).astype(np.int8)
        script.add("sm = mt.Softmax()")
        emit_int8_pass(script, name, "sm", s8_expr(x, x_scale, 3), shape, s8_expr(dy, DY_SCALE), shape)
        cases.append((name, x, x_scale, dy))
    results = script.run(target)
    for name, x, x_scale, dy in cases:
        y = results[f"{name}.y"]
        assert results[f"{name}.yq"].tolist() == [1 / 256, -128], name  # TFLite's fixed quantization
        # Float per row with the C library's expf (softmax_s8.h): within one unit of the
        # exactly rounded softmax, and equal to it nearly everywhere.
        ref = Q.softmax_s8_forward(x, x_scale)
        diff = np.abs(y.astype(np.int64) - ref)
        assert diff.max() <= 1 and np.count_nonzero(diff) <= max(1, y.size // 50), (name, diff.max())
        # The input gradient is integer given the device's output: bit for bit.
        dx, dx_scale = Q.softmax_s8_grad_input(y, dy, DY_SCALE)
        assert np.array_equal(results[f"{name}.dx"], dx), f"{name}: input gradient differs"
        got_s, got_z = results[f"{name}.dxq"]
        assert abs(got_s - dx_scale) <= SCALE_RTOL * dx_scale and got_z == 0, (name, got_s, dx_scale)
        # ... and it is the exact gradient at the quantized p, rounded once (half a step; the
        # first pass's own range cannot saturate).
        p = (y.astype(np.float64) + 128) / 256
        g = dy.astype(np.float64) * DY_SCALE
        exact = p * (g - (p * g).sum(axis=-1, keepdims=True))
        assert np.all(np.abs(dx * dx_scale - exact) <= 0.5 * dx_scale * (1 + 2.0**-20) + 1e-12), name



# ---- BatchNorm2d ---------------------------------------------------------------------------

BN_LR, BN_WD = 0.0625, 0.015625  # exact in the emulated boards' 30-bit floats
# No one-value-per-channel case: training on it raises, as in PyTorch (test_hardening_layers).
BN_CASES = [("c5_batch2", (2, 4, 3, 5)), ("c20_two_blocks", (1, 3, 5, 20))]


def test_int8_batchnorm_matches_the_float32_sequence_bit_for_bit(target):
    rng = np.random.default_rng(56)
    script = DeviceScript()
    cases = []
    for name, shape in BN_CASES:
        c = shape[-1]
        x = rng.integers(-128, 128, shape).astype(np.int8)
        dy = rng.integers(-127, 128, shape).astype(np.int8)
        gamma = rng.uniform(-1.5, 1.5, c).astype(np.float32)
        beta = rng.uniform(-0.5, 0.5, c).astype(np.float32)
        script.add(f"bn = mt.BatchNorm2d({c}, momentum=0.25, dtype=mt.int8)")
        script.add(f"bn.weight.copy_from({tensor_expr(gamma)})")
        script.add(f"bn.bias.copy_from({tensor_expr(beta)})")
        script.add(f"x = {s8_expr(x, X_SCALE, X_ZP)}")
        emit_int8_pass(script, name, "bn", "x", shape, s8_expr(dy, DY_SCALE), shape,
                       f", mt.SGD(bn, lr={BN_LR}, weight_decay={BN_WD})")
        script.emit(f"{name}.gamma", "bn.weight", (c,))
        script.emit(f"{name}.beta", "bn.bias", (c,))
        script.emit(f"{name}.rm", "bn.running_mean", (c,))
        script.emit(f"{name}.rv", "bn.running_var", (c,))
        script.emit(f"{name}.eval", "bn.predict(x)", shape, "int8")
        cases.append((name, x, dy, gamma, beta))
    results = script.run(target)
    for name, x, dy, gamma, beta in cases:
        c = x.shape[-1]
        kw = dict(eps=1e-5, momentum=0.25)
        st = Q.batchnorm_s8_prepare(x, X_SCALE, X_ZP, gamma, beta, True, np.zeros(c), np.ones(c), **kw)
        ys, yz = Q.qparams_asymmetric(*st.y_range)  # the first pass's own range
        y = Q.batchnorm_s8_forward(x, X_SCALE, X_ZP, gamma, beta, st, ys, yz)
        assert np.array_equal(results[f"{name}.y"], y), f"{name}: forward differs"
        got_s, got_z = results[f"{name}.yq"]
        assert abs(got_s - ys) <= SCALE_RTOL * ys and got_z == yz, (name, got_s, got_z, ys, yz)
        assert np.array_equal(results[f"{name}.rm"], st.running_mean), f"{name}: running mean"
        assert np.array_equal(results[f"{name}.rv"], st.running_var), f"{name}: running variance"
        _, absmax, dgamma, dbeta = Q.batchnorm_s8_backward(x, X_SCALE, X_ZP, dy, DY_SCALE, gamma, st, None)
        dxs = Q.qparams_symmetric(absmax).scale
        dx, _, _, _ = Q.batchnorm_s8_backward(x, X_SCALE, X_ZP, dy, DY_SCALE, gamma, st, dxs)
        assert np.array_equal(results[f"{name}.dx"], dx), f"{name}: input gradient differs"
        got_s, got_z = results[f"{name}.dxq"]
        assert abs(got_s - dxs) <= SCALE_RTOL * dxs and got_z == 0, (name, got_s, dxs)
        # Plain SGD with decoupled weight decay, as the int8 layers (float32, in this order).
        keep, step = np.float32(1) - np.float32(BN_LR) * np.float32(BN_WD), np.float32(-BN_LR)
        assert np.array_equal(results[f"{name}.gamma"], gamma * keep + step * dgamma), f"{name}: gamma update"
        assert np.array_equal(results[f"{name}.beta"], beta * keep + step * dbeta), f"{name}: beta update"
        # predict(): the running statistics and the updated parameters, quantized with the
        # range tracked so far (one observation: the training pass's).
        g1, b1 = results[f"{name}.gamma"], results[f"{name}.beta"]
        ev = Q.batchnorm_s8_prepare(x, X_SCALE, X_ZP, g1, b1, False, st.running_mean, st.running_var, **kw)
        y_eval = Q.batchnorm_s8_forward(x, X_SCALE, X_ZP, g1, b1, ev, ys, yz)
        assert np.array_equal(results[f"{name}.eval"], y_eval), f"{name}: predict differs"

        # Against float64 (F.batchnorm on the dequantized input): the float32 sequence errs
        # by a few ulps before the one rounding, so half a step plus 2**-16 of the output's
        # magnitude; the same for the input gradient.
        if x.size // c > 1:
            xr = Q.dequantize(x, X_SCALE, X_ZP).astype(np.float64).reshape(-1, c)
            mu, var = xr.mean(axis=0), xr.var(axis=0)
            ref = (xr - mu) / np.sqrt(var + 1e-5) * gamma + beta
            got = Q.dequantize(y, ys, yz).astype(np.float64).reshape(-1, c)
            assert np.all(np.abs(got - ref) <= 0.5 * ys + 2.0**-16 * (np.abs(ref) + 1)), f"{name}: forward bound"
            g = dy.astype(np.float64).reshape(-1, c) * DY_SCALE
            xhat = (xr - mu) / np.sqrt(var + 1e-5)
            dx_ref = gamma / np.sqrt(var + 1e-5) * (g - g.mean(axis=0) - xhat * (g * xhat).mean(axis=0))
            got = dx.astype(np.float64).reshape(-1, c) * dxs
            assert np.all(np.abs(got - dx_ref) <= 0.5 * dxs + 2.0**-16 * (np.abs(dx_ref) + dxs)), f"{name}: dx bound"


def test_int8_layers_refuse_mixed_dtypes_clearly(target):
    cases = [
        ("mt.AvgPool2d(2, dtype=mt.int8).forward(mt.zeros((1, 2, 2, 1)))", "ValueError",
         "AvgPool2d has dtype int8 but its input is float32"),
        ("mt.AvgPool2d(2).forward(mt.zeros((1, 1, 1, 1), dtype=mt.int8))", "ValueError", "kernel is larger"),
        ("p8.backward(mt.zeros((1, 1, 1, 1)))", "TypeError", "int8"),
        # the two input errors of an int8 sum would meet in float32
        ("mt.Residual(mt.Convert(mt.int8), shortcut=mt.Convert(mt.int8)).forward(mt.zeros((1, 2, 2, 1)))",
         "ValueError", "int8 branches need an int8 input, not float32"),
        ("mt.Residual(mt.Sequential(mt.Convert(mt.float32), mt.ReLU()), shortcut=mt.Convert(mt.float32))"
         ".forward(mt.zeros((1, 2, 2, 1), dtype=mt.int8))", "ValueError", "int8 branches need an int8 input"),
        ("r8.backward(mt.zeros((1, 2, 2, 1)))", "TypeError", "dy must be int8"),
        ("mt.Softmax(dtype=mt.int8).forward(mt.zeros((1, 2)))", "ValueError", "Softmax has dtype int8"),
        ("mt.Softmax().forward(mt.zeros((1, 16385), dtype=mt.int8))", "ValueError", "16384"),
        ("s8.backward(mt.zeros((1, 3)))", "TypeError", "dy must be int8"),
        ("mt.BatchNorm2d(2, dtype=mt.int8).forward(mt.zeros((1, 2, 2, 2)))", "ValueError",
         "BatchNorm2d has dtype int8 but its input is float32"),
        ("mt.BatchNorm2d(2).forward(mt.zeros((1, 2, 2, 2), dtype=mt.int8))", "ValueError",
         "BatchNorm2d has dtype float32 but its input is int8"),
        ("mt.BatchNorm2d(3, dtype=mt.int8).forward(mt.zeros((1, 2, 2, 2), dtype=mt.int8))", "ValueError",
         "expects 3 channels"),
        ("mt.Adam(mt.BatchNorm2d(2, dtype=mt.int8))", "ValueError", "without momentum"),
        ("b8.backward(mt.zeros((1, 2, 2, 2), dtype=mt.int8))", "ValueError", "backward(dy, opt)"),
        ("mt.Add().forward(mt.zeros((2,), dtype=mt.int8), mt.zeros((2,)))", "ValueError", "dtypes int8 and float32"),
        ("mt.Add().forward(mt.zeros((2,), dtype=mt.int8), mt.zeros((3,), dtype=mt.int8))", "ValueError", "shapes"),
    ]
    setup = ["import mcutrain as mt", "p8 = mt.AvgPool2d(2)", "p8.forward(mt.zeros((1, 2, 2, 1), dtype=mt.int8))",
             "r8 = mt.Residual(mt.ReLU())", "r8.forward(mt.zeros((1, 2, 2, 1), dtype=mt.int8))",
             "s8 = mt.Softmax()", "s8.forward(mt.zeros((1, 3), dtype=mt.int8))",
             "b8 = mt.BatchNorm2d(2, dtype=mt.int8)", "b8.forward(mt.zeros((1, 2, 2, 2), dtype=mt.int8))"]
    out = assert_raises_clearly(target, cases, setup, after="p8.output.dtype")
    assert out[-1] == "int8"  # the board still works


S8_RESNET = """mt.Sequential(mt.Convert(mt.int8), mt.Conv2d(1, 8, 3, padding=1, dtype=mt.int8),
    mt.BatchNorm2d(8, dtype=mt.int8), mt.ReLU(), mt.AvgPool2d(2),
    mt.Residual(mt.Sequential(mt.Conv2d(8, 8, 3, padding=1, dtype=mt.int8), mt.ReLU())),
    mt.Conv2d(8, 8, 3, padding=1, dtype=mt.int8), mt.ReLU6(), mt.GlobalAvgPool(), mt.Linear(8, 2, dtype=mt.int8),
    mt.Convert(mt.float32))"""


def test_int8_residual_cnn_with_batchnorm_and_avgpool_learns_and_its_train_step_allocates_nothing(target):
    rng = np.random.default_rng(54)
    n = 48
    x, labels = bars(rng, n)
    out = run_on(target, f"""
import gc, mcutrain as mt
mt.seed(1)
model = {S8_RESNET}
opt = mt.SGD(model, lr=0.02, standardize=True, rounding='stochastic')
data = {tensor_expr(x)}
labels = {labels_expr(labels)}
losses = []
for epoch in range(10):
    for b in range(0, {n}, 4):
        x = mt.frombuffer(memoryview(data)[b * 64:(b + 4) * 64], (4, 8, 8, 1))
        losses.append(model.train_step(x, labels[b:b + 4], mt.cross_entropy, opt))
print('loss', sum(losses[:12]) / 12, sum(losses[-12:]) / 12)
print('accuracy', model.evaluate(mt.frombuffer(memoryview(data)[:16 * 64], (16, 8, 8, 1)), labels[:16])[1])
x = mt.frombuffer(memoryview(data)[:256], (4, 8, 8, 1))
y = labels[:4]
loss = mt.cross_entropy
model.train_step(x, y, loss, opt)
{ALLOCATION_CHECK}
print('dtypes', model[2].output.dtype, model[4].output.dtype, model[5].output.dtype)
""", timeout=300)
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    first, last = map(float, lines["loss"].split())
    # It learns (from ln 2 ~ 0.69 to under 0.1 on unix) and tells the bars apart.
    assert last < 0.5 * first, (first, last)
    assert float(lines["accuracy"]) >= 0.9, lines["accuracy"]
    grown = int(lines["grown"])
    assert grown <= (10 * 32 if target.name == "unix" else 0), grown  # as test_dtypes_device.py
    assert lines["dtypes"].split() == ["int8", "int8", "int8"]


def test_int8_input_error_scale_follows_each_samples_output_error_scale(target):
    # Errors grow and shrink with each sample's loss by orders of magnitude; the tracked
    # input-error range is relative to dy's scale, so a sample whose errors are a thousand
    # times smaller gets the same integers at a thousandth of the scale instead of rounding
    # to zeros (the Fashion-MNIST CNN in int8 lost 2.6 points that way).
    rng = np.random.default_rng(61)
    cases = [("linear", "mt.Linear(6, 4, dtype=mt.int8)", (3, 6), (3, 4)),
             ("conv", "mt.Conv2d(3, 4, 3, padding=1, dtype=mt.int8)", (2, 5, 5, 3), (2, 5, 5, 4))]
    script = DeviceScript()
    for name, layer, x_shape, y_shape in cases:
        x = rng.integers(-128, 128, x_shape).astype(np.int8)
        dy = rng.integers(-127, 128, y_shape).astype(np.int8)
        script.add(f"layer = {layer}")
        script.add("layer.trainable = False  # the weights stay: only the errors differ")
        script.add(f"layer.forward({s8_expr(x, X_SCALE, X_ZP)})")
        for i, scale in enumerate((1.0, 1e-3, 1e-3)):
            script.add(f"dx = layer.backward({s8_expr(dy, scale)})")
            script.emit(f"{name}.dx{i}", "dx", x_shape, "int8")
            script.emit(f"{name}.s{i}", "mt.Tensor([dx.scale])", (1,))
    results = script.run(target)
    for name, *_ in cases:
        dx0, s0 = results[f"{name}.dx0"].astype(int), results[f"{name}.s0"][0]
        assert np.abs(dx0).max() >= 64, f"{name}: the first error should span the int8 range"
        for i in (1, 2):
            # The same integers, up to a tie the requantization multiplier's last bit decides.
            diff = np.abs(results[f"{name}.dx{i}"].astype(int) - dx0)
            assert diff.max() <= 1 and np.count_nonzero(diff) <= dx0.size // 20, (name, i, diff.max())
            assert abs(results[f"{name}.s{i}"][0] - 1e-3 * s0) <= 1e-5 * s0, (name, i)
