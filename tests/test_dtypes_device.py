"""Per-layer dtypes on the device (unix, qemu-m4f, qemu-rv32): float16 layers against the numpy
reference and float16 training against float32; int8 fully quantized layers bit for bit against
the integer reference (mcutrain.reference.quantized) and within bounds of float32; memory,
Convert, saving, and errors for mixed dtypes and bad quantization parameters.

float16 inputs, weights and output gradients are rounded to float16 on the host first, so the
float64 reference (mcutrain.reference) sees exactly the values the device stores.

Error bounds (as in tests/test_kernels_f16.py). A float16 layer sums in fp32 and rounds each
output to fp16 once, so an fp16 output is within U16 = 2**-11 of its own size (plus 2**-25, half
the smallest subnormal) of the fp32 result, which is itself within gamma_n (n rounded
operations, u = 2**-24) of the exact one relative to the sum of the terms' magnitudes. Parameter
gradients (.grad) stay fp32 and meet the fp32 bound of tests/device_arrays.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from device_arrays import ALLOCATION_CHECK, DeviceScript, assert_close_bilinear, bars, labels_expr, tensor_expr
from device_errors import assert_raises_clearly
from mcutrain.reference import functional as F
from mcutrain.reference import nn as R
from mcutrain.reference import quantized as Q
from mcutrain.runner import run_on
from random_layers import case_count, random_conv2d, random_conv2d_arrays

pytestmark = pytest.mark.fpu_kernels  # also on qemu-rv32f (conftest.py)

U16 = 2.0**-11  # fp16 unit roundoff
U32 = 2.0**-24  # fp32 unit roundoff
TINY = 2.0**-25  # half the smallest fp16 subnormal


def gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


def f16(a) -> np.ndarray:
    """The values float16 storage keeps, as float64."""
    return np.asarray(a, dtype=np.float16).astype(np.float64)


def assert_f16_within(got, expected, magnitude, terms, what, spacings=1):
    """got (fp16) is an fp32 result of `terms` rounded operations, rounded to fp16 once
    (spacings=1); spacings=2 allows one more fp16 rounding (an fp16 input to an fp32 step)."""
    got, expected, magnitude = (np.asarray(a, dtype=np.float64) for a in (got, expected, magnitude))
    bound = spacings * (U16 * np.abs(expected) + TINY) + (1 + spacings * U16) * gamma(terms) * np.abs(magnitude)
    err = np.abs(got - expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.ndim else ()
    assert np.all(err <= bound), (
        f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
        f"(got {got[worst]!r}, expected {expected[worst]!r})")


# (name, batch, h, w, in_c, out_c, kernel, stride, padding, groups, bias): odd shapes
CONV2D_CASES = [
    ("square_3x3_pad1", 1, 5, 5, 3, 4, (3, 3), (1, 1), (1, 1), 1, True),
    ("non_square_stride2_batch3", 3, 8, 6, 5, 7, (3, 2), (2, 2), (1, 0), 1, True),
    ("grouped_stride2_pad2", 2, 9, 7, 4, 6, (3, 3), (2, 1), (2, 2), 2, False),
    ("depthwise_stride2_batch3", 3, 8, 8, 5, 5, (3, 3), (2, 2), (1, 1), 5, True),
    ("pointwise", 2, 4, 5, 7, 5, (1, 1), (1, 1), (0, 0), 1, True),
]
LINEAR_CASES = [("batch1", 1, 7, 5, True), ("batch3", 3, 64, 10, True), ("no_bias", 2, 9, 13, False)]


def _layer_case(script, name, layer_expr, x, w, b, dy):
    script.add(f"layer = {layer_expr}")
    script.add(f"layer.weight.copy_from({tensor_expr(w, 'float16')})")
    if b is not None:
        script.add(f"layer.bias.copy_from({tensor_expr(b, 'float16')})")
    script.add(f"x = {tensor_expr(x, 'float16')}")
    script.emit(f"{name}.y", "layer.forward(x)", dy.shape, "float16")
    script.emit(f"{name}.dx", f"layer.backward({tensor_expr(dy, 'float16')})", x.shape, "float16")
    script.emit(f"{name}.dw", "layer.weight.grad", w.shape)
    if b is not None:
        script.emit(f"{name}.db", "layer.bias.grad", b.shape)


def test_float16_conv2d_forward_and_gradients_match_reference(target):
    rng = np.random.default_rng(31)
    script = DeviceScript()
    cases = []
    for name, n, h, wd, cin, cout, k, s, p, g, bias in CONV2D_CASES:
        x = f16(rng.standard_normal((n, h, wd, cin)))
        w = f16(rng.standard_normal((cout, k[0], k[1], cin // g)))
        b = f16(rng.standard_normal(cout)) if bias else None
        oh, ow = (h + 2 * p[0] - k[0]) // s[0] + 1, (wd + 2 * p[1] - k[1]) // s[1] + 1
        dy = f16(rng.standard_normal((n, oh, ow, cout)))
        _layer_case(script, name, f"mt.Conv2d({cin}, {cout}, {k}, stride={s}, padding={p}, groups={g}, "
                    f"bias={bias}, dtype=mt.float16)", x, w, b, dy)
        cases.append((name, x, w, b, dy, s, p, g))
    results = script.run(target)
    for name, x, w, b, dy, s, p, g in cases:
        _check_f16_conv(results, name, x, w, b, dy, s, p, g)


def _check_f16_conv(results, name, x, w, b, dy, s, p, g, what=None):
    """A float16 Conv2d's output and input gradient (float16) and its parameter gradients
    (float32) within their rounding bounds of the float64 reference (`what` names it)."""
    what = what or name
    ax, aw, ab = np.abs(x), np.abs(w), None if b is None else np.abs(b)
    y = F.conv2d_forward(x, w, b, s, p, g)
    assert_f16_within(results[f"{name}.y"], y, F.conv2d_forward(ax, aw, ab, s, p, g), w[0].size + 1,
                      f"{what} forward")
    dx, dw, db = F.conv2d_backward(x, w, dy, s, p, g)
    mdx, mdw, mdb = F.conv2d_backward(ax, aw, np.abs(dy), s, p, g)
    assert_f16_within(results[f"{name}.dx"], dx, mdx, w.shape[0] * w.shape[1] * w.shape[2],
                      f"{what} grad_input")
    assert_close_bilinear(results[f"{name}.dw"], dw, mdw, dy.size // w.shape[0], f"{what} grad_weight")
    if b is not None:
        assert_close_bilinear(results[f"{name}.db"], db, mdb, dy.size // w.shape[0], f"{what} grad_bias")


# Random shapes (random_layers.random_conv2d): cases per target and the size cap of one.
RANDOM_CASES, RANDOM_BOARD_CASES, RANDOM_MAX_VALUES = 100, 8, 2500


def test_float16_conv2d_random_shapes_match_reference(target):
    rng = np.random.default_rng(13)
    for i in range(case_count(target, RANDOM_CASES, RANDOM_BOARD_CASES)):
        config = random_conv2d(rng, RANDOM_MAX_VALUES)
        _, _, _, cin, cout, k, s, p, g, bias = config
        x, w, b, dy = random_conv2d_arrays(rng, config, f16)
        script = DeviceScript()
        layer = f"mt.Conv2d({cin}, {cout}, {k}, stride={s}, padding={p}, groups={g}, bias={bias}, dtype=mt.float16)"
        _layer_case(script, f"c{i}", layer, x, w, b, dy)
        _check_f16_conv(script.run(target), f"c{i}", x, w, b, dy, s, p, g, f"{layer} x{x.shape}")


def test_float16_conv1d_and_linear_match_reference(target):
    rng = np.random.default_rng(32)
    script = DeviceScript()
    conv1d = ("conv1d_k5_stride2_pad2", 2, 13, 5, 6, 5, 2, 2)
    name, n, length, cin, cout, k, s, p = conv1d
    cx = f16(rng.standard_normal((n, length, cin)))
    cw = f16(rng.standard_normal((cout, k, cin)))
    cb = f16(rng.standard_normal(cout))
    cdy = f16(rng.standard_normal((n, (length + 2 * p - k) // s + 1, cout)))
    _layer_case(script, name, f"mt.Conv1d({cin}, {cout}, {k}, stride={s}, padding={p}, dtype=mt.float16)",
                cx, cw, cb, cdy)
    cases = []
    for lname, n, fin, fout, bias in LINEAR_CASES:
        x = f16(rng.standard_normal((n, fin)))
        w = f16(rng.standard_normal((fout, fin)))
        b = f16(rng.standard_normal(fout)) if bias else None
        dy = f16(rng.standard_normal((n, fout)))
        _layer_case(script, lname, f"mt.Linear({fin}, {fout}, bias={bias}, dtype=mt.float16)", x, w, b, dy)
        cases.append((lname, x, w, b, dy))
    results = script.run(target)

    y = F.conv1d_forward(cx, cw, cb, s, p)
    assert_f16_within(results[f"{name}.y"], y, F.conv1d_forward(np.abs(cx), np.abs(cw), np.abs(cb), s, p),
                      k * cin + 1, "conv1d forward")
    dx, dw, db = F.conv1d_backward(cx, cw, cdy, s, p)
    mdx, mdw, mdb = F.conv1d_backward(np.abs(cx), np.abs(cw), np.abs(cdy), s, p)
    assert_f16_within(results[f"{name}.dx"], dx, mdx, cout * k, "conv1d grad_input")
    assert_close_bilinear(results[f"{name}.dw"], dw, mdw, cdy.size // cout, "conv1d grad_weight")
    assert_close_bilinear(results[f"{name}.db"], db, mdb, cdy.size // cout, "conv1d grad_bias")
    for lname, x, w, b, dy in cases:
        ab = None if b is None else np.abs(b)
        assert_f16_within(results[f"{lname}.y"], F.linear_forward(x, w, b),
                          F.linear_forward(np.abs(x), np.abs(w), ab), x.shape[1] + 1, f"{lname} forward")
        dx, dw, db = F.linear_backward(x, w, dy)
        mdx, mdw, mdb = F.linear_backward(np.abs(x), np.abs(w), np.abs(dy))
        assert_f16_within(results[f"{lname}.dx"], dx, mdx, w.shape[0], f"{lname} grad_input")
        assert_close_bilinear(results[f"{lname}.dw"], dw, mdw, x.shape[0], f"{lname} grad_weight")
        if b is not None:
            assert_close_bilinear(results[f"{lname}.db"], db, mdb, x.shape[0], f"{lname} grad_bias")


def test_float16_pools_activations_and_batchnorm_match_reference(target):
    rng = np.random.default_rng(33)
    x4 = f16(rng.standard_normal((3, 7, 5, 3)) * 4)  # spans ReLU6's 0..6
    x3 = f16(rng.standard_normal((2, 9, 5)))
    xt = f16(np.round(rng.standard_normal((2, 6, 6, 3)) * 2))  # ties for max pooling
    logits = f16(rng.standard_normal((4, 6)) * 3)
    # (name, layer, input, forward, backward (x, y, dy) -> dx, terms of the fp32 sums); the
    # output goes into backward, so the reference backward runs on the device's fp16 output.
    cases = [
        ("relu", "mt.ReLU()", x4, F.relu_forward, lambda x, y, dy: F.relu_backward(y, dy), 1),
        ("relu6", "mt.ReLU6()", x4, F.relu6_forward, lambda x, y, dy: F.relu6_backward(y, dy), 1),
        ("softmax", "mt.Softmax()", logits, F.softmax_forward, lambda x, y, dy: F.softmax_backward(y, dy), 6),
        ("maxpool_2", "mt.MaxPool2d(2)", x4, lambda x: F.maxpool2d_forward(x, 2),
         lambda x, y, dy: F.maxpool2d_backward(x, dy, 2), 1),
        ("maxpool_3_s2_p1_ties", "mt.MaxPool2d(3, stride=2, padding=1)", xt,
         lambda x: F.maxpool2d_forward(x, 3, 2, 1), lambda x, y, dy: F.maxpool2d_backward(x, dy, 3, 2, 1), 4),
        ("avgpool_2x3", "mt.AvgPool2d((2, 3), stride=(1, 2), padding=(1, 1))", x4,
         lambda x: F.avgpool2d_forward(x, (2, 3), (1, 2), (1, 1)),
         lambda x, y, dy: F.avgpool2d_backward(x.shape, dy, (2, 3), (1, 2), (1, 1)), 6),
        ("global_avgpool_4d", "mt.GlobalAvgPool()", x4, F.global_avgpool_forward,
         lambda x, y, dy: F.global_avgpool_backward(x.shape, dy), 35),
        ("global_avgpool_3d", "mt.GlobalAvgPool()", x3, F.global_avgpool_forward,
         lambda x, y, dy: F.global_avgpool_backward(x.shape, dy), 9),
        ("flatten", "mt.Flatten()", x4, F.flatten_forward, lambda x, y, dy: F.flatten_backward(x.shape, dy), 1),
    ]
    script = DeviceScript()
    dys = {}
    for name, expr, x, fwd, _, _ in cases:
        y = fwd(x)
        dys[name] = dy = f16(rng.standard_normal(y.shape))
        script.add(f"layer = {expr}")
        script.add(f"x = {tensor_expr(x, 'float16')}")
        script.emit(f"{name}.y", "layer.forward(x)", y.shape, "float16")
        script.add(f"print('@{name}.dtype', layer.dtype, layer.output.dtype)")
        script.emit(f"{name}.dx", f"layer.backward({tensor_expr(dy, 'float16')})", x.shape, "float16")
    # BatchNorm2d: float16 activations and errors, float32 gamma, beta and statistics.
    xb = f16(rng.standard_normal((3, 4, 5, 6)) * 2 + 1)
    gamma_, beta = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    dyb = f16(rng.standard_normal(xb.shape))
    script.add("bn = mt.BatchNorm2d(6, dtype=mt.float16)")
    script.add(f"bn.weight.copy_from({tensor_expr(gamma_)})")
    script.add(f"bn.bias.copy_from({tensor_expr(beta)})")
    script.add(f"x = {tensor_expr(xb, 'float16')}")
    script.emit("bn.y", "bn.forward(x)", xb.shape, "float16")
    script.emit("bn.dx", f"bn.backward({tensor_expr(dyb, 'float16')})", xb.shape, "float16")
    script.emit("bn.dgamma", "bn.weight.grad", (6,))
    script.emit("bn.dbeta", "bn.bias.grad", (6,))
    script.emit("bn.running_var", "bn.running_var", (6,))
    script.add("print('@bn.dtypes', bn.weight.dtype, bn.running_mean.dtype, bn.output.dtype)")
    out = run_on(target, "\n".join(script.lines))
    results = _parse(out, script)
    for name, _, x, fwd, bwd, terms in cases:
        assert f"@{name}.dtype float16 float16" in out
        y = fwd(x)
        got_y = results[f"{name}.y"]
        if name.startswith(("relu", "maxpool", "flatten")):
            assert np.array_equal(got_y.astype(np.float64), y), f"{name}: copies and clamps are exact"
        else:
            # Softmax: an exp and a division per term besides the sum: a few more fp32 roundings.
            assert_f16_within(got_y, y, np.abs(y) if name == "softmax" else fwd(np.abs(x)), terms + 4,
                              f"{name} forward")
        dx = bwd(x, got_y.astype(np.float64), dys[name])
        if name == "softmax":
            mag = np.abs(got_y) * (np.abs(dys[name]) + (np.abs(dys[name]) * np.abs(got_y)).sum(-1, keepdims=True))
            assert_f16_within(results[f"{name}.dx"], dx, mag, terms + 2, f"{name} grad_input")
        elif name == "maxpool_3_s2_p1_ties":
            # Overlapping windows: a pixel in w windows adds w dy values with fp16 roundings.
            mag = F.maxpool2d_backward(x, np.abs(dys[name]), 3, 2, 1)
            assert np.all(np.abs(results[f"{name}.dx"] - dx) <= 4 * U16 * mag + TINY), f"{name} grad_input"
        else:
            mag = np.abs(bwd(x, got_y.astype(np.float64), np.abs(dys[name])))
            assert_f16_within(results[f"{name}.dx"], dx, mag, terms, f"{name} grad_input")
    assert "@bn.dtypes float32 float32 float16" in out
    rm, rv = np.zeros(6), np.ones(6)
    yb, cache = F.batchnorm2d_forward_train(xb, gamma_, beta, rm, rv)
    dxb, dgamma, dbeta = F.batchnorm2d_backward(dyb, cache)
    # As the fp32 test (statistics over 60 values: ~2e-5 relative), plus one fp16 rounding of
    # each output.
    for key, ref in (("y", yb), ("dx", dxb), ("dgamma", dgamma), ("dbeta", dbeta), ("running_var", rv)):
        got = results[f"bn.{key}"].astype(np.float64)
        tol = 2e-5 * max(1.0, float(np.abs(ref).max())) + (U16 * np.abs(ref) if key in ("y", "dx") else 0)
        assert np.all(np.abs(got - ref) <= tol), f"batchnorm {key}: max error {np.abs(got - ref).max():.3g}"


def _parse(out: str, script: DeviceScript) -> dict[str, np.ndarray]:
    from device_arrays import NUMPY_DTYPES
    results = {}
    for line in out.splitlines():
        name, _, data = line[1:].partition(" ")
        if line.startswith("@") and name in script.shapes:
            dtype = NUMPY_DTYPES[script.dtypes[name]]
            results[name] = np.frombuffer(bytes.fromhex(data), dtype=dtype).reshape(script.shapes[name])
    return results


# The same small CNN in float32 and float16 (the float16 one converts at both ends).
# No bias before BatchNorm: its exact gradient is zero, so Adam would turn rounding noise
# into full-size steps (lr * sign) that differ between any two implementations.
CNN_LAYERS = """mt.Conv2d(3, 6, 3, padding=1, bias=False{d}), mt.BatchNorm2d(6{d}), mt.ReLU(), mt.MaxPool2d(2),
    mt.Residual(mt.Sequential(mt.Conv2d(6, 6, 3, padding=1{d}), mt.ReLU())),
    mt.Conv2d(6, 8, 3, stride=2, padding=1{d}), mt.ReLU(), mt.Flatten(), mt.Linear(32, 5{d})"""


def reference_cnn(seed: int) -> R.Sequential:
    rng = np.random.default_rng(seed)
    return R.Sequential(
        R.Conv2d(3, 6, 3, padding=1, bias=False, rng=rng), R.BatchNorm2d(6), R.ReLU(), R.MaxPool2d(2),
        R.Residual(R.Sequential(R.Conv2d(6, 6, 3, padding=1, rng=rng), R.ReLU())),
        R.Conv2d(6, 8, 3, stride=2, padding=1, rng=rng), R.ReLU(), R.Flatten(), R.Linear(32, 5, rng=rng))


OPTIMIZERS = {  # device arguments, reference constructor
    "sgd": ("lr=0.05", lambda m: R.SGD(m, lr=0.05)),
    "sgd_momentum": ("lr=0.05, momentum=0.9, weight_decay=0.01",
                     lambda m: R.SGD(m, lr=0.05, momentum=0.9, weight_decay=0.01)),
    "adam": ("lr=0.01", lambda m: R.Adam(m, lr=0.01)),
}


def float16_cnn_steps(target, optimizer: str, seed: int, steps: int = 3):
    """Train the CNN in float16 on the device and in float64 on the host from the same
    (fp16-exact) weights; returns (initial state, device losses and state, reference losses
    and state)."""
    rng = np.random.default_rng(seed)
    ref = reference_cnn(seed)
    # Weights that float16 stores exactly, so both models start from the same point.
    state = {k: np.asarray(f16(v), np.float32) for k, v in ref.state_dict().items()}
    ref.load_state_dict({k: v.astype(np.float64) for k, v in state.items()})
    opt_args, make_ref_opt = OPTIMIZERS[optimizer]
    ref_opt = make_ref_opt(ref)
    batches = [(f16(rng.standard_normal((3, 8, 8, 3))), rng.integers(0, 5, 3)) for _ in range(steps)]
    script = DeviceScript()
    # float16 tensors come back widened to float32 (exactly).
    script.add("def _f32(t):\n    out = mt.zeros(t.shape)\n    out.copy_from(t)\n    return out")
    script.add(f"model = mt.Sequential(mt.Convert(mt.float16), {CNN_LAYERS.format(d=', dtype=mt.float16')}, "
               "mt.Convert(mt.float32))")
    items = ", ".join(f"{k!r}: {tensor_expr(v)}" for k, v in state.items())
    # State dict names shift by one for the leading Convert: load layer by layer (copy_from
    # converts float32 to float16, exactly for these values).
    script.add(f"src = {{{items}}}")
    script.add("sd = model.state_dict()")
    script.add("for k, v in src.items():\n    i, rest = k.split('.', 1)\n    sd[str(int(i) + 1) + '.' + rest].copy_from(v)")
    script.add(f"opt = mt.{'Adam' if optimizer == 'adam' else 'SGD'}(model, {opt_args})")
    script.add("losses = []")
    for x, y in batches:
        script.add(f"losses.append(model.train_step({tensor_expr(x)}, {labels_expr(y)}, mt.cross_entropy, opt))")
    script.emit("losses", "mt.Tensor(losses)", (steps,))
    script.add("sd = model.state_dict()")
    for k, v in state.items():
        i, rest = k.split(".", 1)
        script.emit(k, f"_f32(sd['{int(i) + 1}.{rest}'])", v.shape)
    results = script.run(target)
    ref_losses = [ref.train_step(x, y, F.cross_entropy, ref_opt) for x, y in batches]
    got = {k: results[k].astype(np.float64) for k in state}
    return state, results["losses"], got, np.array(ref_losses), ref.state_dict()


# How far the float16 run's parameter updates (final minus initial weights) may be from the
# float64 reference's, relative to their size. Every activation and error is rounded to fp16
# (2**-11 relative) at each of ~10 layers, so gradients carry ~1e-3 relative error, more where
# sums cancel. Measured with seed 34: at most 1.3% (SGD, momentum and Adam alike); a wrong
# gradient term differs by ~100%. The seed is fixed because some draws put a max-pool window
# or a ReLU input within an fp16 rounding of a tie, which sends that gradient elsewhere: over
# 16 seeds the worst parameter was 14% off with SGD and 78% with Adam (whose first steps are
# lr * sign(g) however small g is).
UPDATE_TOLERANCE = 0.05


def check_float16_steps(optimizer, state, losses, got, ref_losses, ref_state, steps=3):
    # <= 1e-4 relative in the loss (measured), against ~1e-1 for one wrong gradient term.
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-3)
    for k, v in ref_state.items():
        moved, ref_moved = got[k] - state[k], v - state[k]
        # Plus one stochastic rounding of each fp16 weight per step (at most 2**-10 |w|;
        # BatchNorm's fp32 parameters take none, the bound just stays loose there).
        bound = UPDATE_TOLERANCE * np.linalg.norm(ref_moved) + steps * 2.0**-10 * np.linalg.norm(state[k])
        err = np.linalg.norm(moved - ref_moved)
        assert err <= bound + 1e-9, (
            f"{k}: update off by {err:.3g} (bound {bound:.3g}, update {np.linalg.norm(ref_moved):.3g}) "
            f"after {steps} {optimizer} steps")


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_float16_cnn_training_steps_stay_close_to_float32(target, optimizer):
    check_float16_steps(optimizer, *float16_cnn_steps(target, optimizer, seed=34))


def test_float16_halves_memory_and_train_step_allocates_nothing(target):
    out = run_on(target, """
