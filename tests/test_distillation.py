"""mt.distillation: the kernel against PyTorch autograd and finite differences, the loss on
every target (fp32, float16 and int8 outputs, float32 and float16 teachers), training with it
from batches and from an .mtd's teacher logits, and clear errors for bad arguments."""

from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from device_arrays import ALLOCATION_CHECK, DeviceScript, labels_expr, tensor_expr
from device_errors import assert_raises_clearly
from kernel_lib import f32, ptr
from mcutrain.formats import write_dataset
from mcutrain.runner import run_on
from test_device_formats import put, remove

U = 2.0**-24  # float32 unit roundoff


class DistillParams(ctypes.Structure):
    _fields_ = [("temperature", ctypes.c_float), ("alpha", ctypes.c_float)]


def torch_distillation(s: np.ndarray, t: np.ndarray, y: np.ndarray, temperature: float,
                       alpha: float) -> tuple[float, np.ndarray]:
    """The loss and its gradient with respect to the student logits, by autograd in float64:
    alpha * CE + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T)), batch mean."""
    s_t = torch.tensor(np.asarray(s, np.float64), requires_grad=True)
    t_t = torch.tensor(np.asarray(t, np.float64))
    hard = F.cross_entropy(s_t, torch.tensor(np.asarray(y, np.int64)))
    soft = F.kl_div(F.log_softmax(s_t / temperature, dim=1), F.log_softmax(t_t / temperature, dim=1),
                    reduction="batchmean", log_target=True)  # fmt: skip
    loss = alpha * hard + (1 - alpha) * temperature**2 * soft
    loss.backward()
    return float(loss.detach()), s_t.grad.numpy()


def logits(rng: np.random.Generator, rows: int, classes: int, spread: float = 3.0) -> np.ndarray:
    return (rng.standard_normal((rows, classes)) * spread).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The kernel on the host (ctypes)


@pytest.fixture(scope="module")
def k(kernels):
    P, I = ctypes.c_void_p, ctypes.c_int
    fn = kernels.mt_distillation_f32
    fn.restype = ctypes.c_float
    fn.argtypes = [P, P, P, I, I, ctypes.POINTER(DistillParams), P]
    return kernels


def kernel_distillation(k, s, t, y, temperature, alpha, grad=True):
    s, t = f32(s), f32(t)
    labels = np.ascontiguousarray(y, dtype=np.int32)
    d = np.zeros_like(s) if grad else None
    params = DistillParams(temperature, alpha)
    loss = k.mt_distillation_f32(ptr(s), ptr(t), ptr(labels), s.shape[0], s.shape[1], ctypes.byref(params), ptr(d))
    return loss, d


CASES = [  # (rows, classes, temperature, alpha)
    (1, 2, 1.0, 0.5), (3, 5, 4.0, 0.5), (8, 10, 2.0, 0.1), (5, 7, 0.5, 0.9), (7, 33, 10.0, 0.0),
    (2, 3, 4.0, 1.0), (1, 1, 3.0, 0.5), (16, 4, 1.5, 0.25),
]


@pytest.mark.parametrize("rows,classes,temperature,alpha", CASES)
def test_kernel_matches_torch_autograd(k, rows, classes, temperature, alpha):
    rng = np.random.default_rng(rows * 100 + classes)
    s, t = logits(rng, rows, classes), logits(rng, rows, classes)
    y = rng.integers(0, classes, rows)
    loss, d = kernel_distillation(k, s, t, y, temperature, alpha)
    ref_loss, ref_d = torch_distillation(s, t, y, temperature, alpha)
    # A few dozen fp32 operations per value (exp, log, sums over classes) on O(1) terms
    # scaled by at most T^2 = 100: a relative 1e-5 leaves room for their rounding (~1e-6)
    # and is far below what a wrong term would do (a missing T costs a factor of T).
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    scale = max(1.0, temperature) * float(np.abs(ref_d).max() + 1e-3)
    np.testing.assert_allclose(d, ref_d, rtol=0, atol=1e-5 * scale)
    # The loss alone writes nothing and gives the same value.
    assert kernel_distillation(k, s, t, y, temperature, alpha, grad=False)[0] == loss


