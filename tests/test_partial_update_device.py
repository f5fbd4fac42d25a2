"""Partial-update policies on the device against the numpy reference (reference/partial.py):
top-k selection, untouched weights bit-identical, the optimizer state and work they save,
and clear errors for bad policies."""

from __future__ import annotations

import numpy as np
import pytest
from device_arrays import DeviceScript, labels_expr, tensor_expr
from device_errors import assert_raises_clearly
from mcutrain.reference import nn as R
from mcutrain.reference.partial import partial_sgd_step, topk_count, topk_indices
from mcutrain.runner import run_on

MODEL_SRC = ("mt.Sequential(mt.Conv2d(3, 8, 3, padding=1), mt.ReLU(), mt.Conv2d(8, 12, 3, stride=2, padding=1), "
             "mt.ReLU(), mt.Flatten(), mt.Linear(12 * 9, 10))")


def reference_model() -> R.Sequential:
    return R.Sequential(R.Conv2d(3, 8, 3, padding=1), R.ReLU(), R.Conv2d(8, 12, 3, stride=2, padding=1),
                        R.ReLU(), R.Flatten(), R.Linear(12 * 9, 10))


def test_topk_count_follows_the_formula():
    # k = floor(min(lmin + eps (lmax - lmin), 1) N), at least one structure
    assert topk_count(32, 0.1, 0.1, 1.0) == 3
    assert topk_count(32, 0.1, 0.5, 0.5) == 9
    assert topk_count(10, 0.05, 0.05, 0.3) == 1
    assert topk_count(8, 0.5, 1.0, 2.0) == 8
    assert list(topk_indices(np.array([1.0, 3.0, 3.0, 0.5, 2.0]), 3)) == [1, 2, 4]


@pytest.mark.parametrize("lmin, lmax", [(0.25, 0.25), (0.1, 0.6)])
def test_topk_step_matches_reference_and_leaves_the_rest_bit_identical(target, lmin, lmax):
    rng = np.random.default_rng(21)
    ref = reference_model()
    state = {k: np.asarray(v, np.float32) for k, v in ref.state_dict().items()}
    ref.load_state_dict(state)
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    y = rng.integers(0, 10, 2)

    script = DeviceScript()
    script.add(f"model = {MODEL_SRC}")
    items = ", ".join(f"{k!r}: {tensor_expr(v)}" for k, v in state.items())
    script.add(f"model.load_state_dict({{{items}}})")
    script.add(f"opt = mt.SGD(model, lr=0.5, update=mt.TopK({lmin}, {lmax}))")
    # The first step's loss is the largest seen, so eps = 1 and k uses lmax.
    script.add(f"loss = model.train_step({tensor_expr(x)}, {labels_expr(y)}, mt.cross_entropy, opt)")
    script.add("sd = model.state_dict()")
    for k, v in state.items():
        script.emit(k, f"sd[{k!r}]", v.shape)
    for i in (0, 2, 5):
        k = topk_count(state[f"{i}.weight"].shape[0], lmin, lmax, 1.0)
        script.emit(f"selected{i}", f"mt.Tensor(model[{i}].selected)", (k,))
    results = script.run(target)

    _, selected = partial_sgd_step(ref, x.astype(np.float64), y, lr=0.5, lmin=lmin, lmax=lmax, eps=1.0)
    for i, idx in selected.items():
        # The device picks the reference's top-k (on this data no two error magnitudes
        # are within fp32 rounding of each other), and updates exactly those.
        assert list(results[f"selected{i}"].astype(int)) == list(idx), f"layer {i}: selection differs"
        n = state[f"{i}.weight"].shape[0]
        rest = np.setdiff1d(np.arange(n), idx)
        for name in ("weight", "bias"):
            key = f"{i}.{name}"
            got = results[key]
            # Unselected structures: exactly the bytes they had.
            assert got[rest].tobytes() == state[key][rest].tobytes(), f"{key}: unselected rows changed"
            # Selected ones: the reference update (fp32 gradient sums vs float64).
            assert np.abs(got[idx] - ref.state_dict()[key][idx]).max() <= 1e-4, f"{key}: selected rows differ"
            changed = np.flatnonzero(np.any((got != state[key]).reshape(n, -1), axis=1))
            assert set(changed) <= set(idx), f"{key}: rows {changed} changed, selected {idx}"