import gc, mcutrain as mt
def model(d):
    return mt.Sequential(mt.Conv2d(16, 32, 3, padding=1, dtype=d), mt.ReLU(), mt.Conv2d(32, 16, 3, padding=1, dtype=d))
for d in (mt.float32, mt.float16):
    m = model(d)
    opt = mt.SGD(m, lr=0.01, momentum=0.9)
    print(d, m.memory((1, 16, 16, 16))['total'], m.memory()['optimizer'])
def run():
    m = mt.Sequential(mt.Convert(mt.float16), mt.Conv2d(2, 4, 3, padding=1, dtype=mt.float16),
                      mt.BatchNorm2d(4, dtype=mt.float16), mt.ReLU(), mt.MaxPool2d(2),
                      mt.Residual(mt.Sequential(mt.Conv2d(4, 4, 3, padding=1, groups=4, dtype=mt.float16), mt.ReLU6())),
                      mt.Flatten(), mt.Linear(36, 3, dtype=mt.float16))
    opt = mt.SGD(m, lr=0.01, momentum=0.9)
    x = mt.zeros((2, 6, 6, 2))
    y = [0, 2]
    loss = mt.cross_entropy
    m.train_step(x, y, loss, opt)  # the float16 output: the loss converts it to fp32
    gc.collect()
    before = gc.mem_alloc()
    for _ in range(10):
        m.train_step(x, y, loss, opt)
    print('grown', gc.mem_alloc() - before)
