"""ReLU folding (layer_activation.c, model_sequential.c) on the device: a Sequential that folds
ReLU/ReLU6 into the Conv or Linear layer before it computes exactly what the same layers
compute unfolded, in every dtype, and costs fewer instructions; the ReLU kernels the folds and
the remaining standalone ReLUs run (Thumb-2 asm and SSUB8/SEL on qemu-m4f, portable C on unix
and qemu-rv32) match numpy bit for bit.

The unfolded twin of a model nests each ReLU as the first layer of a Sequential of its own
(Sequential(conv, Sequential(ReLU(), ...))): a ReLU first in its Sequential is never folded,
so the twin runs the standalone ReLU layer with the same weights, data and update rule. Both
are built from the same seed, so their weights (and int8 rounding states) start equal;
every comparison below is of bits, since max(x, 0) and the int8 clamp round nothing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from device_arrays import DeviceScript, tensor_expr
from mcutrain.runner import run_on

# Device helpers: both models of a case, trained side by side; every result as hex bits.
PRELUDE = r"""
import gc
import json
import mcutrain as mt

def hexb(t):
    return bytes(memoryview(t)).hex()

def nest(layers):
    # Each ReLU/ReLU6 opens a Sequential of its own: first there, it is never folded.
    for i in range(1, len(layers)):
        if type(layers[i]).__name__ in ('ReLU', 'ReLU6'):
            return layers[:i] + [mt.Sequential(*nest(layers[i:]))]
    return layers

def wrap(layers, dt):
    if dt in ('float16', 'int8'):
        return [mt.Convert(dt)] + layers + [mt.Convert(mt.float32)]
    return layers

def leaves(m, out):
    for l in (m if isinstance(m, mt.Sequential) else [m]):
        if isinstance(l, mt.Sequential):
            leaves(l, out)
        elif type(l).__name__ == 'Residual':
            leaves(l.body, out)
            if l.shortcut is not None:
                leaves(l.shortcut, out)
        else:
            out.append(l)
    return out

def fill(shape, seed):
    n = 1
    for d in shape:
        n *= d
    s = seed
    v = []
    for i in range(n):
        s = (s * 1103515245 + 12345) & 0x7fffffff
        v.append((s >> 8) / 4194304.0 - 1.0)
    return mt.Tensor(v, shape=shape)

def state(m):
    out = []
    for l in leaves(m, []):
        for p in (l.weight, l.bias, getattr(l, 'weight_scale', None)):
            if p is not None:
                out.append(hexb(p))
        qr = getattr(l, 'quant_range', None)
        out.append(repr(qr))
    return out

def maker(fold):
    # Sequential as the case builds it: folding, or its unfolded twin (Residual bodies too).
    return (lambda *ls: mt.Sequential(*ls)) if fold else (lambda *ls: mt.Sequential(*nest(list(ls))))

def run_case(build, dt, x_shape, classes, steps, policy=None, frozen=()):
    res = []
    for fold in (True, False):
        mt.seed(11)
        layers = build(dt, maker(fold))
        for i in frozen:
            layers[i].trainable = False
        m = maker(fold)(*wrap(layers, dt))
        x = fill(x_shape, 5)
        dy = None
        r = {}
        if dt in ('float32', 'float16'):
            # Plain backward: the input gradient and every .grad.
            y = m.forward(x)
            r['y'] = hexb(y)
            dy = fill(y.shape, 9)
            r['dx'] = hexb(m.backward(dy))
            r['grads'] = [hexb(p.grad) for p in m.parameters() if p.grad is not None]
        opt = mt.SGD(m, lr=0.05, update=policy) if policy is not None else mt.SGD(m, lr=0.05)
        losses = []
        for s in range(steps):
            losses.append(m.train_step(fill(x_shape, 20 + s), [(s * 5 + j) % classes for j in range(x_shape[0])],
                                       mt.cross_entropy, opt))
        r['losses'] = repr(losses)
        r['state'] = state(m)
        r['predict'] = hexb(m.predict(x))
        if policy is not None:
            r['selected'] = [repr(l.selected) for l in leaves(m, []) if l.weight is not None]
        # Cost of one more step (exact instructions on the emulated boards).
        xs = fill(x_shape, 40)
        t0 = mt.perf_counter()
        m.train_step(xs, [0] * x_shape[0], mt.cross_entropy, opt)
        r['instructions'] = mt.perf_counter() - t0
        r['memory'] = m.memory()
        res.append(r)
        m = opt = layers = None
        gc.collect()
    return res
