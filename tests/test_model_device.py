"""Models on the device: training steps against the numpy reference, frozen layers,
no allocation in the hot loop, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from device_arrays import DeviceScript, labels_expr, tensor_expr
from device_errors import assert_raises_clearly
from mcutrain.reference import functional as F
from mcutrain.reference import nn as R
from mcutrain.runner import run_on

pytestmark = pytest.mark.fpu_kernels  # also on qemu-rv32f (conftest.py)

# The same residual CNN on both sides (device source, reference constructor).
RESNET_SRC = """mt.Sequential(
    mt.Conv2d(3, 4, 3, padding=1), mt.BatchNorm2d(4), mt.ReLU(),
    mt.Residual(mt.Sequential(mt.Conv2d(4, 4, 3, padding=1), mt.ReLU(), mt.Conv2d(4, 4, 3, padding=1, groups=4))),
    mt.ReLU(),
    mt.Residual(mt.Sequential(mt.Conv2d(4, 6, 3, stride=2, padding=1), mt.ReLU()), shortcut=mt.Conv2d(4, 6, 1, stride=2)),
    mt.MaxPool2d(2), mt.Flatten(), mt.Linear(24, 5))"""


def reference_resnet() -> R.Sequential:
    return R.Sequential(
        R.Conv2d(3, 4, 3, padding=1), R.BatchNorm2d(4), R.ReLU(),
        R.Residual(R.Sequential(R.Conv2d(4, 4, 3, padding=1), R.ReLU(), R.Conv2d(4, 4, 3, padding=1, groups=4))),
        R.ReLU(),
        R.Residual(R.Sequential(R.Conv2d(4, 6, 3, stride=2, padding=1), R.ReLU()), shortcut=R.Conv2d(4, 6, 1, stride=2)),
        R.MaxPool2d(2), R.Flatten(), R.Linear(24, 5))


def _load_state(script: DeviceScript, state: dict[str, np.ndarray]) -> None:
    items = ", ".join(f"{k!r}: {tensor_expr(v)}" for k, v in state.items())
    script.add(f"model.load_state_dict({{{items}}})")


@pytest.mark.parametrize("optimizer", ["sgd", "sgd_momentum", "adam"])
def test_residual_cnn_train_steps_match_reference(target, optimizer):
    rng = np.random.default_rng(11)
    ref = reference_resnet()
    state = {k: np.asarray(v, np.float32) for k, v in ref.state_dict().items()}
    opt_args = {"sgd": "lr=0.05", "sgd_momentum": "lr=0.05, momentum=0.9, weight_decay=0.01",
                "adam": "lr=0.01, weight_decay=0.001"}[optimizer]
    ref_opt = {"sgd": lambda m: R.SGD(m, lr=0.05),
               "sgd_momentum": lambda m: R.SGD(m, lr=0.05, momentum=0.9, weight_decay=0.01),
               "adam": lambda m: R.Adam(m, lr=0.01, weight_decay=0.001)}[optimizer](ref)
    batches = [(rng.standard_normal((3, 8, 8, 3)).astype(np.float32), rng.integers(0, 5, 3)) for _ in range(3)]

    script = DeviceScript()
    script.add(f"model = {RESNET_SRC}")
    _load_state(script, state)
    script.add(f"opt = mt.{'Adam' if optimizer == 'adam' else 'SGD'}(model, {opt_args})")
    script.add("losses = []")
    for x, y in batches:
        script.add(f"losses.append(model.train_step({tensor_expr(x)}, {labels_expr(y)}, mt.cross_entropy, opt))")
    script.emit("losses", "mt.Tensor(losses)", (len(batches),))
    script.add("sd = model.state_dict()")
    for k, v in state.items():
        script.emit(k, f"sd[{k!r}]", v.shape)
    results = script.run(target)

    ref_losses = [ref.train_step(x.astype(np.float64), y, F.cross_entropy, ref_opt) for x, y in batches]
    # Three steps of a 9-layer net in fp32 against float64: differences start at fp32
    # rounding (~1e-7) and grow through the steps; 1e-4 relative to the parameter scale
    # is far below what one wrong gradient term would cause (~1e-2).
    np.testing.assert_allclose(results["losses"], ref_losses, rtol=1e-4)
    for k, v in ref.state_dict().items():
        scale = max(1.0, float(np.abs(v).max()))
        assert np.abs(results[k] - v).max() <= 1e-4 * scale, f"{k} differs after 3 {optimizer} steps"


def test_frozen_prefix_is_unchanged_and_costs_no_backward(target):
    out = run_on(target, """