@pytest.mark.parametrize("rows,classes,temperature,alpha", [(3, 5, 4.0, 0.5), (4, 9, 1.0, 0.3), (2, 6, 0.7, 0.0)])
def test_kernel_gradient_matches_finite_differences(k, rows, classes, temperature, alpha):
    rng = np.random.default_rng(5 + classes)
    s, t = logits(rng, rows, classes, 1.0), logits(rng, rows, classes, 1.0)
    y = rng.integers(0, classes, rows)
    _, d = kernel_distillation(k, s, t, y, temperature, alpha)
    h = 1e-2
    fd = np.zeros_like(d)
    for idx in np.ndindex(s.shape):
        plus, minus = s.copy(), s.copy()
        plus[idx] += h
        minus[idx] -= h
        fd[idx] = (kernel_distillation(k, plus, t, y, temperature, alpha, False)[0]
                   - kernel_distillation(k, minus, t, y, temperature, alpha, False)[0]) / (2 * h)  # fmt: skip
    # Central differences of the fp32 loss: truncation h^2 * L''' / 6 (~2e-5 here, L''' is
    # O(1 / T) per unit of T^2) plus rounding 2 * U * L / h (~1e-5): 2e-4 bounds both.
    np.testing.assert_allclose(d, fd, rtol=0, atol=2e-4)


def test_kernel_is_finite_for_extreme_logits_and_rejects_bad_labels(k):
    s = np.array([[1e4, -1e4, 0.0], [-3e3, 2e3, 5e3]], np.float32)
    t = np.array([[-1e4, 1e4, 0.0], [0.0, 0.0, 0.0]], np.float32)
    loss, d = kernel_distillation(k, s, t, [0, 2], 2.0, 0.5)
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    ref_loss, ref_d = torch_distillation(s, t, [0, 2], 2.0, 0.5)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(d, ref_d, atol=1e-5)
    assert kernel_distillation(k, s, t, [0, 3], 2.0, 0.5)[0] < 0


# ---------------------------------------------------------------------------------------------
# The loss object on the device


def test_loss_and_backward_match_torch_on_device(target):
    rng = np.random.default_rng(3)
    # (rows, classes, temperature, alpha, teacher dtype); 37 classes span several of the
    # binding's 32-value float16 teacher spans.
    cases = [(1, 2, 1.0, 0.5, "float32"), (3, 5, 4.0, 0.5, "float32"), (5, 7, 0.5, 0.9, "float32"),
             (4, 10, 2.0, 0.0, "float16"), (3, 37, 6.0, 0.3, "float16"), (6, 3, 3.0, 1.0, "float32")]  # fmt: skip
    script = DeviceScript()
    refs = []
    for i, (rows, classes, temperature, alpha, tdtype) in enumerate(cases):
        s, t = logits(rng, rows, classes), logits(rng, rows, classes)
        y = rng.integers(0, classes, rows)
        t_used = t.astype(np.float16).astype(np.float32) if tdtype == "float16" else t
        refs.append(torch_distillation(s, t_used, y, temperature, alpha))
        script.add(f"L = mt.distillation(temperature={temperature}, alpha={alpha})")
        script.add(f"s = {tensor_expr(s)}")
        script.add(f"target = ({labels_expr(y)}, {tensor_expr(t, tdtype)})")
        script.emit(f"loss{i}", "mt.Tensor([L(s, target)])", (1,))
        script.emit(f"grad{i}", "L.backward(s, target)", (rows, classes))
    results = script.run(target)
    for i, (ref_loss, ref_d) in enumerate(refs):
        temperature = cases[i][2]
        # As in the kernel test; the loss crosses a Python float, 30 bits on the emulated
        # boards (relative 2^-22), well inside 1e-5.
        assert results[f"loss{i}"][0] == pytest.approx(ref_loss, rel=1e-5, abs=1e-6), cases[i]
        scale = max(1.0, temperature) * float(np.abs(ref_d).max() + 1e-3)
        np.testing.assert_allclose(results[f"grad{i}"], ref_d, rtol=0, atol=1e-5 * scale, err_msg=str(cases[i]))


def test_repr_names_parameters(target):
    out = run_on(target, "import mcutrain as mt\nprint(mt.distillation())\n"
                         "print(mt.distillation(temperature=2, alpha=0.25))").splitlines()  # fmt: skip
    assert out == ["<loss distillation temperature=4 alpha=0.5>", "<loss distillation temperature=2 alpha=0.25>"]