"""

# name -> (layers in Python source, taking dtype `d` and `S`, the Sequential maker; input
# shape; classes).
CASES = {
    "conv2d_relu_linear": (
        "[mt.Conv2d(2, 6, 3, padding=1, dtype=d), mt.ReLU(), mt.Flatten(), mt.Linear(6 * 5 * 4, 3, dtype=d)]",
        (2, 5, 4, 2), 3),
    "conv2d_relu_maxpool_dw_relu6_avgpool": (
        "[mt.Conv2d(3, 8, 3, stride=2, padding=1, dtype=d), mt.ReLU(), mt.MaxPool2d(2),"
        " mt.Conv2d(8, 8, 3, padding=1, groups=8, dtype=d), mt.ReLU6(), mt.Conv2d(8, 8, 1, dtype=d), mt.ReLU(),"
        " mt.AvgPool2d(2), mt.Flatten(), mt.Linear(8, 4, dtype=d)]",
        (1, 9, 9, 3), 4),
    "conv1d_relu": (
        "[mt.Conv1d(3, 5, 3, padding=1, dtype=d), mt.ReLU(), mt.Conv1d(5, 4, 3, stride=2, dtype=d), mt.ReLU(),"
        " mt.Flatten(), mt.Linear(4 * 5, 3, dtype=d)]",
        (2, 11, 3), 3),
    "linear_relu_mlp_relu_at_the_end": (
        "[mt.Linear(12, 16, dtype=d), mt.ReLU(), mt.Linear(16, 8, dtype=d), mt.ReLU6(), mt.Linear(8, 5, dtype=d),"
        " mt.ReLU()]",
        (3, 12), 5),
    "residual_bodies_with_relus": (
        "[mt.Conv2d(2, 4, 3, padding=1, dtype=d), mt.ReLU(),"
        " mt.Residual(S(mt.Conv2d(4, 4, 3, padding=1, dtype=d), mt.ReLU(),"
        " mt.Conv2d(4, 4, 1, dtype=d))),"
        " mt.Residual(S(mt.Conv2d(4, 6, 3, stride=2, padding=1, dtype=d), mt.ReLU()),"
        " shortcut=mt.Conv2d(4, 6, 1, stride=2, dtype=d)),"
        " mt.Flatten(), mt.Linear(6 * 3 * 3, 3, dtype=d)]",
        (1, 6, 6, 2), 3),
}
DTYPES = ["float32", "float16", "int8", "mixed"]


def run_cases(target, cases, dtype, steps=3, policy=None, frozen=()):
    """Each case in a script of its own (a fresh heap on the boards)."""
    out = {}
    for name in cases:
        src, shape, classes = CASES[name]
        code = "\n".join([PRELUDE, f"def build(d, S):\n    return {src}",
                          f"r = run_case(build, {dtype!r}, {shape!r}, {classes}, {steps}, {policy or 'None'}, "
                          f"{tuple(frozen)!r})", "print('@json', json.dumps(r))"])
        text = run_on(target, code, timeout=600)
        out[name] = json.loads(next(l for l in text.splitlines() if l.startswith("@json"))[6:])
    return out


def assert_same(results, emulated: bool):
    for name, (folded, unfolded) in results.items():
        for key in folded:
            if key in ("instructions", "memory"):
                continue
            assert folded[key] == unfolded[key], f"{name}: {key} differs when the ReLUs are folded"
        if emulated:
            # The folded step runs no separate ReLU passes (and no nested Sequentials).
            assert folded["instructions"] < unfolded["instructions"], (name, folded["instructions"],
                                                                       unfolded["instructions"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_folded_relus_give_the_unfolded_losses_gradients_and_weights_bit_for_bit(target, dtype):
    results = run_cases(target, list(CASES), dtype)
    assert_same(results, target.name != "unix")


@pytest.mark.parametrize("policy", ["mt.TopK(0.25, 0.5)", "mt.ChannelRatio(0.5)", "mt.BiasOnly()"])
def test_partial_updates_see_the_masked_error_of_a_folded_relu(target, policy):
    # TopK ranks output channels by their error: it must rank the error the ReLU let through.
    results = run_cases(target, ["conv2d_relu_linear", "conv2d_relu_maxpool_dw_relu6_avgpool", "conv1d_relu"],
                        "float32", policy=policy)
    assert_same(results, False)


def test_frozen_producers_still_mask_the_error_they_pass_on(target):
    # Conv 0 frozen (its backward is skipped), the depthwise conv frozen (it still passes
    # its masked error back to conv 0's ReLU... which it must have masked first).
    results = run_cases(target, ["conv2d_relu_maxpool_dw_relu6_avgpool"], "float32", frozen=(0, 3))
    assert_same(results, False)
    results = run_cases(target, ["conv2d_relu_maxpool_dw_relu6_avgpool"], "int8", frozen=(3,))
    assert_same(results, False)


def test_folding_keeps_memory_state_dict_and_save_load(target):
    code = PRELUDE + r"""
