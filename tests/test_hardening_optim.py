"""Issue 15, optimizers: state belongs to the optimizer (optim.h), checked before any kernel
writes. Two optimizers on one model each keep their own state; an optimizer given another
model, a bad .grad or a hyperparameter its constructor would refuse raises clearly; step()
after a plain backward honours the update policies. One script per target and check group.
"""

from __future__ import annotations

import numpy as np
from device_arrays import ALLOCATION_CHECK, DeviceScript, labels_expr, tensor_expr
from device_errors import assert_raises_clearly
from mcutrain.reference import functional as F
from mcutrain.reference import nn as R
from mcutrain.runner import run_on


class Script(DeviceScript):
    """A DeviceScript that keeps the printed output and accepts flat tensors (shape None) and
    tensors the script may not emit (raw `_emit` calls)."""

    def run(self, target, timeout: float = 120) -> dict[str, np.ndarray]:
        self.output = run_on(target, "\n".join(self.lines), timeout=timeout)
        results = {}
        for line in self.output.splitlines():
            if line.startswith("@"):
                name, _, data = line[1:].partition(" ")
                a = np.frombuffer(bytes.fromhex(data), dtype="<f4")
                shape = self.shapes.get(name)
                results[name] = a.reshape(shape) if shape is not None and None not in shape else a
        missing = {k for k, v in self.shapes.items() if v is not None} - set(results)
        assert not missing, f"device printed no {sorted(missing)}; output:\n{self.output}"
        return results

    def emit(self, name: str, expr: str, shape, dtype: str = "float32") -> None:
        self.shapes[name] = None if shape is None else tuple(shape)
        self.lines.append(f"_emit({name!r}, {expr})")

SETUP = [
    "import mcutrain as mt",
    "model = mt.Sequential(mt.Linear(4, 8), mt.ReLU(), mt.Linear(8, 3))",
    "other = mt.Sequential(mt.Linear(4, 8), mt.ReLU(), mt.Linear(8, 3))",
    "x = mt.zeros((2, 4)); x.fill(0.5)",
    "adam = mt.Adam(model, lr=0.01)",
    "sgd = mt.SGD(model, lr=0.1, momentum=0.9)",
    "other.forward(x)",
    "nan, inf = float('nan'), float('inf')",
    # TopK with a plain backward: the rows come from the error, which step() does not see.
    "tk = mt.Sequential(mt.Linear(4, 8), mt.ReLU(), mt.Linear(8, 3))",
    "tko = mt.SGD(tk, lr=0.1, momentum=0.9, update=mt.TopK(0.5))",
    "tk.forward(x); tk.backward(mt.zeros((2, 3)))",
    # A mixed layer updates inside backward(dy, opt); a .grad on its float bias is refused.
    "mx = mt.Linear(4, 3, dtype=mt.mixed)",
    "mxo = mt.SGD(mx, lr=0.1)",
    "mx.bias.grad = mt.zeros((3,))",
    "i8 = mt.Linear(4, 3, dtype=mt.int8)",
    # fold_into adds a bias the optimizer was not built for.
    "cv = mt.Sequential(mt.Conv2d(1, 2, 3, bias=False))",
    "cvo = mt.SGD(cv, lr=0.1, momentum=0.9)",
    "mt.BatchNorm2d(2).fold_into(cv[0])",
    "xc = mt.zeros((1, 4, 4, 1))",
]

CASES = [
    ("other.train_step(x, [0, 1], mt.cross_entropy, adam)", "ValueError", "built for another model"),
    ("other.train_step(x, [0, 1], mt.cross_entropy, sgd)", "ValueError", "built for another model"),
    ("other.backward(mt.zeros((2, 3)), adam)", "ValueError", "built for another model"),
    ("model.train_step(x, [0, 1], mt.cross_entropy, 3)", "TypeError", "mt.SGD or mt.Adam"),
    ("tko.step()", "ValueError", "TopK"),
    ("mxo.step()", "ValueError", "mixed layers update in train_step"),
    ("i8.weight.grad = mt.zeros((3, 4))", "ValueError", "int8"),
    ("model[0].weight.grad = mt.zeros((4, 8))", "ValueError", "float32 (8, 4)"),
    ("model[0].weight.grad = mt.zeros((8, 4), dtype=mt.float16)", "ValueError", "float16"),
    ("model[0].weight.grad = 3", "TypeError", "Tensor.grad"),
    ("cv.train_step(xc, mt.zeros((1, 2, 2, 2)), mt.mse, cvo)", "ValueError", "parameters changed"),
    ("mt.Adam(mt.Sequential(mt.Convert(mt.int8), mt.Linear(4, 3, dtype=mt.int8)))", "ValueError",
     "without momentum"),
]
# Settable hyperparameters validate as their constructors do; the constructors refuse
# NaN and infinities everywhere.
for bad in ("nan", "0", "-1", "inf"):
    CASES += [
        (f"adam.lr = {bad}", "ValueError", "Adam: lr"),
        (f"sgd.lr = {bad}", "ValueError", "SGD: lr"),
        (f"mt.Adam(model, lr={bad})", "ValueError", "Adam: lr"),
        (f"mt.SGD(model, lr={bad})", "ValueError", "SGD: lr"),
    ]