def _narrow_student(script: DeviceScript, s: np.ndarray, dtype: str) -> None:
    """A model whose output is s in dtype: Linear(rows, classes) with weight column b = s[b]
    and no bias, fed the identity, then Convert(dtype). SGD with lr=1 then moves weight
    column b by minus the gradient of the loss with respect to output row b."""
    rows, classes = s.shape
    script.add(f"model = mt.Sequential(mt.Linear({rows}, {classes}, bias=False), mt.Convert(mt.{dtype}))")
    script.add(f"model[0].weight.copy_from({tensor_expr(np.ascontiguousarray(s.T))})")
    script.add(f"x = {tensor_expr(np.eye(rows, dtype=np.float32))}")
    script.add("opt = mt.SGD(model, lr=1.0)")


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_float16_and_int8_outputs_give_torch_gradient_of_their_values(target, dtype):
    rng = np.random.default_rng(17)
    rows, classes, temperature, alpha = 5, 6, 3.0, 0.4
    s, t = logits(rng, rows, classes, 2.0), logits(rng, rows, classes, 2.0)
    y = rng.integers(0, classes, rows)
    script = DeviceScript()
    _narrow_student(script, s, dtype)
    script.add(f"L = mt.distillation(temperature={temperature}, alpha={alpha})")
    script.add(f"target = ({labels_expr(y)}, {tensor_expr(t)})")
    script.add("out = model.forward(x)")  # plans: train_step reuses this output Tensor
    script.emit("loss", "mt.Tensor([model.train_step(x, target, L, opt)])", (1,))
    # The output the step saw, as float32 (an int8 one dequantized by its scale).
    script.emit("out", "mt.Convert(mt.float32).forward(out)" if dtype == "int8" else "out",
                (rows, classes), dtype if dtype == "float16" else "float32")  # fmt: skip
    script.emit("w1", "model[0].weight", (classes, rows))
    results = script.run(target)
    out = results["out"].astype(np.float64)
    grad = (s.astype(np.float64) - results["w1"].T)  # lr = 1, the weights were s.T
    ref_loss, ref_d = torch_distillation(out, t, y, temperature, alpha)
    assert results["loss"][0] == pytest.approx(ref_loss, rel=1e-5)
    if dtype == "float16":
        # The gradient is narrowed to float16 (relative 2^-11, absolute 2^-25 below its
        # normal range); the weight update's fp32 subtraction adds ~2^-24 * |s| <= 1e-6.
        np.testing.assert_allclose(grad, ref_d, rtol=2.0**-11, atol=2e-6)
    else:
        # An int8 gradient has one symmetric scale, absmax / 127: each value is within half a
        # step of it, plus the same fp32 subtraction.
        step = np.abs(ref_d).max() / 127
        np.testing.assert_allclose(grad, ref_d, rtol=0, atol=step / 2 * 1.01 + 2e-6)


MLP = "mt.Sequential(mt.Linear(6, 16), mt.ReLU(), mt.Linear(16, 4))"
STUDENTS = {
    "float32": MLP,
    "float16": "mt.Sequential(mt.Convert(mt.float16), mt.Linear(6, 16, dtype=mt.float16), mt.ReLU(), "
               "mt.Linear(16, 4, dtype=mt.float16), mt.Convert(mt.float32))",
    "int8": "mt.Sequential(mt.Convert(mt.int8), mt.Linear(6, 16, dtype=mt.int8), mt.ReLU(), "
            "mt.Linear(16, 4, dtype=mt.int8), mt.Convert(mt.float32))",
}