import mcutrain as mt
model = mt.Sequential(mt.Conv2d(1, 4, 3, padding=1), mt.ReLU(), mt.Conv2d(4, 4, 3, padding=1), mt.ReLU(),
                      mt.GlobalAvgPool(), mt.Linear(4, 3))
x = mt.zeros((2, 6, 6, 1))
x.fill(0.5)
full = model.macs(x.shape)
model[0].trainable = False
model[2].trainable = False
frozen_before = bytes(memoryview(model[2].weight))
head_before = bytes(memoryview(model[5].weight))
opt = mt.SGD(model, lr=0.1)
model.train_step(x, [0, 1], mt.cross_entropy, opt)
print(bytes(memoryview(model[2].weight)) == frozen_before, bytes(memoryview(model[5].weight)) != head_before)
part = model.macs()
print(full['backward'], part['backward'], full['forward'] == part['forward'])
""")
    same, changed, full_bwd, part_bwd, fwd_same = out.split()
    assert same == "True" and changed == "True"
    assert fwd_same == "True"
    # Only the Linear head trains: its weight gradient (2 * 4 * 3 MACs) and nothing below.
    assert int(part_bwd) == 2 * 4 * 3
    assert int(full_bwd) > int(part_bwd)


def test_train_step_allocates_nothing(target):
    out = run_on(target, """
import gc, mcutrain as mt
def run():
    model = mt.Sequential(mt.Conv2d(2, 4, 3, padding=1), mt.BatchNorm2d(4), mt.ReLU(), mt.MaxPool2d(2),
                          mt.Residual(mt.Sequential(mt.Conv2d(4, 4, 3, padding=1, groups=4), mt.ReLU6())),
                          mt.Flatten(), mt.Linear(36, 3))
    opt = mt.SGD(model, lr=0.01, momentum=0.9)
    x = mt.zeros((2, 6, 6, 2))
    y = [0, 2]
    model.train_step(x, y, mt.cross_entropy, opt)
    loss = mt.cross_entropy
    gc.collect()
    before = gc.mem_alloc()
    for _ in range(10):
        model.train_step(x, y, loss, opt)
    print(gc.mem_alloc() - before)
run()
""")
    grown = int(out.split()[-1])
    if target.name == "unix":
        # The unix port boxes floats: the returned loss is one heap object (one 32-byte
        # GC block on 64-bit) per step; nothing else may allocate.
        assert grown <= 10 * 32, grown
    else:
        assert grown == 0, f"train_step allocated {grown} bytes over 10 steps"


def test_batch_of_one_without_batch_dimension(target):
    out = run_on(target, """