for bad in ("nan", "inf", "-1"):
    CASES += [
        (f"mt.SGD(model, lr=0.1, momentum={bad})", "ValueError", "SGD: momentum"),
        (f"mt.SGD(model, lr=0.1, weight_decay={bad})", "ValueError", "SGD: weight_decay"),
        (f"mt.Adam(model, betas=({bad}, 0.999))", "ValueError", "Adam: betas[0]"),
        (f"mt.Adam(model, betas=(0.9, {bad}))", "ValueError", "Adam: betas[1]"),
        (f"mt.Adam(model, eps={bad})", "ValueError", "Adam: eps"),
        (f"mt.Adam(model, weight_decay={bad})", "ValueError", "Adam: weight_decay"),
    ]
CASES += [
    ("mt.SGD(model, lr=0.1, momentum=1)", "ValueError", "SGD: momentum"),
    ("mt.Adam(model, betas=(1, 0.999))", "ValueError", "Adam: betas[0]"),
    ("mt.Adam(model, eps=0)", "ValueError", "Adam: eps"),
]


def test_optimizer_misuse_raises_clearly(target):
    out = assert_raises_clearly(
        target, CASES, SETUP,
        # Both optimizers of `model` still work, and the refused setters changed nothing.
        after="model.train_step(x, [0, 1], mt.cross_entropy, adam) > 0, "
              "model.train_step(x, [0, 1], mt.cross_entropy, sgd) > 0, "
              "abs(adam.lr - 0.01) < 1e-6, abs(sgd.lr - 0.1) < 1e-6")
    assert out[-1] == "True True True True", out[-1]


def _mlp_ref() -> R.Sequential:
    return R.Sequential(R.Linear(5, 6), R.ReLU(), R.Linear(6, 3))


def test_two_optimizers_on_one_model_keep_their_own_state(target):
    """Adam and SGD with momentum alternate fused train_steps on one model: each keeps its
    own state, both match the float64 reference (whose optimizers own their state), and the
    steps allocate nothing."""
    rng = np.random.default_rng(5)
    ref = _mlp_ref()
    state = {k: np.asarray(v, np.float32) for k, v in ref.state_dict().items()}
    ref_adam = R.Adam(ref, lr=0.01, weight_decay=0.001)
    ref_sgd = R.SGD(ref, lr=0.05, momentum=0.9, weight_decay=0.01)
    batches = [(rng.standard_normal((3, 5)).astype(np.float32), rng.integers(0, 3, 3)) for _ in range(6)]

    script = Script()
    script.add("import gc")
    script.add("model = mt.Sequential(mt.Linear(5, 6), mt.ReLU(), mt.Linear(6, 3))")
    items = ", ".join(f"{k!r}: {tensor_expr(v)}" for k, v in state.items())
    script.add(f"model.load_state_dict({{{items}}})")
    script.add("adam = mt.Adam(model, lr=0.01, weight_decay=0.001)")
    script.add("sgd = mt.SGD(model, lr=0.05, momentum=0.9, weight_decay=0.01)")
    script.add("losses = []")
    for i, (x, y) in enumerate(batches):
        opt = "adam" if i % 2 == 0 else "sgd"
        script.add(f"losses.append(model.train_step({tensor_expr(x)}, {labels_expr(y)}, mt.cross_entropy, {opt}))")
    script.emit("losses", "mt.Tensor(losses)", (len(batches),))
    script.add("sd = model.state_dict()")
    for k, v in state.items():
        script.emit(k, f"sd[{k!r}]", v.shape)
    script.add("print('memory', adam.memory(), sgd.memory(), model.memory()['optimizer'])")
    # Allocation check on copies: the compared state is emitted above.
    script.add(f"x = {tensor_expr(batches[0][0])}; y = {labels_expr(batches[0][1])}; loss = mt.cross_entropy")
    script.add("opt = adam")
    script.add(ALLOCATION_CHECK)
    script.add("opt = sgd")
    script.add(ALLOCATION_CHECK)
    results = script.run(target)

    ref_losses = []
    for i, (x, y) in enumerate(batches):
        opt = ref_adam if i % 2 == 0 else ref_sgd
        ref_losses.append(ref.train_step(x.astype(np.float64), y, F.cross_entropy, opt))
    np.testing.assert_allclose(results["losses"], ref_losses, rtol=1e-4)
    for k, v in ref.state_dict().items():
        assert np.abs(results[k] - v).max() <= 1e-4 * max(1.0, float(np.abs(v).max())), k
    params = 6 * 5 + 6 + 3 * 6 + 3
    assert f"memory {12 * params} {4 * params} {4 * params}" in script.output, script.output
    grown = [int(line.split()[1]) for line in script.output.splitlines() if line.startswith("grown")]
    assert len(grown) == 2
    for g in grown:
        # The unix port boxes the returned float (one 32-byte block per step).
        assert g <= (10 * 32 if target.name == "unix" else 0), grown