run()
""")
    lines = out.splitlines()
    f32_total, f32_opt = map(int, lines[0].split()[1:])
    f16_total, f16_opt = map(int, lines[1].split()[1:])
    assert f16_opt * 2 == f32_opt  # the velocity is float16 too
    assert f16_total <= 0.55 * f32_total, (f16_total, f32_total)
    grown = int(lines[2].split()[1])
    # As in test_model_device: unix boxes the returned float (one 32-byte block per step).
    assert grown <= (10 * 32 if target.name == "unix" else 0), grown


def test_tensors_store_float16_and_check_quantization_parameters(target):
    out = run_on(target, """
import mcutrain as mt
t = mt.Tensor([[1.0, -2.5, 0.1], [65504.0, 1e-8, 70000.0]], dtype=mt.float16)
print(t.dtype, t.shape, t.tolist(), t[1][0], bytes(memoryview(t)).hex())
t.fill(0.333)
print(bytes(memoryview(t[0])).hex())
u = mt.zeros((3,))
u.copy_from(mt.Tensor([0.5, 0.25, 3.0], dtype=mt.float16))
print(u.tolist())
q = mt.Tensor([1, -2], dtype=mt.int8, scale=0.5, zero_point=-3)
print(q.scale, q.zero_point)
""")
    lines = out.splitlines()
    with np.errstate(over="ignore"):  # 70000 overflows to infinity, as on the device
        expected = np.array([[1.0, -2.5, 0.1], [65504.0, 1e-8, 70000.0]], dtype=np.float16)
    assert lines[0].startswith("float16 (2, 3) ")
    assert lines[0].split()[-1] == expected.astype("<f2").tobytes().hex()  # numpy's rounding
    # 70000 overflows to infinity, 1e-8 is below half the smallest subnormal: zero.
    assert lines[0].split("]] ")[0].endswith("[65504.0, 0.0, inf")
    assert lines[1] == np.full(3, 0.333, "<f2").tobytes().hex()
    assert lines[2] == "[0.5, 0.25, 3.0]"
    assert lines[3].split() == ["0.5", "-3"]


def test_bad_dtypes_scales_and_mixed_layers_raise_clear_errors(target):
    cases = [
        ("mt.Tensor([1], dtype=mt.int8, scale=0)", "ValueError", "scale"),
        ("mt.Tensor([1], dtype=mt.int8, scale=float('nan'))", "ValueError", "scale"),
        ("mt.Tensor([1], dtype=mt.int8, scale=float('inf'))", "ValueError", "scale"),
        ("mt.Tensor([1], dtype=mt.int8, scale=-1.0)", "ValueError", "scale"),
        ("mt.Tensor([1], dtype=mt.int8, zero_point=128)", "ValueError", "zero_point"),
        ("mt.Tensor([1], dtype=mt.int8, zero_point=-129)", "ValueError", "zero_point"),
        ("q.scale = 0", "ValueError", "scale"),
        ("q.scale = float('inf')", "ValueError", "scale"),
        ("q.zero_point = 300", "ValueError", "zero_point"),
        ("mt.Linear(2, 2, dtype='float64')", "ValueError", "dtype"),
        ("mt.Adam(mt.Sequential(mt.Conv2d(2, 2, 3, dtype=mt.int8)))", "ValueError",
         "int8 layers train with mt.SGD without momentum"),
        ("mt.SGD(mt.Linear(2, 2, dtype=mt.int8), lr=0.1, momentum=0.9)", "ValueError", "without momentum"),
        ("i8.backward(mt.zeros((1, 2), dtype=mt.int8))", "ValueError", "backward(dy, opt)"),
        ("mt.Convert(mt.int8).forward(mt.zeros((1, 2), dtype=mt.float16))", "ValueError", "float16 to int8"),
        ("mt.SGD(mt.Linear(2, 2, dtype=mt.int8), lr=0.1, momentum=0.5, update=mt.TopK(0.5))", "ValueError",
         "without momentum"),
        ("mt.Convert('bfloat16')", "ValueError", "dtype"),
        # float32 data into a float16 layer: name the layer, both dtypes and the fix
        ("mt.Linear(2, 2, dtype=mt.float16).forward(mt.zeros((1, 2)))", "ValueError",
         "Linear has dtype float16 but its input is float32: put mt.Convert(mt.float16) before it"),
        ("mt.Sequential(mt.Conv2d(1, 2, 3), mt.ReLU(), mt.Conv2d(2, 2, 3, dtype=mt.float16))"
         ".forward(mt.zeros((1, 6, 6, 1)))", "ValueError", "Conv2d has dtype float16 but its input is float32"),
        ("mt.Sequential(mt.Linear(2, 2, dtype=mt.float16), mt.Linear(2, 2))"
         ".forward(mt.zeros((1, 2), dtype=mt.float16))", "ValueError", "mt.Convert(mt.float32)"),
        ("mt.ReLU(dtype=mt.float16).forward(mt.zeros((1, 2)))", "ValueError", "ReLU has dtype float16"),
        ("mt.Residual(mt.Sequential(mt.Convert(mt.float16), mt.ReLU())).forward(mt.zeros((1, 2, 2, 1)))",
         "ValueError", "Residual"),
        ("mt.Convert(mt.float16).forward(mt.zeros((1, 2), dtype=mt.int8))", "ValueError", "Convert"),
        ("mt.Linear(2, 2, dtype=mt.float16).backward(mt.zeros((1, 2)))", "ValueError", "forward first"),
        ("f16.backward(mt.zeros((1, 2)))", "TypeError", "dy must be float16"),
        ("mt.SGD(mt.Sequential(mt.Linear(2, 2, dtype=mt.float16)), lr=0.1, update=mt.TopK(1.5))",
         "ValueError", "(0, 1]"),
        ("mt.Add().forward(mt.zeros((2,)), mt.zeros((2,), dtype=mt.float16))", "ValueError", "dtypes"),
    ]
    setup = ["import mcutrain as mt", "q = mt.Tensor([1], dtype=mt.int8, scale=0.5)",
             "f16 = mt.Linear(2, 2, dtype=mt.float16)", "f16.forward(mt.zeros((1, 2), dtype=mt.float16))",
             "i8 = mt.Linear(2, 2, dtype=mt.int8)", "i8.forward(mt.zeros((1, 2), dtype=mt.int8))"]
    out = assert_raises_clearly(target, cases, setup, after="q.scale, q.zero_point")
    assert out[-1] == "0.5 0"  # rejected settings left the tensor as it was


def test_convert_layer_converts_both_ways_and_float16_models_save_and_load(target):
    rng = np.random.default_rng(35)
    x = (rng.standard_normal((2, 5)) * 100).astype(np.float32)
    x[0, :3] = [1e-6, 70000.0, 1.0 + 2.0**-11]  # subnormal, overflow, a tie to even
    dy = f16(rng.standard_normal((2, 5)))
    script = DeviceScript()
    script.add("c = mt.Convert(mt.float16)")
    script.emit("y", f"c.forward({tensor_expr(x)})", x.shape, "float16")
    script.emit("dx", f"c.backward({tensor_expr(dy, 'float16')})", x.shape)
    script.add("back = mt.Convert(mt.float32)")
    script.emit("y32", f"back.forward({tensor_expr(dy, 'float16')})", x.shape)
    script.add("print('@info', c.dtype, c.config(), back.output.dtype, repr(c))")
    # A float16 model with float32 data in and float32 logits out, saved and loaded back.
    script.add("mt.seed(3)")
    script.add("m = mt.Sequential(mt.Convert(mt.float16), mt.Linear(5, 4, dtype=mt.float16), mt.ReLU(),"
               " mt.Linear(4, 3, dtype=mt.float16), mt.Convert(mt.float32))")
    script.add(f"xin = {tensor_expr(x / 100)}")
    script.add("m.train_step(xin, [0, 2], mt.cross_entropy, mt.SGD(m, lr=0.1))")
    script.emit("logits", "m.predict(xin)", (2, 3))
    script.add("import os\nmt.save(m, 'f16.mtm')\nm2 = mt.load('f16.mtm')\nos.remove('f16.mtm')")
    script.add("print('@loaded', [l.dtype for l in m2], m2[1].weight.dtype)")
    script.emit("logits2", "m2.predict(xin)", (2, 3))
    out = run_on(target, "\n".join(script.lines))
    results = _parse(out, script)
    with np.errstate(over="ignore"):  # 70000 overflows to infinity, as on the device
        assert np.array_equal(results["y"], x.astype(np.float16))  # numpy's rounding, bit for bit
    assert np.array_equal(results["dx"], dy.astype(np.float32))  # widening is exact
    assert np.array_equal(results["y32"], dy.astype(np.float32))
    assert "@info float16 {'dtype': 'float16'} float32 Convert(float16)" in out
    assert "@loaded ['float16', 'float16', 'float16', 'float16', 'float32'] float16" in out
    assert results["logits"].dtype == np.float32
    assert np.array_equal(results["logits"], results["logits2"])


# ---------------------------------------------------------------------------------------------
# int8 fully quantized training (layer_s8.h; kernels and their bit-exact numpy reference:
# kernels/conv2d_s8.h, mcutrain.reference.quantized)


# Scales the emulated boards' 30-bit Python floats hold exactly (they reach the device as
# literals): the reference then sees the device's values.
X_SCALE, X_ZP = 0.046875, 5
DY_SCALE = 0.0078125

# (name, layer source, x shape, w shape, stride, padding, groups, bias): odd shapes
S8_CASES = [
    ("conv_3x2_stride2_batch3", "mt.Conv2d(5, 7, (3, 2), stride=2, padding=(1, 0), dtype=mt.int8)",
     (3, 8, 6, 5), (7, 3, 2, 5), (2, 2), (1, 0), 1, True),
    ("conv_grouped_pad2", "mt.Conv2d(4, 6, 3, stride=(2, 1), padding=2, groups=2, bias=False, dtype=mt.int8)",
     (2, 9, 7, 4), (6, 3, 3, 2), (2, 1), (2, 2), 2, False),
    ("conv_depthwise", "mt.Conv2d(5, 5, 3, padding=1, groups=5, dtype=mt.int8)",
     (2, 6, 7, 5), (5, 3, 3, 1), (1, 1), (1, 1), 5, True),
    ("conv_pointwise", "mt.Conv2d(7, 5, 1, dtype=mt.int8)", (1, 4, 5, 7), (5, 1, 1, 7), (1, 1), (0, 0), 1, True),
    ("linear_batch1", "mt.Linear(37, 5, dtype=mt.int8)", (1, 37), (5, 37), None, None, 1, True),
    ("linear_batch3_no_bias", "mt.Linear(9, 13, bias=False, dtype=mt.int8)", (3, 9), (13, 9), None, None, 1, False),
    # Weights large against the image: the kernels pack them a block of channels at a time.
    ("conv_blocked_tiny_image", "mt.Conv2d(8, 16, 3, padding=1, dtype=mt.int8)", (1, 3, 3, 8), (16, 3, 3, 8),
     (1, 1), (1, 1), 1, True),
    ("conv_blocked_odd_groups", "mt.Conv2d(6, 10, 3, padding=1, groups=2, dtype=mt.int8)", (2, 2, 3, 6),
     (10, 3, 3, 3), (1, 1), (1, 1), 2, True),
]


def _s8_case(rng, x_shape, w_shape, bias):
    x = rng.integers(-128, 128, x_shape).astype(np.int8)
    w = rng.integers(-127, 128, w_shape).astype(np.int8)
    ws = rng.uniform(0.004, 0.02, w_shape[0]).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, w_shape[0]).astype(np.float32) if bias else None
    return x, w, ws, b


def _s8_reference(x, w, ws, b, stride, padding, groups):
    """The device's two-pass forward (range, then output) as the integer reference computes it."""
    bias_q = None if b is None else Q.quantize_bias(b, X_SCALE, ws)
    q = Q.S8Quant(X_SCALE, X_ZP)
    if stride is None:
        fwd = lambda q: Q.linear_s8_forward(x, w, ws, bias_q, q)  # noqa: E731
    else:
        fwd = lambda q: Q.conv2d_s8_forward(x, w, ws, bias_q, q, stride, padding, groups)  # noqa: E731
    _, (lo, hi) = fwd(q)
    q.y_scale, q.y_zero_point = Q.qparams_asymmetric(lo, hi)
    y, _ = fwd(q)
    return q, bias_q, y