import mcutrain as mt
model = mt.Sequential(mt.Conv2d(1, 2, 3), mt.Flatten(), mt.Linear(4, 2))
x = mt.zeros((4, 3, 1))
print(model.predict(x).shape, model.train_step(x, 1, mt.cross_entropy, mt.SGD(model, lr=0.1)) > 0)
""")
    assert out.split() == ["(1,", "2)", "True"]


BAD_INPUTS = [
    ("mt.Linear(4, 3).forward(mt.zeros((2, 5)))", "ValueError", "Linear"),
    ("mt.Linear(4, 3).forward(None)", "TypeError", "Tensor"),
    ("mt.Linear(4, 3).forward([1, 2, 3, 4])", "TypeError", "Tensor"),
    ("mt.Linear(0, 3)", "ValueError", "Linear"),
    ("mt.Linear(-1, 3)", "ValueError", "Linear"),
    ("mt.Conv2d(3, 4, 0)", "ValueError", "kernel_size"),
    ("mt.Conv2d(3, 4, 3, stride=0)", "ValueError", "stride"),
    ("mt.Conv2d(3, 4, 3, padding=-1)", "ValueError", "padding"),
    ("mt.Conv2d(3, 4, 3, groups=2)", "ValueError", "groups"),
    ("mt.Conv2d(3, 4, 3).forward(mt.zeros((1, 5, 5, 2)))", "ValueError", "(1, 5, 5, 2)"),
    ("mt.Conv2d(3, 4, 5).forward(mt.zeros((1, 3, 3, 3)))", "ValueError", "larger"),
    ("mt.Conv2d(3, 4, 3).forward(mt.zeros((5, 5)))", "ValueError", "Conv2d"),
    ("mt.Sequential(mt.Conv2d(1, 2, 3), mt.Linear(8, 2)).forward(mt.zeros((1, 4, 4, 1)))", "ValueError", "Linear"),
    ("mt.Sequential(mt.Flatten(), mt.Linear(16, 3)).forward(mt.zeros((1, 4, 4, 2)))", "ValueError", "(1, 32)"),
    ("mt.Sequential(mt.Linear(2, 2), 5)", "TypeError", "layer"),
    ("mt.Sequential()", "TypeError", ""),
    ("mt.Linear(2, 2).backward(mt.zeros((1, 2)))", "ValueError", "forward first"),
    ("mt.Tensor([1, 2], dtype='float64')", "ValueError", "not float64"),
    ("mt.Conv2d(3, 4, 3, dtype=5)", "ValueError", "not int"),
    ("mt.Tensor([[1, 2], [3]])", "ValueError", "rectangular"),
    ("mt.Tensor(None)", "TypeError", "list or a buffer"),
    ("mt.zeros((2, 0))", "ValueError", "positive"),
    ("mt.zeros((2, -3))", "ValueError", "positive"),
    ("mt.Tensor(bytearray(7))", "ValueError", "whole number"),
    ("mt.Tensor(bytearray(8), (3,))", "ValueError", "bytes"),
    ("mt.SGD(mt.Linear(2, 2), lr=-1)", "ValueError", "lr"),
    ("mt.SGD(None, lr=0.1)", "TypeError", "layer"),
    ("(l := mt.Linear(2, 2)).train_step(mt.zeros((1, 2)), 5, mt.cross_entropy, mt.SGD(l, lr=0.1))", "ValueError", "label"),
    ("(l := mt.Linear(2, 2)).train_step(mt.zeros((2, 2)), [0], mt.cross_entropy, mt.SGD(l, lr=0.1))", "ValueError", "batch"),
    ("mt.Linear(2, 2).train_step(mt.zeros((1, 2)), 0, None, mt.SGD(mt.Linear(2, 2), lr=0.1))", "TypeError", "loss"),
    ("mt.Linear(2, 2).train_step(mt.zeros((1, 2)), 0, mt.cross_entropy, None)", "TypeError", "opt"),
    ("(l := mt.Linear(2, 3)).train_step(mt.zeros((1, 2)), mt.zeros((1, 2)), mt.mse, mt.SGD(l, lr=0.1))", "ValueError", "mse"),
    ("mt.Residual(mt.Conv2d(2, 3, 1)).forward(mt.zeros((1, 2, 2, 2)))", "ValueError", "Residual"),
    ("mt.BatchNorm2d(3).forward(mt.zeros((1, 2, 2, 4)))", "ValueError", "BatchNorm2d"),
    ("mt.MaxPool2d(2, padding=2)", "ValueError", "padding"),
]


def test_bad_input_raises_clear_errors(target):
    out = assert_raises_clearly(target, BAD_INPUTS, ["import mcutrain as mt"],
                                after="mt.Linear(2, 2).forward(mt.zeros((1, 2))).shape")
    assert out[-1] == "(1, 2)"  # and the board still works


def test_model_too_big_raises_memory_error_and_heap_stays_usable(emulated):
    out = run_on(emulated, """
import gc, mcutrain as mt
# Small weights, but activations for this input need ~2 MB: more than the 256 KB heap.
model = mt.Sequential(mt.Conv2d(3, 8, 3, padding=1), mt.ReLU(), mt.Conv2d(8, 8, 3, padding=1))
try:
    model.memory((8, 64, 64, 3))
    print('no-error')
except MemoryError as e:
    print('MemoryError', e)
gc.collect()
small = mt.Sequential(mt.Linear(4, 4), mt.ReLU(), mt.Linear(4, 2))
print(small.train_step(mt.zeros((1, 4)), 1, mt.cross_entropy, mt.SGD(small, lr=0.1)) > 0)
print(model.memory((1, 8, 8, 3))['total'] > 0)
""")
    lines = out.splitlines()
    assert lines[0].startswith("MemoryError"), out
    assert "bytes" in lines[0], "the MemoryError should say how much did not fit"
    assert lines[1:] == ["True", "True"]


def test_memory_and_macs_report_the_planned_step(target):
    out = run_on(target, """