def test_topk_max_ratio_none_is_a_fixed_ratio(target):
    # As the fleet's device script writes it for "--update topk:MIN" (fleet/device_round.py).
    out = run_on(target, "import mcutrain as mt\nprint(mt.TopK(0.25, None), mt.TopK(0.25))")
    assert out.split() == ["TopK(0.250000,", "0.250000)", "TopK(0.250000,", "0.250000)"]


def test_channel_ratio_keeps_state_only_for_updated_rows(target):
    out = run_on(target, """
import mcutrain as mt
model = mt.Sequential(mt.Conv2d(3, 8, 3, padding=1), mt.ReLU(), mt.Flatten(), mt.Linear(8 * 16, 10))
full = mt.SGD(model, lr=0.1, momentum=0.9).memory()
part = mt.SGD(model, lr=0.1, momentum=0.9, update=mt.ChannelRatio(0.5))
x = mt.zeros((1, 4, 4, 3)); x.fill(0.5)
before = [bytes(memoryview(t)) for t in model.parameters()]
model.train_step(x, 3, mt.cross_entropy, part)
after = [bytes(memoryview(t)) for t in model.parameters()]
print(full, part.memory(), model.memory()['optimizer'])
w0, w1 = before[0], after[0]
row = len(w0) // 8
print([i for i in range(8) if w0[i * row:(i + 1) * row] != w1[i * row:(i + 1) * row]])
print(model.update_stats()['updated'])
""")
    lines = out.splitlines()
    full, part, reported = (int(v) for v in lines[0].split())
    conv = 8 * 27 + 8
    linear = 10 * 128 + 10
    assert full == 4 * (conv + linear)
    assert part == reported == 4 * (4 * 27 + 4 + 5 * 128 + 5)  # momentum for half the rows only
    assert set(eval(lines[1])) <= {0, 1, 2, 3}
    assert "'0': (4, 8)" in lines[2] and "'3': (5, 10)" in lines[2]


def test_policies_freeze_and_skip_backward(target):
    out = run_on(target, """
import mcutrain as mt
model = mt.Sequential(mt.Conv2d(1, 4, 3, padding=1), mt.ReLU(), mt.Conv2d(4, 4, 3, padding=1), mt.ReLU(),
                      mt.GlobalAvgPool(), mt.Linear(4, 3))
x = mt.zeros((1, 6, 6, 1)); x.fill(0.3)
opt = mt.SGD(model, lr=0.1, update=mt.LastLayers(1))
print([layer.trainable for layer in model], model.macs(x.shape)['backward'])
opt = mt.SGD(model, lr=0.1, update={'0': mt.Frozen(), '2': mt.BiasOnly(), '5': mt.Full()})
w2 = bytes(memoryview(model[2].weight)); b2 = bytes(memoryview(model[2].bias))
model.train_step(x, 1, mt.cross_entropy, opt)
print(bytes(memoryview(model[2].weight)) == w2, bytes(memoryview(model[2].bias)) != b2, opt.memory())
""")
    lines = out.splitlines()
    assert lines[0].startswith("[False, True, False, True, True, True]")
    assert int(lines[0].split()[-1]) == 4 * 3  # only the head's weight gradient
    assert lines[1].split() == ["True", "True", "0"]


BAD_POLICIES = [
    ("mt.TopK(0)", "ValueError", "(0, 1]"),
    ("mt.TopK(1.5)", "ValueError", "(0, 1]"),
    ("mt.TopK(0.5, 0.2)", "ValueError", "max_ratio"),
    ("mt.ChannelRatio(-0.1)", "ValueError", "(0, 1]"),
    ("mt.LastLayers(0)", "ValueError", "LastLayers"),
    ("mt.SGD(model, lr=0.1, update=mt.LastLayers(3))", "ValueError", "only 2"),
    ("mt.SGD(model, lr=0.1, update={'7': mt.Frozen()})", "ValueError", "matches no layer"),
    ("mt.SGD(model, lr=0.1, update={0: mt.Frozen()})", "TypeError", "names"),
    ("mt.SGD(model, lr=0.1, update='topk')", "TypeError", "policy"),
    ("mt.SGD(grouped, lr=0.1, update=mt.TopK(0.5))", "ValueError", "groups"),
]