def test_step_after_plain_backward_honours_the_update_policy(target):
    """step() after backward(): ChannelRatio updates its leading rows only (with state for
    those rows), BiasOnly the biases, a frozen layer nothing; a policy that grows after an
    optimizer was built re-sizes that optimizer's state instead of overflowing it."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    dy = rng.standard_normal((2, 3)).astype(np.float32)
    dy6 = rng.standard_normal((2, 6)).astype(np.float32)
    script = Script()
    script.add(f"x = {tensor_expr(x)}; dy = {tensor_expr(dy)}; dy6 = {tensor_expr(dy6)}")
    for name, update in (("ratio", "mt.ChannelRatio(0.5)"), ("bias", "mt.BiasOnly()"), ("frozen", "mt.Frozen()")):
        script.add(f"m = mt.Linear(4, 6 if {name!r} == 'ratio' else 3)")
        script.add(f"o = mt.SGD(m, lr=0.5, momentum=0.9, update={update})")
        script.add("w0 = mt.Tensor(bytes(memoryview(m.weight)), m.weight.shape)")
        script.add("b0 = mt.Tensor(bytes(memoryview(m.bias)), m.bias.shape)")
        script.add("m.forward(x)")
        script.add("m.backward(dy6 if m.output.shape[1] == 6 else dy)")
        script.add("g = m.weight.grad")
        script.add("gb = m.bias.grad")
        script.add("o.step()")
        script.add("o.step()")  # the second step uses the (compact) velocity
        for t in ("w0", "b0", "m.weight", "m.bias"):
            script.emit(f"{name}_{t}", t, None)
        script.add(f"if g is not None: _emit('{name}_g', g); _emit('{name}_gb', gb)")
        script.add(f"print('{name} memory', o.memory())")
    # A compact ChannelRatio state stays compact when another optimizer sets Full: policies
    # belong to the optimizer given them (F6; this test used to expect a's state to grow).
    script.add("m = mt.Sequential(mt.Linear(4, 8), mt.ReLU(), mt.Linear(8, 3))")
    script.add("a = mt.SGD(m, lr=0.1, momentum=0.9, update=mt.ChannelRatio(0.25))")
    script.add("am = a.memory()")
    script.add("b = mt.Adam(m, lr=0.01, update=mt.Full())")
    script.add("l1 = m.train_step(x, [0, 1], mt.cross_entropy, a)")
    script.add("l2 = m.train_step(x, [0, 1], mt.cross_entropy, b)")
    script.add("m.forward(x); m.backward(mt.zeros((2, 3))); a.step(); b.step()")
    script.add("print('grown', am, a.memory(), b.memory(), l1 > 0, l2 > 0)")
    # Mixed layers get no .grad from a plain backward (they update inside backward(dy, opt)).
    script.add("mx = mt.Linear(4, 3, dtype=mt.mixed)")
    script.add("mx.forward(x)")
    script.add("try:\n    mx.backward(dy)\nexcept ValueError as e:\n    print('mixed', e)")
    script.add("print('mixed grad', mx.weight.grad, mx.bias.grad)")
    results = script.run(target)
    out = script.output

    lr, mom = 0.5, 0.9
    # ChannelRatio(0.5) of 6 rows: rows 0-2 take two momentum steps, rows 3-5 stay.
    g, gb = results["ratio_g"].reshape(6, 4), results["ratio_gb"]
    w0, b0 = results["ratio_w0"].reshape(6, 4), results["ratio_b0"]
    w, b = results["ratio_m.weight"].reshape(6, 4), results["ratio_m.bias"]
    # Two steps with a constant gradient: v1 = g, v2 = mom * g + g.
    np.testing.assert_allclose(w[:3], w0[:3] - lr * g[:3] * (2 + mom), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b[:3], b0[:3] - lr * gb[:3] * (2 + mom), rtol=1e-5, atol=1e-6)
    assert np.array_equal(w[3:], w0[3:]) and np.array_equal(b[3:], b0[3:])
    assert "ratio memory 60" in out  # velocity for 3 rows of 4 weights + 3 biases
    # BiasOnly: the weight stays, the bias steps.
    assert np.array_equal(results["bias_m.weight"], results["bias_w0"])
    np.testing.assert_allclose(results["bias_m.bias"], results["bias_b0"] - lr * results["bias_gb"] * (2 + mom),
                               rtol=1e-5, atol=1e-6)
    # Frozen: no .grad, nothing changes.
    assert "frozen_g" not in results
    assert np.array_equal(results["frozen_m.weight"], results["frozen_w0"])
    assert np.array_equal(results["frozen_m.bias"], results["frozen_b0"])
    # ChannelRatio(0.25): state for 2 of 8 rows and 1 of 3, kept after Adam(update=Full()).
    params = 8 * 4 + 8 + 3 * 8 + 3
    compact = 4 * (2 * 4 + 2 + 1 * 8 + 1)
    assert f"grown {compact} {compact} {12 * params} True True" in out, out
    assert "mixed grad None None" in out, out


POLICY_SCRIPT = """
import mcutrain as mt
x = mt.zeros((2, 8)); x.fill(-1.25)
def rows(m):
    return sorted(m.update_stats()['updated'].items())