def _s8_grad_input(x, w, ws, dy, q, stride, padding, groups):
    """dx as the device computes it: a first pass for the error's range, then the real one."""
    q.dy_scale, q.dx_scale = DY_SCALE, 1.0
    if stride is None:
        gi = lambda q: Q.linear_s8_grad_input(w, ws, dy, q)  # noqa: E731
    else:
        gi = lambda q: Q.conv2d_s8_grad_input(x.shape, w, ws, dy, q, stride, padding, groups)  # noqa: E731
    _, absmax = gi(q)
    q.dx_scale = Q.qparams_symmetric(absmax).scale
    dx, _ = gi(q)
    return dx


def _s8_script(name, src, x, w, ws, b, dy, trainable, script):
    script.add(f"layer = {src}")
    script.add(f"layer.weight.copy_from({tensor_expr(w, 'int8')})")
    script.add(f"layer.weight_scale.copy_from({tensor_expr(ws)})")
    if b is not None:
        script.add(f"layer.bias.copy_from({tensor_expr(b)})")
    script.add(f"x = mt.Tensor(bytes.fromhex('{x.tobytes().hex()}'), {x.shape}, dtype=mt.int8, scale={X_SCALE}, "
               f"zero_point={X_ZP})")
    script.add(f"dy = mt.Tensor(bytes.fromhex('{dy.tobytes().hex()}'), {dy.shape}, dtype=mt.int8, scale={DY_SCALE})")
    script.emit(f"{name}.y", "layer.forward(x)", dy.shape, "int8")
    if trainable:
        script.add("opt = mt.SGD(layer, lr=0.05, weight_decay=0.01)")
        script.emit(f"{name}.dx", "layer.backward(dy, opt)", x.shape, "int8")
        script.emit(f"{name}.w", "layer.weight", w.shape, "int8")
        script.emit(f"{name}.ws", "layer.weight_scale", ws.shape)
        if b is not None:
            script.emit(f"{name}.b", "layer.bias", b.shape)
    else:
        script.add("layer.trainable = False")  # input gradient only: no update
        script.emit(f"{name}.dx", "layer.backward(dy)", x.shape, "int8")