def _teacher_task(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples, labels and a fixed linear teacher's logits (its argmax is the label)."""
    x = rng.standard_normal((n, 6)).astype(np.float32)
    w = np.random.default_rng(99).standard_normal((6, 4))
    t = (x @ w * 2).astype(np.float32)
    return x, t.argmax(axis=1), t


@pytest.mark.parametrize("student", list(STUDENTS))
def test_train_step_on_batches_reduces_distillation_loss(target, student):
    rng = np.random.default_rng(23)
    x, y, t = _teacher_task(rng, 32)
    out = run_on(target, f"""
import mcutrain as mt, gc
mt.seed(4)
model = {STUDENTS[student]}
opt = mt.SGD(model, lr={0.05 if student == 'int8' else 0.1})
loss = mt.distillation(temperature=2.0, alpha=0.3)
X = {tensor_expr(x)}
Y = {labels_expr(y)}
T = {tensor_expr(t)}
batches = [({tensor_expr(x[:8])}, ({labels_expr(y[:8])}, {tensor_expr(t[:8])})),
           ({tensor_expr(x[8:16])}, ({labels_expr(y[8:16])}, {tensor_expr(t[8:16])})),
           ({tensor_expr(x[16:24])}, ({labels_expr(y[16:24])}, {tensor_expr(t[16:24])})),
           ({tensor_expr(x[24:])}, ({labels_expr(y[24:])}, {tensor_expr(t[24:])}))]
before = model.evaluate(X, (Y, T), loss)
for epoch in range(30):
    for xb, target in batches:
        model.train_step(xb, target, loss, opt)
after = model.evaluate(X, (Y, T), loss)
print(before[0], after[0], after[1])
x, y = batches[0]
{ALLOCATION_CHECK}
""", timeout=300)
    first, last = out.splitlines()[0], out.splitlines()[-1]
    before, after, accuracy = (float(v) for v in first.split())
    # A 4-class task a linear teacher labels: training against its logits must at least
    # halve the loss and agree with it on most samples, in every dtype.
    assert after < 0.5 * before, out
    assert accuracy >= 0.75, out
    if target.board.emulated:
        assert last == "grown 0", out  # the loss allocates nothing per step


MTD_TRAIN = """
import mcutrain as mt, gc
from mcutrain.dataset import Dataset
mt.seed(4)
ds = Dataset({path!r}, teacher=True)
model = {model}
opt = mt.SGD(model, lr=0.1)
loss = mt.distillation(temperature=2.0, alpha=0.3)
def epoch_loss():
    total, n = 0.0, 0
    for x, y, t in ds.batches(10):
        total += model.evaluate(x, (y, t), loss)[0] * len(y)
        n += len(y)
    return total / n
print(ds.teacher_dtype, epoch_loss())
for epoch in range(20):
    for x, y, t in ds.batches(10, shuffle=True, seed=epoch):
        model.train_step(x, (y, t), loss, opt)
for x, y, t in ds:  # one sample at a time: y an int, t (1, classes)
    model.train_step(x, (y, t), loss, opt)
print(epoch_loss())
"""


@pytest.mark.parametrize("teacher_dtype", ["float32", "float16"])
def test_training_streams_teacher_logits_from_mtd(target, tmp_path, teacher_dtype):
    rng = np.random.default_rng(31)
    x, y, t = _teacher_task(rng, 43)  # not a multiple of the batch: a short last batch
    path = tmp_path / f"kd_{teacher_dtype}.mtd"
    write_dataset(path, x, y, teacher_logits=t, teacher_dtype=teacher_dtype, num_classes=4)
    (device_path,) = put(target, path)
    try:
        out = run_on(target, MTD_TRAIN.format(path=device_path, model=MLP), timeout=300).splitlines()
    finally:
        remove(target, device_path)
    dtype, before = out[0].split()
    assert dtype == teacher_dtype
    assert float(out[1]) < 0.5 * float(before), out


def test_bad_arguments_raise_clear_errors(target):
    setup = ["import mcutrain as mt",
             "L = mt.distillation(temperature=2.0, alpha=0.5)",
             "s = mt.zeros((2, 3))", "t = mt.zeros((2, 3))",
             "model = mt.Sequential(mt.Linear(4, 3))", "opt = mt.SGD(model, lr=0.1)",
             "x = mt.zeros((2, 4))"]  # fmt: skip
    cases = [
        ("mt.distillation(temperature=0)", "ValueError", "temperature must be positive"),
        ("mt.distillation(temperature=-1.0)", "ValueError", "temperature must be positive"),
        ("mt.distillation(temperature=float('inf'))", "ValueError", "temperature must be positive and finite"),
        ("mt.distillation(temperature=float('nan'))", "ValueError", "temperature"),
        ("mt.distillation(alpha=1.5)", "ValueError", "alpha must be in [0, 1]"),
        ("mt.distillation(alpha=-0.1)", "ValueError", "alpha must be in [0, 1]"),
        ("mt.distillation(alpha=float('nan'))", "ValueError", "alpha"),
        ("mt.distillation(alpha='x')", "TypeError", "float"),
        ("L(s, None)", "TypeError", "target must be (labels, teacher logits), not NoneType"),
        ("L(s, [0, 1])", "TypeError", "teacher logits must be a Tensor"),
        ("L(s, ([0, 1],))", "ValueError", "got 1 items"),
        ("L(s, ([0, 1], t, t))", "ValueError", "got 3 items"),
        ("L(s, ([0, 1], None))", "TypeError", "teacher logits must be a Tensor, not NoneType"),
        ("L(s, ([0, 1], mt.zeros((2, 4))))", "ValueError", "teacher logits have shape (2, 4), the output (2, 3)"),
        ("L(s, ([0, 1], mt.zeros((3,))))", "ValueError", "teacher logits have shape (3,), the output (2, 3)"),
        ("L(s, ([0, 1], mt.zeros((2, 3), dtype=mt.int8)))", "TypeError", "float32 or float16, not int8"),
        ("L(s, ([0, 3], t))", "ValueError", "label 3 is outside [0, 3)"),
        ("L(s, ([0], t))", "ValueError", "labels: 1 given for a batch of 2"),
        ("L(s, (None, t))", "TypeError", "labels must be"),
        ("L(mt.zeros((2, 3, 1)), ([0, 1], t))", "ValueError", "distillation: output must be (batch, classes)"),
        ("model.train_step(x, ([0, 1], mt.zeros((2, 5))), L, opt)", "ValueError", "the output (2, 3)"),
        ("model.train_step(x, [0, 1], L, opt)", "TypeError", "teacher logits must be a Tensor"),
        ("model.train_step(x, ([0, 1], mt.Tensor([[0.0, float('inf'), 0.0]] * 2)), L, opt)", "ValueError",
         "loss is not finite; weights unchanged"),
        ("(lambda m: m.train_step(mt.zeros((2, 2, 2, 1)), ([0, 1], t), L, mt.SGD(m, lr=0.1)))"
         "(mt.Sequential(mt.Conv2d(1, 3, 1)))", "ValueError", "distillation needs (batch, classes) outputs"),
        ("model.train_step(x, ([0, 1], t), 'distillation', opt)", "TypeError", "mt.distillation(...)"),
    ]
    assert_raises_clearly(target, cases, setup, after="model.evaluate(x, ([0, 1], t), L)[1]")


SANITIZED_WORKOUT = """
import mcutrain as mt
mt.seed(2)
L = mt.distillation(temperature=3.0, alpha=0.2)
for dtype in ('float32', 'float16', 'int8'):
    for classes in (1, 2, 31, 32, 33, 70):
        end = [] if dtype == 'float32' else [mt.Convert(getattr(mt, dtype))]
        model = mt.Sequential(mt.Linear(5, classes), *end)
        opt = mt.SGD(model, lr=0.1)
        for rows in (1, 3):
            x = mt.zeros((rows, 5))
            x.fill(0.5)
            for tdtype in (mt.float32, mt.float16):
                t = mt.zeros((rows, classes), dtype=tdtype)
                t.fill(1.5)
                model.train_step(x, ([classes - 1] * rows, t), L, opt)
                model.evaluate(x, ([0] * rows, t), L)
                for bad in (None, ([0] * rows, None), ([classes] * rows, t), ([0] * rows, mt.zeros((rows + 1, classes)))):
                    try:
                        model.train_step(x, bad, L, opt)
                    except (TypeError, ValueError):
                        pass
                    else:
                        raise AssertionError(bad)
print('clean')
"""


def test_distillation_runs_clean_under_asan_and_ubsan():
    from test_sanitizers import SANITIZED

    if not SANITIZED.is_file():
        pytest.skip("build/unix-san not built; run `make firmware-unix-san`")
    done = subprocess.run([str(SANITIZED), "-c", SANITIZED_WORKOUT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "clean", done.stdout + done.stderr
    assert "runtime error" not in done.stderr and "AddressSanitizer" not in done.stderr  # UBSan, ASan reports