# F5: an optimizer for a layer inside a model is refused; one built before the layer
# joined the model changes nothing the model's optimizers do.
lin = mt.Linear(8, 10)
early = mt.SGD(lin, 0.01, update=mt.TopK(0.1, 0.5))
m = mt.Sequential(lin, mt.ReLU(), mt.Linear(10, 3))
m.train_step(x, [0, 1], mt.cross_entropy, mt.SGD(m, 0.01))
try:
    mt.SGD(lin, 0.01, update=mt.TopK(0.1, 0.5)); print('F5 accepted')
except ValueError as e:
    print('F5', e)
try:
    lin.train_step(x, mt.zeros((2, 10)), mt.mse, early); print('F5 early accepted')
except ValueError as e:
    print('F5 early', e)
m.train_step(x, [0, 1], mt.cross_entropy, mt.Adam(m))
print('F5 full', rows(m))
# F6: a policy stays with its optimizer; an optimizer without update= updates in full.
s = mt.SGD(m, 0.01, momentum=0.9, update=mt.ChannelRatio(0.2))
a = mt.Adam(m)
m.train_step(x, [0, 1], mt.cross_entropy, a); print('F6 adam', rows(m))
m.train_step(x, [0, 1], mt.cross_entropy, s); print('F6 sgd', rows(m))
m.train_step(x, [0, 1], mt.cross_entropy, a); print('F6 adam', rows(m))
t = mt.SGD(m, 0.01, momentum=0.9, update=mt.TopK(0.1, 0.5))
m.forward(x)
try:
    m.backward(mt.cross_entropy.backward(m.output, [0, 1]), s); print('F6 backward accepted')
except ValueError as e:
    print('F6 backward', e)
m.forward(x); m.backward(mt.cross_entropy.backward(m.output, [0, 1]), s); print('F6 backward', rows(m))
# The .grad path: a plain backward, then step() of each (each with its own policy).
w0 = m[0].weight.tolist()
m.forward(x); m.backward(mt.cross_entropy.backward(m.output, [0, 1]))
o = mt.SGD(m, 0.01, momentum=0.9)
o.step(); s.step(); a.step()
print('F6 grad steps', o.memory(), s.memory(), a.memory(), m[0].weight.tolist() != w0)
try:
    t.step(); print('F6 topk step accepted')
except ValueError as e:
    print('F6 topk step', e)
