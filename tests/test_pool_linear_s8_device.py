"""int8 MaxPool2d, AvgPool2d and Linear on the device (unix, qemu-m4f, qemu-rv32) against the
integer reference bit for bit, over shapes that reach every path of pool_s8.c and linear_s8.c:
channels 1..7 (whole four-channel words and tails; on qemu-m4f the SIMD paths, elsewhere the
portable ones), windows (1,1), (2,2), (3,3), (5,1) with strides below, at and above the kernel
and padding, ties in max windows, batches 1..5, Linear sizes 1, 3, 17, 800, and zero points and
values at the int8 limits."""

from __future__ import annotations

import numpy as np
from device_arrays import DeviceScript, tensor_expr
from mcutrain.reference import functional as F
from mcutrain.reference import quantized as Q

X_SCALE = 0.046875
DY_SCALE = 0.0078125

# (x shape, kernel, stride, padding)
POOLS = [((1, 1, 1, 1), (1, 1), (1, 1), (0, 0)), ((2, 3, 5, 7), (1, 1), (2, 1), (0, 0)),
         ((1, 8, 8, 8), (2, 2), (2, 2), (0, 0)), ((3, 5, 7, 3), (2, 2), (2, 2), (0, 0)),
         ((5, 6, 6, 5), (2, 2), (2, 2), (1, 1)), ((2, 5, 5, 6), (2, 2), (3, 3), (0, 0)),
         ((1, 6, 5, 2), (2, 2), (1, 1), (1, 0)), ((4, 7, 7, 7), (3, 3), (3, 3), (0, 0)),
         ((2, 7, 6, 4), (3, 3), (2, 2), (1, 1)), ((1, 5, 5, 1), (3, 3), (1, 1), (1, 1)),
         ((1, 25, 5, 32), (5, 1), (5, 1), (0, 0)), ((3, 12, 3, 5), (5, 1), (5, 1), (2, 0)),
         ((2, 11, 4, 8), (5, 1), (2, 1), (0, 0)), ((1, 9, 2, 6), (5, 1), (6, 1), (2, 0))]

LEVELS = np.array([-128, -127, -1, 0, 1, 126, 127])  # few levels: many ties, the limits


def s8_expr(a: np.ndarray, scale: float, zero_point: int = 0) -> str:
    return (f"mt.Tensor(bytes.fromhex('{a.astype(np.int8).tobytes().hex()}'), {a.shape}, dtype=mt.int8, "
            f"scale={scale}, zero_point={zero_point})")


def out_shape(shape, kernel, stride, padding):
    oh = (shape[1] + 2 * padding[0] - kernel[0]) // stride[0] + 1
    ow = (shape[2] + 2 * padding[1] - kernel[1]) // stride[1] + 1
    return (shape[0], oh, ow, shape[3])


def test_int8_pools_match_the_integer_reference_on_odd_shapes(target):
    rng = np.random.default_rng(71)
    script = DeviceScript()
    cases = []
    for i, (shape, kernel, stride, padding) in enumerate(POOLS):
        y_shape = out_shape(shape, kernel, stride, padding)
        zp = (-128, 127, 0)[i % 3]
        x = rng.choice(LEVELS, shape).astype(np.int8)
        dy = rng.choice(LEVELS, y_shape).astype(np.int8)
        for kind in ("MaxPool2d", "AvgPool2d"):
            name = f"{kind}{i}"
            script.add(f"layer = mt.{kind}({kernel!r}, stride={stride!r}, padding={padding!r})")
            script.emit(f"{name}.y", f"layer.forward({s8_expr(x, X_SCALE, zp)})", y_shape, "int8")
            script.emit(f"{name}.dx", f"layer.backward({s8_expr(dy, DY_SCALE)})", shape, "int8")
        cases.append((i, shape, kernel, stride, padding, zp, x, dy))
    results = script.run(target, timeout=300)
    for i, shape, kernel, stride, padding, zp, x, dy in cases:
        what = f"case {i}: {shape} kernel {kernel} stride {stride} padding {padding}"
        assert np.array_equal(results[f"MaxPool2d{i}.y"], F.maxpool2d_forward(x, kernel, stride, padding)), what
        # Errors of overlapping windows add up, then saturate once at +-127 (-128 too).
        dx = np.clip(F.maxpool2d_backward(x, dy, kernel, stride, padding), -127, 127)
        assert np.array_equal(results[f"MaxPool2d{i}.dx"], dx), what
        assert np.array_equal(results[f"AvgPool2d{i}.y"], Q.avgpool2d_s8_forward(x, zp, kernel, stride, padding)), what
        dx, _ = Q.avgpool2d_s8_grad_input(shape, dy, DY_SCALE, kernel, stride, padding)
        assert np.array_equal(results[f"AvgPool2d{i}.dx"], dx), what