def test_int8_forward_and_input_gradient_match_the_integer_reference_bit_for_bit(target):
    rng = np.random.default_rng(41)
    script = DeviceScript()
    cases = []
    for name, src, x_shape, w_shape, stride, padding, groups, bias in S8_CASES:
        x, w, ws, b = _s8_case(rng, x_shape, w_shape, bias)
        q, bias_q, y = _s8_reference(x, w, ws, b, stride, padding, groups)
        dy = rng.integers(-127, 128, y.shape).astype(np.int8)
        _s8_script(name, src, x, w, ws, b, dy, False, script)
        cases.append((name, x, w, ws, b, dy, q, y, stride, padding, groups))
    results = script.run(target)
    for name, x, w, ws, b, dy, q, y, stride, padding, groups in cases:
        assert np.array_equal(results[f"{name}.y"], y), f"{name}: forward differs from the integer reference"
        dx = _s8_grad_input(x, w, ws, dy, q, stride, padding, groups)
        assert np.array_equal(results[f"{name}.dx"], dx), f"{name}: input gradient differs"

        # Against fp32 on the dequantized operands, the documented bounds: each output is
        # the exact sum rounded once to its scale (half a step) unless it saturates; the
        # bias is rounded to units of s_x * s_w (half a unit); the input gradient's weight
        # fold errs by at most 2**-9 of each term taken at the largest weight scale
        # (conv2d_s8.h): fold = sum |dy| |w_q| max(s_w).
        xr = Q.dequantize(x, X_SCALE, X_ZP).astype(np.float64)
        wr = Q.dequantize_weights(w, ws).astype(np.float64)
        wmax = np.abs(w).astype(np.float64) * float(ws.max())
        yr = Q.dequantize(y, q.y_scale, q.y_zero_point).astype(np.float64)
        if stride is None:
            ref = F.linear_forward(xr, wr, b)
            dx_ref, _, _ = F.linear_backward(xr, wr, Q.dequantize(dy, DY_SCALE).astype(np.float64))
            fold = F.linear_backward(np.abs(xr), wmax, np.abs(dy) * DY_SCALE)[0]
        else:
            ref = F.conv2d_forward(xr, wr, b, stride, padding, groups)
            dyr = Q.dequantize(dy, DY_SCALE).astype(np.float64)
            dx_ref = F.conv2d_backward(xr, wr, dyr, stride, padding, groups)[0]
            fold = F.conv2d_backward(np.abs(xr), wmax, np.abs(dyr), stride, padding, groups)[0]
        lo, hi = (Q.ACT_MIN - q.y_zero_point) * q.y_scale, (Q.ACT_MAX - q.y_zero_point) * q.y_scale
        inside = (ref > lo) & (ref < hi)
        bound = 0.5 * q.y_scale + 0.5 * X_SCALE * ws.max() + 1e-6 * np.abs(ref)
        assert np.all(np.abs(yr - ref)[inside] <= bound[inside]), f"{name}: forward beyond the rounding bound"
        dx_scale = _dx_scale(x, w, ws, dy, stride, padding, groups)
        got = dx.astype(np.float64) * dx_scale
        assert np.all(np.abs(got - dx_ref) <= 0.5 * dx_scale + 2.0**-9 * fold + 1e-6), (
            f"{name}: input gradient beyond the bound")