import mcutrain as mt
model = mt.Sequential(mt.Conv2d(3, 8, 3, padding=1), mt.ReLU(), mt.Flatten(), mt.Linear(8 * 5 * 5, 4))
mem = model.memory((2, 5, 5, 3))
macs = model.macs()
print(mem['weights'], mem['activations'], mem['total'] == sum(v for k, v in mem.items() if k != 'total'))
print(macs['forward'], macs['backward'])
opt = mt.Adam(model, lr=0.01)
print(model.memory()['optimizer'], opt.memory())
""")
    (w, act, total_ok), (fwd, bwd), (opt_mem, opt_mem2) = (line.split() for line in out.splitlines())
    conv_w, lin_w = (8 * 3 * 3 * 3 + 8), (4 * 200 + 4)
    assert int(w) == 4 * (conv_w + lin_w)
    # Kept for backward: the conv output (ReLU runs in place on it, Flatten is a view)
    # and the Linear output.
    assert int(act) == 4 * (2 * 5 * 5 * 8 + 2 * 4)
    assert total_ok == "True"
    conv_macs, lin_macs = 2 * 25 * 8 * 27, 2 * 200 * 4
    assert int(fwd) == conv_macs + lin_macs
    # The first layer's input gradient is never needed.
    assert int(bwd) == conv_macs + 2 * lin_macs
    assert int(opt_mem) == int(opt_mem2) == 12 * (conv_w + lin_w)  # Adam: gradient + 2 moments


def test_same_seed_gives_same_weights(target):
    out = run_on(target, """
import mcutrain as mt
mt.seed(7); a = bytes(memoryview(mt.Conv2d(3, 4, 3).weight))
mt.seed(7); b = bytes(memoryview(mt.Conv2d(3, 4, 3).weight))
mt.seed(8); c = bytes(memoryview(mt.Conv2d(3, 4, 3).weight))
print(a == b, a != c)
""")
    assert out.split() == ["True", "True"]


def test_batchnorm_folds_into_the_conv_for_inference(target):
    out = run_on(target, """
import mcutrain as mt
mt.seed(5)
model = mt.Sequential(mt.Conv2d(2, 4, 3, padding=1, bias=False), mt.BatchNorm2d(4), mt.ReLU(),
                      mt.Flatten(), mt.Linear(4 * 16, 3))
opt = mt.SGD(model, lr=0.05)
x = mt.zeros((2, 4, 4, 2))
flat = x.reshape((x.size,))
for i in range(x.size):
    flat[i] = ((i * 37) % 17) / 8.0 - 1.0
for _ in range(5):
    model.train_step(x, [0, 2], mt.cross_entropy, opt)  # moves the running statistics
before = model.predict(x).tolist()
folded = mt.fold_batchnorm(model)
print(len(model), len(folded))
after = folded.predict(x).tolist()
print(max(abs(a - b) for ra, rb in zip(before, after) for a, b in zip(ra, rb)))
""")
    lines = out.split("\n")
    assert lines[0].split() == ["5", "4"]
    # Folding changes the rounding of the per-channel scale and shift only.
    assert float(lines[1]) < 1e-5


def test_a_layer_planned_inside_a_model_refuses_to_run_alone(target):
    # Its buffers and scratch belong to the model: running it on its own used to crash.
    out = run_on(target, """
import mcutrain as mt
m = mt.Sequential(mt.Conv2d(1, 2, 3, padding=1), mt.ReLU(), mt.Flatten(), mt.Linear(32, 3))
x = mt.zeros((1, 4, 4, 1))
m.predict(x)
try:
    m[0].forward(x)
    print('ran')
except ValueError as e:
    print('refused', 'part of a model' in str(e))
print('model still works', m.predict(x).shape)
""")
    assert out.splitlines() == ["refused True", "model still works (1, 3)"]


def test_release_frees_the_planned_buffers_and_the_next_call_plans_again(target):
    # A float model that was quantized (or evaluated) and will not train again on a small
    # board: release() gives its activation and gradient memory back; weights stay.
    out = run_on(target, """
import gc, mcutrain as mt
mt.seed(3)
m = mt.Sequential(mt.Conv2d(1, 8, 3, padding=1), mt.ReLU(), mt.Residual(mt.Sequential(mt.Conv2d(8, 8, 1))),
                  mt.MaxPool2d(2), mt.Flatten(), mt.Linear(8 * 8 * 8, 4))
opt = mt.SGD(m, lr=0.01, momentum=0.9)
x = mt.Tensor([[[[(i * 7 + j * 3) % 11 / 10] for j in range(16)] for i in range(16)]])
m.train_step(x, 1, mt.cross_entropy, opt)
activations = m.memory()['activations']
gc.collect()
planned = gc.mem_alloc()
m.release()
gc.collect()
freed = planned - gc.mem_alloc()
print('freed', freed >= activations, m[0].output is None)
m.release()  # once more: nothing planned, nothing to do
# The next call plans again and trains as before.
a = m.train_step(x, 1, mt.cross_entropy, opt)
m.release()
b = m.train_step(x, 1, mt.cross_entropy, opt)
print('trains', a > b > 0, m.predict(x).shape)
try:
    m[2].release()
except ValueError as e:
    print('refused', 'part of a model' in str(e))
""")
    assert out.splitlines() == ["freed True True", "trains True (1, 4)", "refused True"], out