# (batch, in, out): sizes off the four-value words and the row pairs, the KWS head, batches 1..5
LINEARS = [(1, 1, 1), (2, 3, 17), (5, 17, 3), (3, 800, 12), (1, 800, 12), (4, 256, 5), (1, 3, 1),
           (6, 9, 7), (8, 33, 4), (7, 5, 13)]  # batches over the forward's groups of four samples


def test_int8_linear_gradients_and_update_match_the_integer_reference_on_odd_sizes(target):
    rng = np.random.default_rng(72)
    lr, wd = 0.25, 0.015625  # exact in the boards' floats
    script = DeviceScript()
    cases = []
    for i, (batch, n_in, n_out) in enumerate(LINEARS):
        zp = (-128, 127)[i % 2]
        x = rng.choice(LEVELS, (batch, n_in)).astype(np.int8)
        mix = rng.random(x.shape) < 0.5
        x[mix] = rng.integers(-128, 128, x.shape)[mix]
        w = rng.choice(np.array([-127, -1, 0, 1, 127]), (n_out, n_in)).astype(np.int8)
        ws = rng.uniform(0.004, 0.02, n_out).astype(np.float32)
        b = rng.uniform(-0.5, 0.5, n_out).astype(np.float32)
        dy = rng.choice(np.array([-127, -127, 0, 0, 3, 127]), (batch, n_out)).astype(np.int8)
        name = f"lin{i}"
        script.add(f"layer = mt.Linear({n_in}, {n_out}, dtype=mt.int8)")
        script.add(f"layer.weight.copy_from({tensor_expr(w, 'int8')})")
        script.add(f"layer.weight_scale.copy_from({tensor_expr(ws)})")
        script.add(f"layer.bias.copy_from({tensor_expr(b)})")
        script.emit(f"{name}.y", f"layer.forward({s8_expr(x, X_SCALE, zp)})", (batch, n_out), "int8")
        script.add(f"opt = mt.SGD(layer, lr={lr}, weight_decay={wd}, standardize=False, rounding='nearest')")
        script.emit(f"{name}.dx", f"layer.backward({s8_expr(dy, DY_SCALE)}, opt)", x.shape, "int8")
        script.emit(f"{name}.w", "layer.weight", w.shape, "int8")
        script.emit(f"{name}.ws", "layer.weight_scale", ws.shape)
        cases.append((name, zp, x, w, ws, b, dy))
    results = script.run(target, timeout=300)
    for name, zp, x, w, ws, b, dy in cases:
        # The device's two passes: the forward's range, then the output; the input gradient's
        # range, then dx.
        bias_q = Q.quantize_bias(b, X_SCALE, ws)
        q = Q.S8Quant(X_SCALE, zp)
        _, (lo, hi) = Q.linear_s8_forward(x, w, ws, bias_q, q)
        q.y_scale, q.y_zero_point = Q.qparams_asymmetric(lo, hi)
        y, _ = Q.linear_s8_forward(x, w, ws, bias_q, q)
        assert np.array_equal(results[f"{name}.y"], y), f"{name}: forward differs"
        q.dy_scale, q.dx_scale = DY_SCALE, 1.0
        _, absmax = Q.linear_s8_grad_input(w, ws, dy, q)
        q.dx_scale = Q.qparams_symmetric(absmax).scale
        dx, _ = Q.linear_s8_grad_input(w, ws, dy, q)
        assert np.array_equal(results[f"{name}.dx"], dx), f"{name}: input gradient differs"
        r = Q.linear_s8_update(x, dy, w, ws, bias_q, q, Q.S8Update(lr=lr, weight_decay=wd, sigma_w=0.0, sigma_b=0.0,
                                                                   eps=1e-8, rescale_below=0.5))
        assert np.array_equal(results[f"{name}.w"], r.w), f"{name}: updated weights differ"
        assert np.array_equal(results[f"{name}.ws"], r.w_scale), f"{name}: updated weight scales differ"
