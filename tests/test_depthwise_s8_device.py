"""int8 depthwise Conv2d layers on the device (unix, qemu-m4f: the SMLAD path, qemu-rv32:
the portable C): one training step (forward, input gradient, plain-SGD update of weights,
scales and bias) bit for bit against the integer reference, on shapes that stress
depthwise_s8.c's channel planes (channel counts not a multiple of 4, strides, paddings,
kernels wider than the image, batches, several bands of rows) and extreme zero points and
weights.

Scales reach the device as Python literals the boards' 30-bit floats hold exactly.
"""

from __future__ import annotations

import numpy as np
from device_arrays import DeviceScript, tensor_expr
from mcutrain.reference import quantized as Q

X_SCALE = 0.046875
DY_SCALE = 0.0078125
LR, WD = 0.25, 0.015625

# (name, x shape, kernel, stride, padding, x zero point, weights: "random" or "pm127")
CASES = [
    ("c1_3x3_pad1_zp_min", (1, 5, 6, 1), 3, 1, 1, -128, "pm127"),
    ("c3_3x3_stride2_batch3", (3, 7, 8, 3), 3, 2, 1, 5, "random"),
    ("c5_5x3_pad2_zp_max", (1, 9, 6, 5), (5, 3), 1, (2, 1), 127, "pm127"),
    ("c7_1x1", (2, 4, 5, 7), 1, 1, 0, -3, "random"),
    ("c4_3x3_pad0", (1, 6, 7, 4), 3, 1, 0, 5, "random"),
    ("c6_3x3_pad2_tiny_zp_max", (1, 2, 2, 6), 3, 1, 2, 127, "pm127"),
    ("c9_5x3_image_smaller_than_kernel", (3, 2, 2, 9), (5, 3), 1, (2, 1), -128, "random"),
    ("c5_3x3_stride2_pad0_batch3", (3, 9, 7, 5), 3, 2, 0, 17, "random"),
    ("c32_kws_map", (1, 25, 5, 32), 3, 1, 1, -128, "pm127"),
]


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _case(rng, x_shape, kernel, zp, wkind):
    c = x_shape[3]
    kh, kw = _pair(kernel)
    x = rng.integers(-128, 128, x_shape)
    x[rng.random(x_shape) < 0.3] = -128 if zp > 0 else 127   # |x - zp| up to 255
    w = rng.choice([-127, 127], (c, kh, kw, 1)) if wkind == "pm127" else rng.integers(-127, 128, (c, kh, kw, 1))
    ws = rng.uniform(0.004, 0.02, c).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    return x.astype(np.int8), w.astype(np.int8), ws, b


def _reference(x, w, ws, b, dy, zp, stride, padding):
    """The device's step: two-pass forward (range, then output), two-pass input gradient
    (range, then dx), then the plain-SGD update with nearest rounding."""
    groups = x.shape[3]
    bias_q = Q.quantize_bias(b, X_SCALE, ws)
    q = Q.S8Quant(X_SCALE, zp)
    _, (lo, hi) = Q.conv2d_s8_forward(x, w, ws, bias_q, q, stride, padding, groups)
    q.y_scale, q.y_zero_point = Q.qparams_asymmetric(lo, hi)
    y, _ = Q.conv2d_s8_forward(x, w, ws, bias_q, q, stride, padding, groups)
    q.dy_scale, q.dx_scale = DY_SCALE, 1.0
    _, absmax = Q.conv2d_s8_grad_input(x.shape, w, ws, dy, q, stride, padding, groups)
    q.dx_scale = Q.qparams_symmetric(absmax).scale
    dx, _ = Q.conv2d_s8_grad_input(x.shape, w, ws, dy, q, stride, padding, groups)
    upd = Q.conv2d_s8_update(x, dy, w, ws, bias_q, q, Q.S8Update(lr=LR, weight_decay=WD, eps=1e-8, rescale_below=0.5),
                             stride, padding, groups)
    return y, dx, upd


def test_int8_depthwise_training_step_matches_the_integer_reference_bit_for_bit(target):
    rng = np.random.default_rng(61)
    script = DeviceScript()
    cases = []
    for name, x_shape, kernel, stride, padding, zp, wkind in CASES:
        x, w, ws, b = _case(rng, x_shape, kernel, zp, wkind)
        c = x_shape[3]
        bias_q = Q.quantize_bias(b, X_SCALE, ws)
        y_shape = Q.conv2d_s8_forward(x, w, ws, bias_q, Q.S8Quant(X_SCALE, zp), _pair(stride), _pair(padding),
                                      c)[0].shape
        dy = rng.integers(-127, 128, y_shape).astype(np.int8)
        dy[rng.random(y_shape) < 0.3] = 127
        script.add(f"layer = mt.Conv2d({c}, {c}, {kernel!r}, stride={stride!r}, padding={padding!r}, groups={c}, "
                   "dtype=mt.int8)")
        script.add(f"layer.weight.copy_from({tensor_expr(w, 'int8')})")
        script.add(f"layer.weight_scale.copy_from({tensor_expr(ws)})")
        script.add(f"layer.bias.copy_from({tensor_expr(b)})")
        script.add(f"x = mt.Tensor(bytes.fromhex('{x.tobytes().hex()}'), {x.shape}, dtype=mt.int8, "
                   f"scale={X_SCALE}, zero_point={zp})")
        script.add(f"dy = mt.Tensor(bytes.fromhex('{dy.tobytes().hex()}'), {dy.shape}, dtype=mt.int8, "
                   f"scale={DY_SCALE})")
        script.emit(f"{name}.y", "layer.forward(x)", y_shape, "int8")
        script.add(f"opt = mt.SGD(layer, lr={LR}, weight_decay={WD}, standardize=False, rounding='nearest')")
        script.emit(f"{name}.dx", "layer.backward(dy, opt)", x.shape, "int8")
        script.emit(f"{name}.w", "layer.weight", w.shape, "int8")
        script.emit(f"{name}.ws", "layer.weight_scale", ws.shape)
        script.emit(f"{name}.b", "layer.bias", b.shape)
        script.add("layer = opt = x = dy = None")
        cases.append((name, x, w, ws, b, dy, zp, _pair(stride), _pair(padding)))
    results = script.run(target)
    for name, x, w, ws, b, dy, zp, stride, padding in cases:
        y, dx, upd = _reference(x, w, ws, b, dy, zp, stride, padding)
        assert np.array_equal(results[f"{name}.y"], y), f"{name}: forward differs from the integer reference"
        assert np.array_equal(results[f"{name}.dx"], dx), f"{name}: input gradient differs"
        assert np.array_equal(results[f"{name}.w"], upd.w), f"{name}: updated weights differ"
        assert np.array_equal(results[f"{name}.ws"], upd.w_scale), f"{name}: updated weight scales differ"
        # The bias's step comes from the sum of dy, which the update kernel forms itself.
        expected_b = (upd.bias.astype(np.float32) * (np.float32(X_SCALE) * upd.w_scale)).astype(np.float32)
        assert np.array_equal(results[f"{name}.b"], expected_b), f"{name}: updated bias differs"
        assert not np.array_equal(upd.w, w), f"{name}: the step changed nothing"