# F9: ChannelRatio + backward() + step() with Adam and SGD momentum.
for mk in (lambda m: mt.Adam(m, update=mt.ChannelRatio(0.25)),
           lambda m: mt.SGD(m, 0.01, momentum=0.9, update=mt.ChannelRatio(0.25))):
    c = mt.Sequential(mt.Conv2d(2, 4, 3, padding=1), mt.ReLU(), mt.GlobalAvgPool(), mt.Flatten(), mt.Linear(4, 3))
    co = mk(c)
    c.forward(mt.zeros((1, 6, 5, 2)))
    c.backward(mt.cross_entropy.backward(c.output, [0]))
    co.step(); co.step()
    print('F9', co.memory())
# A frombuffer .grad whose bytearray moved: the kernels write where it is now.
b = bytearray(4 * 80)
g = mt.frombuffer(b, (10, 8))
m[0].weight.grad = g
b.extend(bytes(4000))
m.forward(x); m.backward(mt.cross_entropy.backward(m.output, [0, 1])); o.zero_grad()
m.forward(x); m.backward(mt.cross_entropy.backward(m.output, [0, 1])); o.step()
print('grad view', sum(abs(v) for v in memoryview(b)[:320]) > 0, g.shape)
# F4, F7: another model's optimizer (a float16 model, a lone layer) is refused before any pass.
fa = mt.Sequential(mt.Conv2d(1, 2, 3, stride=2, padding=1), mt.BatchNorm2d(2), mt.ReLU(),
                   mt.GlobalAvgPool(), mt.Flatten(), mt.Linear(2, 3))
fb = mt.Sequential(mt.Convert(mt.float16), mt.Conv2d(4, 8, 3, padding=1, dtype=mt.float16), mt.ReLU(),
                   mt.GlobalAvgPool(), mt.Flatten(), mt.Linear(8, 3, dtype=mt.float16), mt.Convert(mt.float32))
fo = mt.Adam(fa)
for call in (lambda: fb.train_step(mt.zeros((3, 3, 3, 4)), [1, 2, 1], mt.cross_entropy, fo),
             lambda: fb.backward(mt.cross_entropy.backward(fb.forward(mt.zeros((3, 3, 3, 4))), [1, 2, 1]), fo),
             lambda: mt.Linear(3, 3).train_step(mt.zeros((1, 3)), mt.zeros((1, 3)), mt.mse, mt.SGD(fa, 0.01, momentum=0.9))):
    try:
        call(); print('F4 accepted')
    except ValueError as e:
        print('F4', e)
print('done')
"""


def test_update_policies_belong_to_their_optimizer(target):
    """F5, F6, F9 of tests/fuzz/FINDINGS.md: an optimizer for a layer inside a model is
    refused; a policy applies to the optimizer given it only (the others update in full);
    backward(dy, opt) under another optimizer's policy asks for a new forward; ChannelRatio
    with backward() + step() stays inside its state; a moved frombuffer .grad is followed."""
    out = run_on(target, POLICY_SCRIPT, timeout=120)
    lines = out.splitlines()
    assert "done" in lines, out
    assert "F5 SGD: this Linear is part of a model: optimize the model" in lines, out
    assert any(l.startswith("F5 early") and "part of a model" in l for l in lines), out
    full = "[('0', (10, 10)), ('2', (3, 3))]"
    part = "[('0', (2, 10)), ('2', (1, 3))]"
    assert f"F5 full {full}" in lines, out
    assert [l for l in lines if l.startswith("F6 adam") or l.startswith("F6 sgd")] == [
        f"F6 adam {full}", f"F6 sgd {part}", f"F6 adam {full}"], out
    assert "F6 backward backward: SGD's update policy is new here: run forward again" in lines, out
    assert f"F6 backward {part}" in lines, out
    params = 10 * 8 + 10 + 3 * 10 + 3
    assert f"F6 grad steps {4 * params} {4 * (2 * 8 + 2 + 1 * 10 + 1)} {12 * params} True" in lines, out
    assert any(l.startswith("F6 topk step") and "TopK" in l for l in lines), out
    conv_ratio = 1 * 3 * 3 * 2 + 1 + 1 * 4 + 1
    assert [l for l in lines if l.startswith("F9")] == [f"F9 {12 * conv_ratio}", f"F9 {4 * conv_ratio}"], out
    assert "grad view True (10, 8)" in lines, out
    f4 = [l for l in lines if l.startswith("F4")]
    assert len(f4) == 3 and all("was built for another model" in l for l in f4), out