def test_int8_random_shapes_forward_and_input_gradient_bit_for_bit(target):
    # random_layers.random_conv2d's shapes (grouped, depthwise with multipliers, kernels to
    # 5x5, strides to 3): the forward and the input gradient bit for bit.
    rng = np.random.default_rng(43)
    for i in range(case_count(target, RANDOM_CASES, RANDOM_BOARD_CASES)):
        n, h, wd, cin, cout, k, s, p, g, bias = random_conv2d(rng, RANDOM_MAX_VALUES)
        src = f"mt.Conv2d({cin}, {cout}, {k}, stride={s}, padding={p}, groups={g}, bias={bias}, dtype=mt.int8)"
        x, w, ws, b = _s8_case(rng, (n, h, wd, cin), (cout, k[0], k[1], cin // g), bias)
        q, _, y = _s8_reference(x, w, ws, b, s, p, g)
        dy = rng.integers(-127, 128, y.shape).astype(np.int8)
        script = DeviceScript()
        _s8_script(f"c{i}", src, x, w, ws, b, dy, False, script)
        results = script.run(target)
        assert np.array_equal(results[f"c{i}.y"], y), f"{src} x{x.shape}: forward differs from the integer reference"
        dx = _s8_grad_input(x, w, ws, dy, q, s, p, g)
        assert np.array_equal(results[f"c{i}.dx"], dx), f"{src} x{x.shape}: input gradient differs"


def _dx_scale(x, w, ws, dy, stride, padding, groups) -> float:
    """The input gradient's scale: that of the largest magnitude of its first pass."""
    q2 = Q.S8Quant(X_SCALE, X_ZP, dy_scale=DY_SCALE)
    if stride is None:
        _, absmax = Q.linear_s8_grad_input(w, ws, dy, q2)
    else:
        _, absmax = Q.conv2d_s8_grad_input(x.shape, w, ws, dy, q2, stride, padding, groups)
    return Q.qparams_symmetric(absmax).scale


def _int8_update_cases(target, sgd_args: str, lr: float, wd: float):
    """One SGD step of each int8 case on the target: (results, cases)."""
    rng = np.random.default_rng(42)
    script = DeviceScript()
    cases = []
    for name, src, x_shape, w_shape, stride, padding, groups, bias in (S8_CASES[0], S8_CASES[2], S8_CASES[5],
                                                                        S8_CASES[4], S8_CASES[6], S8_CASES[7]):
        x, w, ws, b = _s8_case(rng, x_shape, w_shape, bias)
        q, bias_q, y = _s8_reference(x, w, ws, b, stride, padding, groups)
        dy = rng.integers(-127, 128, y.shape).astype(np.int8)
        _s8_script(name, src, x, w, ws, b, dy, True, script)
        cases.append((name, x, w, ws, b, dy, q, bias_q, stride, padding, groups))
    script.lines = [line.replace("lr=0.05, weight_decay=0.01", f"lr={lr}, weight_decay={wd}{sgd_args}")
                    for line in script.lines]
    return script.run(target), cases


def _int8_reference_update(case, lr, wd, standardize):
    name, x, w, ws, b, dy, q, bias_q, stride, padding, groups = case
    if stride is None:
        upd = lambda u: Q.linear_s8_update(x, dy, w, ws, bias_q, q, u)  # noqa: E731
    else:
        upd = lambda u: Q.conv2d_s8_update(x, dy, w, ws, bias_q, q, u, stride, padding, groups)  # noqa: E731
    sigma_w = sigma_b = 0.0
    if standardize:
        stats = upd(None)
        unit_w = float(np.float32(DY_SCALE) * np.float32(X_SCALE))
        sigma_w = Q.grad_stats_rms(stats.w_stats, unit_w)
        sigma_b = Q.grad_stats_rms(stats.b_stats, DY_SCALE)
    return upd(Q.S8Update(lr=lr, weight_decay=wd, sigma_w=sigma_w, sigma_b=sigma_b, eps=1e-8, rescale_below=0.5))


@pytest.mark.parametrize("standardize", [True, False], ids=["standardized", "plain"])
def test_int8_update_matches_the_integer_reference_bit_for_bit(target, standardize):
    # One SGD step (lr, weight decay exact in the boards' floats) rounded to nearest even;
    # with gradient standardization the first step's divisors come from a statistics-only
    # pass, without it the step is lr times the real-valued gradient.
    lr, wd = (0.0625, 0.015625) if standardize else (0.25, 0.015625)
    results, cases = _int8_update_cases(
        target, f", standardize={standardize}, rounding='nearest'", lr, wd)
    for case in cases:
        name, x, w, ws, b, dy, q, bias_q, stride, padding, groups = case
        dx = _s8_grad_input(x, w, ws, dy, q, stride, padding, groups)
        assert np.array_equal(results[f"{name}.dx"], dx), f"{name}: input gradient differs"
        r = _int8_reference_update(case, lr, wd, standardize)
        assert np.array_equal(results[f"{name}.w"], r.w), f"{name}: updated weights differ"
        assert np.array_equal(results[f"{name}.ws"], r.w_scale), f"{name}: updated weight scales differ"
        assert not np.array_equal(r.w, w), f"{name}: the step changed nothing"
        if b is not None:
            # The bias comes back to real units: b = b_q * (s_x * s_w[o]) in float32.
            expected = r.bias.astype(np.float32) * (np.float32(X_SCALE) * r.w_scale)
            assert np.array_equal(results[f"{name}.b"], expected.astype(np.float32)), f"{name}: bias differs"


def test_int8_update_rounds_stochastically_on_request(target):
    # rounding='stochastic': each new weight is the exact value's floor or ceiling (so at
    # most one step from the nearest-even result), the scales are the same, and some
    # weights do round the other way.
    lr, wd = 0.25, 0.015625
    results, cases = _int8_update_cases(target, ", rounding='stochastic'", lr, wd)
    moved = 0
    for case in cases:
        name, x, w, ws, b, dy, q, bias_q, stride, padding, groups = case
        dx = _s8_grad_input(x, w, ws, dy, q, stride, padding, groups)  # also sets q's error scales
        assert np.array_equal(results[f"{name}.dx"], dx), f"{name}: input gradient differs"
        r = _int8_reference_update(case, lr, wd, standardize=False)
        got = results[f"{name}.w"].astype(np.int64)
        assert np.abs(got - r.w.astype(np.int64)).max() <= 1, f"{name}: beyond one step of the exact value"
        assert np.array_equal(results[f"{name}.ws"], r.w_scale), f"{name}: updated weight scales differ"
        moved += int(np.count_nonzero(got != r.w))
    assert moved > 0, "no weight rounded away from nearest: stochastic rounding is off"


S8_CNN = """mt.Sequential(mt.Convert(mt.int8), mt.Conv2d(1, 8, 3, padding=1, dtype=mt.int8), mt.ReLU(),
    mt.MaxPool2d(2), mt.Conv2d(8, 8, 3, padding=1, dtype=mt.int8), mt.ReLU6(), mt.GlobalAvgPool(),
    mt.Linear(8, 2, dtype=mt.int8), mt.Convert(mt.float32))"""


def test_int8_cnn_learns_and_its_train_step_allocates_nothing(target):
    rng = np.random.default_rng(43)
    n = 48
    x, labels = bars(rng, n)
    out = run_on(target, f"""
import gc, mcutrain as mt
mt.seed(1)
model = {S8_CNN}
opt = mt.SGD(model, lr=0.02, standardize=True)  # the paper's scheme: steps of about lr from the start
data = {tensor_expr(x)}
labels = {labels_expr(labels)}
losses = []
for epoch in range(6):
    for b in range(0, {n}, 4):
        x = mt.frombuffer(memoryview(data)[b * 64:(b + 4) * 64], (4, 8, 8, 1))  # a view of 4 images
        losses.append(model.train_step(x, labels[b:b + 4], mt.cross_entropy, opt))
first, last = sum(losses[:12]) / 12, sum(losses[-12:]) / 12
print('loss', first, last)
print('accuracy', model.evaluate(data, labels)[1])
x = mt.frombuffer(memoryview(data)[:256], (4, 8, 8, 1))
y = labels[:4]
loss = mt.cross_entropy
model.train_step(x, y, loss, opt)  # plans for a batch of 4 again (evaluate planned for 48)
{ALLOCATION_CHECK}
print('dtypes', model[1].weight.dtype, model[1].output.dtype, model[7].output.dtype, model[8].output.dtype)
""", timeout=300)
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    first, last = map(float, lines["loss"].split())
    # Deutel et al.'s scheme trains: the loss falls well below its start (ln 2 ~ 0.69), and
    # the bars are told apart.
    assert last < 0.5 * first, (first, last)
    assert float(lines["accuracy"]) >= 0.9, lines["accuracy"]
    grown = int(lines["grown"])
    assert grown <= (10 * 32 if target.name == "unix" else 0), grown
    assert lines["dtypes"].split() == ["int8", "int8", "int8", "float32"]


def test_int8_memory_is_under_a_third_of_float32(target):
    out = run_on(target, """
import mcutrain as mt
def pair(d):
    return mt.Sequential(mt.Conv2d(8, 16, 3, padding=1, dtype=d), mt.ReLU(), mt.Conv2d(16, 8, 3, padding=1, dtype=d))
def digits(d):  # tiny activations under many weights: 8 to 16 channels on 4x4
    return mt.Sequential(mt.Conv2d(1, 8, 3, padding=1, dtype=d), mt.ReLU(), mt.MaxPool2d(2),
        mt.Conv2d(8, 16, 3, padding=1, dtype=d), mt.ReLU(), mt.MaxPool2d(2), mt.Flatten(), mt.Linear(64, 10, dtype=d))
for name, model, shape in (('pair', pair, (12, 12, 8)), ('digits', digits, (8, 8, 1))):
    for batch in (1, 4):
        for d in (mt.float32, mt.float16, mt.int8):
            m = model(d)
            mt.SGD(m, lr=0.01)  # int8 layers take plain SGD: no optimizer state in any dtype
            print(name, batch, d, m.memory((batch,) + shape)['total'])
            m = None
""")
    totals = {tuple(line.split()[:3]): int(line.split()[3]) for line in out.splitlines()}
    for name in ("pair", "digits"):
        for batch in ("1", "4"):
            fp32 = totals[name, batch, "float32"]
            # At a batch of one the kernels' scratch is a large share: the int8 update's
            # gradient sums (4 bytes a weight), its weight panels (2 bytes a weight) and the
            # float16 kernels' fp32 tiles are sized from the layer's own tensors.
            assert totals[name, batch, "int8"] <= 0.35 * fp32, totals
            assert totals[name, batch, "float16"] <= 0.55 * fp32, totals


def test_int8_convert_relu_and_pools_match_the_reference(target):
    rng = np.random.default_rng(44)
    x = (rng.standard_normal((2, 4, 6, 3)) * 3).astype(np.float32)
    dq = rng.integers(-127, 128, x.shape).astype(np.int8)
    dy32 = rng.standard_normal((2, 4, 6, 3)).astype(np.float32)
    script = DeviceScript()
    script.add("c = mt.Convert(mt.int8)")
    script.emit("q", f"c.forward({tensor_expr(x)})", x.shape, "int8")
    script.add("q = c.output")
    script.emit("dx", f"c.backward(mt.Tensor(bytes.fromhex('{dq.tobytes().hex()}'), {x.shape}, dtype=mt.int8, "
                f"scale={DY_SCALE}))", x.shape)
    script.add("back = mt.Convert(mt.float32)")
    script.emit("deq", "back.forward(q)", x.shape)
    script.emit("dq", f"back.backward({tensor_expr(dy32)})", x.shape, "int8")
    for name, src in (("relu", "mt.ReLU()"), ("relu6", "mt.ReLU6()"), ("maxpool", "mt.MaxPool2d(2)"),
                      ("maxpool_s1", "mt.MaxPool2d(3, stride=1, padding=1)"), ("gap", "mt.GlobalAvgPool()")):
        script.add(f"l = {src}")
        shape = {"maxpool": (2, 2, 3, 3), "gap": (2, 3)}.get(name, x.shape)
        script.emit(f"{name}.y", "l.forward(q)", shape, "int8")
        dyn = rng.integers(-127, 128, shape).astype(np.int8)
        script.emit(f"{name}.dx", f"l.backward(mt.Tensor(bytes.fromhex('{dyn.tobytes().hex()}'), {shape}, "
                    f"dtype=mt.int8, scale={DY_SCALE}))", x.shape, "int8")
        script.add(f"print('@{name}.scales', l.output.scale == q.scale, l.output.zero_point == q.zero_point)")
        script.lines.append(f"# dy {name} {dyn.tobytes().hex()}")
    script.add("print('@gap.dxscale', abs(l.backward(mt.Tensor(bytearray(6), (2, 3), dtype=mt.int8, "
               f"scale={DY_SCALE})).scale * 24 / {DY_SCALE} - 1) < 1e-6)")
    out = run_on(target, "\n".join(script.lines))
    results = _parse(out, script)
    dys = {line.split()[2]: np.frombuffer(bytes.fromhex(line.split()[3]), np.int8)
           for line in script.lines if line.startswith("# dy ")}
    # float32 -> int8 with the first pass's range (taken as is), nearest even.
    qp = Q.qparams_asymmetric(float(x.min()), float(x.max()))
    q = Q.quantize(x, qp.scale, qp.zero_point)
    assert np.array_equal(results["q"], q)
    assert np.array_equal(results["dx"], Q.dequantize(dq, DY_SCALE))
    assert np.array_equal(results["deq"], Q.dequantize(q, qp.scale, qp.zero_point))
    back = Q.qparams_symmetric(float(np.abs(dy32).max()))
    assert np.array_equal(results["dq"], Q.quantize(dy32, back.scale, 0, -127, 127))
    zp = qp.zero_point
    six = min(127, zp + int(Q.round_half_even(np.float32(6.0) / np.float32(qp.scale))))
    q64 = q.astype(np.int64)
    assert np.array_equal(results["relu.y"], np.maximum(q64, zp))
    assert np.array_equal(results["relu.dx"], np.where(q64 > zp, dys["relu"].reshape(x.shape), 0))
    assert np.array_equal(results["relu6.y"], np.clip(q64, zp, six))
    assert np.array_equal(results["relu6.dx"], np.where((q64 > zp) & (q64 < six), dys["relu6"].reshape(x.shape), 0))
    # Max pooling commutes with the affine map: the reference on the integers is exact.
    assert np.array_equal(results["maxpool.y"], F.maxpool2d_forward(q64, 2))
    assert np.array_equal(results["maxpool.dx"], F.maxpool2d_backward(q64, dys["maxpool"].reshape(2, 2, 3, 3), 2))
    assert np.array_equal(results["maxpool_s1.y"], F.maxpool2d_forward(q64, 3, 1, 1))
    # Overlapping windows add their errors in int8: saturated at +-127.
    dx_s1 = F.maxpool2d_backward(q64, dys["maxpool_s1"].reshape(x.shape), 3, 1, 1)
    assert np.array_equal(results["maxpool_s1.dx"], np.clip(dx_s1, -127, 127))
    mean = (q64 - zp).reshape(2, 24, 3).sum(1).astype(np.float32) * np.float32(1 / 24)
    assert np.array_equal(results["gap.y"], zp + Q.round_half_even(mean))
    assert np.array_equal(results["gap.dx"], np.broadcast_to(dys["gap"].reshape(2, 1, 1, 3), x.shape))
    for name in ("relu", "relu6", "maxpool", "maxpool_s1", "gap"):
        assert f"@{name}.scales True True" in out
    assert "@gap.dxscale True" in out


def test_int8_models_save_and_load_their_weights_and_scales(target):
    out = run_on(target, """
import os, mcutrain as mt
mt.seed(2)
m = mt.Sequential(mt.Convert(mt.int8), mt.Linear(6, 5, dtype=mt.int8), mt.ReLU(), mt.Linear(5, 3, dtype=mt.int8),
                  mt.Convert(mt.float32))
x = mt.Tensor([[0.5, -1.0, 2.0, 0.25, -0.75, 1.5], [1.0, 0.0, -2.0, 0.5, 0.5, -1.0]])
m.train_step(x, [0, 2], mt.cross_entropy, mt.SGD(m, lr=0.05))
mt.save(m, 'i8.mtm')
m2 = mt.load('i8.mtm')
os.remove('i8.mtm')
same = all(bytes(memoryview(v)) == bytes(memoryview(m2.state_dict()[k])) for k, v in m.state_dict().items())
print(sorted(m.state_dict()), same, [l.dtype for l in m2])
a, b = m.predict(x).tolist(), m2.predict(x).tolist()
print(max(abs(u - v) for ra, rb in zip(a, b) for u, v in zip(ra, rb)))
""")
    keys, rest = out.splitlines()[0].split("] ", 1)
    assert keys == "['1.bias', '1.weight', '1.weight_scale', '3.bias', '3.weight', '3.weight_scale'"
    assert rest == "True ['int8', 'int8', 'int8', 'int8', 'float32']"
    # The range trackers (the activations' scales) are not in the file: the loaded model
    # measures them again on its first batch, so its outputs differ by a few output steps.
    assert float(out.splitlines()[1]) < 0.5


def test_quant_range_reads_sets_and_rejects_bad_ranges(target):
    out = run_on(target, """
import mcutrain as mt
m = mt.Sequential(mt.Convert(mt.int8), mt.Linear(4, 3, dtype=mt.int8))
print('fresh', m[0].quant_range, m[1].quant_range)
m[1].quant_range = (-1.5, 2.0)
x = mt.Tensor([[0.1, 0.2, -0.3, 0.4]])
print('scale', m.predict(x).scale)
print('input', m[0].quant_range)
for bad in ((1.0, float('nan')), (2.0, 1.0), (0.0, float('inf')), (1.0,), 'ab'):
    try:
        m[1].quant_range = bad
        print('accepted', bad)
    except (ValueError, TypeError) as e:
        print('rejected', type(e).__name__)
m[1].quant_range = None
print('forgot', m[1].quant_range)
print('float32', hasattr(mt.Linear(2, 2), 'quant_range'))
""")
    lines = out.splitlines()
    assert lines[0] == "fresh None None"
    # The set range gives the output scale: (2.0 + 1.5) / 255.
    assert abs(float(lines[1].split()[1]) - 3.5 / 255) < 1e-6
    lo, hi = map(float, lines[2].split(" ", 1)[1].strip("()").split(","))
    assert abs(lo + 0.3) < 1e-6 and abs(hi - 0.4) < 1e-6  # Convert measured its input
    assert all(line.startswith("rejected") for line in lines[3:8]), lines[3:8]
    assert lines[8] == "forgot None"
    assert lines[9] == "float32 False"


def test_int8_output_range_widens_at_once_and_narrows_by_the_moving_average(target):
    # layer_s8.h: a training pass whose outputs reach past the tracked range takes the wider
    # range at once (a lagging range clamped growing outputs: bench/int8_stability.py); a
    # narrower one moves the range by the moving average (momentum 0.9). The same int8 bytes
    # at three times the input scale give three times the real outputs.
    out = run_on(target, """
import mcutrain as mt
mt.seed(5)
layer = mt.Linear(6, 4, bias=False, dtype=mt.int8)  # no bias: outputs scale with the input
data = bytes([7, 250, 33, 190, 5, 128, 60, 71, 200, 3, 99, 144])
def x(scale):
    return mt.Tensor(data, (2, 6), dtype=mt.int8, scale=scale, zero_point=3)
layer.forward(x(0.01), training=True)
print(*layer.quant_range)
layer.forward(x(0.03), training=True)
print(*layer.quant_range)
layer.forward(x(0.01), training=True)
print(*layer.quant_range)
""")
    (lo1, hi1), (lo3, hi3), (lo_back, hi_back) = [tuple(map(float, line.split())) for line in out.splitlines()[-3:]]
    assert lo1 < 0 < hi1, (lo1, hi1)
    # widened at once, to the new pass's own range (a moving average would give 1.2x)
    assert abs(lo3 - 3 * lo1) <= 1e-4 * abs(lo1) and abs(hi3 - 3 * hi1) <= 1e-4 * hi1, (lo1, hi1, lo3, hi3)
    # narrowed by the moving average: 0.9 of the wide range plus 0.1 of the narrow one
    assert abs(lo_back - (0.9 * lo3 + 0.1 * lo1)) <= 1e-4 * abs(lo3), (lo_back, lo3, lo1)
    assert abs(hi_back - (0.9 * hi3 + 0.1 * hi1)) <= 1e-4 * hi3, (hi_back, hi3, hi1)