mt.seed(3)
m = mt.Sequential(mt.Conv2d(1, 4, 3, padding=1), mt.ReLU(), mt.Conv2d(4, 4, 3, padding=1, groups=4), mt.ReLU(),
                  mt.Flatten(), mt.Linear(4 * 6 * 6, 3))
x = fill((1, 6, 6, 1), 2)
opt = mt.SGD(m, lr=0.1)
m.train_step(x, [1], mt.cross_entropy, opt)
mem = m.memory()
keys = list(m.state_dict().keys())
# Saved and loaded, the model folds again and predicts the same bits.
import os
mt.save(m, 'fold.mtm')
m2 = mt.load('fold.mtm')
os.remove('fold.mtm')
reload = hexb(m2.predict(x)) == hexb(m.predict(x))
# After a forward with grad (predict reuses the layers' outputs for later ones), the conv's output holds
# the ReLU'd values (as when the ReLU ran in place on it) and the ReLU's output is that buffer.
m.forward(x, training=False, grad=True)
same = bytes(memoryview(m[0].output)) == bytes(memoryview(m[1].output))
neg = min(memoryview(m[0].output)) >= 0
# Used alone (a fresh conv, the same weights) nothing is folded: negative outputs stay.
c = mt.Conv2d(1, 4, 3, padding=1)
c.copy_from(m[0])
alone = min(memoryview(c.forward(x))) < 0
r = mt.ReLU()
ra = min(memoryview(r.forward(mt.Tensor([-1.0, 2.0, -0.5])))) == 0
print('@json', json.dumps({'mem': mem, 'keys': keys, 'same': same, 'nonneg': neg, 'alone': alone, 'relu': ra, 'reload': reload}))
"""
    text = run_on(target, code, timeout=300)
    r = json.loads(next(l for l in text.splitlines() if l.startswith("@json"))[6:])
    assert r["keys"] == ["0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias"]
    assert r["same"] and r["nonneg"] and r["alone"] and r["relu"] and r["reload"]
    # Activations: the two conv outputs (the ReLUs share them, Flatten is a view) and the
    # Linear's; gradients: the parameters' grads are not allocated by SGD, the two
    # Sequential buffers are one conv output each, plus the loss gradient.
    conv_out = 6 * 6 * 4 * 4
    assert r["mem"]["activations"] == 2 * conv_out + 3 * 4
    assert r["mem"]["gradients"] == 2 * conv_out + 3 * 4


# Every length around the kernels' 4- and 8-value steps.
LENGTHS = [1, 3, 4, 7, 8, 9, 16, 17, 31]
SPECIAL_F32_BITS = [0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x3f800000, 0xbf800000, 0x40bfffff,
                    0x40c00000, 0x40c00001, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001,
                    0xff800001, 0x7f7fffff, 0xff7fffff]


def test_standalone_relu_kernels_match_numpy_bit_for_bit(target):
    """fp32 (with -0, infinities and NaNs of both signs) and int8 ReLU/ReLU6 layers at every
    zero point class, forward and backward: on qemu-m4f these are the asm and SIMD paths."""
    rng = np.random.default_rng(7)
    script = DeviceScript()
    cases = []
    for n in LENGTHS:
        bits = rng.permutation(np.concatenate([np.array(SPECIAL_F32_BITS, np.uint32),
                                               rng.integers(0, 2**32, 32, dtype=np.uint64).astype(np.uint32)]))[:n]
        x = bits.view(np.float32)
        dy = rng.standard_normal(n).astype(np.float32)
        for kind in ("ReLU", "ReLU6"):
            name = f"f32_{kind}_{n}"
            script.add(f"layer = mt.{kind}()")
            script.add(f"x = mt.Tensor(bytes.fromhex('{x.tobytes().hex()}'), ({n},))")
            script.emit(f"{name}.y", "layer.forward(x)", (n,))
            script.emit(f"{name}.dx", f"layer.backward({tensor_expr(dy)})", (n,))
            cases.append((name, kind, x, dy))
        for zp in (-128, -5, 0, 37, 127):
            xq = rng.integers(-128, 128, n).astype(np.int8)
            dq = rng.integers(-127, 128, n).astype(np.int8)
            for kind in ("ReLU", "ReLU6"):
                name = f"s8_{kind}_{n}_{zp}"
                script.add(f"layer = mt.{kind}()")
                script.add(f"x = mt.Tensor(bytes.fromhex('{xq.tobytes().hex()}'), ({n},), dtype=mt.int8, "
                           f"scale=0.03125, zero_point={zp})")
                script.emit(f"{name}.y", "layer.forward(x)", (n,), "int8")
                script.add(f"d = mt.Tensor(bytes.fromhex('{dq.tobytes().hex()}'), ({n},), dtype=mt.int8, "
                           "scale=0.0078125)")
                script.emit(f"{name}.dx", "layer.backward(d)", (n,), "int8")
                cases.append((name, kind, (xq, zp), dq))
    results = script.run(target)
    for name, kind, x, dy in cases:
        if name.startswith("f32"):
            with np.errstate(invalid="ignore"):
                y = np.where(x < 0, np.float32(0), x)
                if kind == "ReLU6":
                    y = np.where(y > 6, np.float32(6), y)
                keep = (y > 0) & ((y < 6) if kind == "ReLU6" else True)
            dx = np.where(keep, dy, np.float32(0))
            assert np.array_equal(results[f"{name}.y"].view(np.uint32), y.view(np.uint32)), name
            assert np.array_equal(results[f"{name}.dx"].view(np.uint32), dx.view(np.uint32)), name
        else:
            xq, zp = x
            hi = min(zp + round(6 / 0.03125), 127) if kind == "ReLU6" else 127
            y = np.clip(xq.astype(np.int32), zp, hi)
            keep = (y > zp) & ((y < hi) if kind == "ReLU6" else True)
            assert np.array_equal(results[f"{name}.y"], y.astype(np.int8)), name
            assert np.array_equal(results[f"{name}.dx"], np.where(keep, dy, 0).astype(np.int8)), name