def test_bad_policies_raise_clear_errors(target):
    assert_raises_clearly(target, BAD_POLICIES, [
        "import mcutrain as mt",
        "model = mt.Sequential(mt.Linear(4, 4), mt.ReLU(), mt.Linear(4, 2))",
        "grouped = mt.Sequential(mt.Conv2d(4, 4, 3, groups=2))"])


F16_LAYERS = [  # (source with {d} for the dtype argument, input shape, output channels)
    ("mt.Linear(20, 8{d})", (3, 20), 8),
    ("mt.Conv2d(3, 8, 3, padding=1{d})", (2, 5, 5, 3), 8),
    ("mt.Conv2d(6, 6, 3, padding=1, groups=6{d})", (1, 4, 4, 6), 6),
    ("mt.Conv1d(4, 8, 3, stride=2{d})", (2, 9, 4), 8),
]

F16_SCRIPT = """
mt.seed(5)
a = {f32}
h = {f16}
# Weights on a 1/256 grid: exact in fp16, so both layers start from the same values.
sd = {{k: mt.Tensor([round(v * 256) / 256 for v in t.reshape((t.size,)).tolist()], t.shape)
      for k, t in a.state_dict().items()}}
a.load_state_dict(sd)
h.load_state_dict({{k: mt.Convert(mt.float16)(t) for k, t in sd.items()}})
x = {x}
oa = mt.SGD(a, lr=0.125, update={policy})
oh = mt.SGD(h, lr=0.125, update={policy})
ya = a.forward(x)
h.forward(mt.Convert(mt.float16)(x))
n = 1
for s in ya.shape:
    n *= s
dy = mt.Tensor([((i * 7919) % 61 - 30) / 64 for i in range(n)], ya.shape)
dxa = a.backward(dy, oa)
dxh = h.backward(mt.Convert(mt.float16)(dy), oh)
f32 = mt.Convert(mt.float32)
print(repr({{'sel': (a.selected, h.selected), 'w0': sd['weight'].tolist(), 'b0': sd['bias'].tolist(),
       'wa': a.weight.tolist(), 'wh': f32(h.weight).tolist(), 'ba': a.bias.tolist(), 'bh': f32(h.bias).tolist(),
       'dxa': dxa.tolist(), 'dxh': f32(dxh).tolist()}}))
"""


@pytest.mark.parametrize("layer_src, x_shape, out_c", F16_LAYERS)
@pytest.mark.parametrize("policy", ["mt.TopK(0.25, 0.5)", "mt.ChannelRatio(0.5)", "mt.BiasOnly()"])
def test_float16_policies_follow_the_float32_layer(target, layer_src, x_shape, out_c, policy):
    # The same layer in float16 and float32 takes the same policy step: the same selection,
    # untouched rows bit-identical, selected rows equal up to fp16 rounding.
    rng = np.random.default_rng(len(layer_src) + len(policy))
    x = (np.round(rng.uniform(-1, 1, x_shape) * 64) / 64).astype(np.float32)
    source = "import mcutrain as mt\n" + F16_SCRIPT.format(
        f32=layer_src.format(d=""), f16=layer_src.format(d=", dtype=mt.float16"), x=tensor_expr(x), policy=policy)
    got = eval(run_on(target, source).strip().splitlines()[-1])
    sel_a, sel_h = got["sel"]
    assert (list(sel_a) if sel_a is not None else None) == (list(sel_h) if sel_h is not None else None)
    w0, wa, wh = (np.array(got[k], np.float64).reshape(out_c, -1) for k in ("w0", "wa", "wh"))
    b0, ba, bh = (np.array(got[k], np.float64) for k in ("b0", "ba", "bh"))
    rest = [o for o in range(out_c) if np.array_equal(wa[o], w0[o]) and ba[o] == b0[o]]
    assert np.array_equal(wh[rest], w0[rest]) and np.array_equal(bh[rest], b0[rest])
    if policy != "mt.BiasOnly()":
        assert len(rest) < out_c
    half_ulp = lambda v: np.maximum(np.abs(v), 2.0**-14) * 2.0**-10  # noqa: E731 (stochastic: one ulp)
    assert np.all(np.abs(wh - wa) <= half_ulp(wa) + 1e-7)
    assert np.all(np.abs(bh - ba) <= half_ulp(ba) + 1e-7)
    dxa, dxh = np.array(got["dxa"], np.float64), np.array(got["dxh"], np.float64)
    assert np.all(np.abs(dxh - dxa) <= half_ulp(dxa) + 1e-3)
