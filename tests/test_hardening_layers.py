"""Issue 15, layers and containers: a layer belongs to at most one container, transforms
(fold_batchnorm, quantize, dequantize) return independent models, a pass that raised leaves
nothing backward could read, non-finite values neither update weights nor pin range trackers,
setters validate, backward and load_state_dict compare shapes, and BatchNorm2d's backward
after an inference forward is PyTorch's eval-mode one. Every check runs on each target, with
one error script and one numeric script per test to keep the boards' time short."""

from __future__ import annotations

import numpy as np
from device_arrays import DeviceScript, labels_expr, tensor_expr
from device_errors import assert_raises_clearly

NAN_X = "mt.Tensor(bytes.fromhex('0000c07f' + '0000803f' * 7), (2, 4))"  # a NaN, then ones
INF_X = "mt.Tensor(bytes.fromhex('0000807f' + '0000803f' * 7), (2, 4))"  # +inf, then ones

SETUP = [
    "import mcutrain as mt",
    "a = mt.Linear(4, 3)",
    "m1 = mt.Sequential(a, mt.ReLU())",
    "inner = mt.Sequential(mt.Linear(4, 4))",
    "outer = mt.Sequential(inner)",
    "fresh = mt.Linear(4, 3)",
    "x = mt.zeros((2, 4))",
    # a forward that raised: backward must not read the buffers of the one before
    "m = mt.Sequential(mt.Linear(4, 3))",
    "y = m.forward(x)",
    "opt = mt.SGD(m, lr=0.1)",
    "w0 = bytes(m[0].weight)",
    "c = mt.Convert(mt.int8)",
    "c.forward(" + tensor_expr(np.arange(8, dtype=np.float32).reshape(2, 4)) + ")",
    "r0 = c.quant_range",
    "conv = mt.Sequential(mt.Conv2d(2, 3, 3))",
    "sd = conv.state_dict()",
    "cw0 = bytes(conv[0].weight)",
    "bn = mt.BatchNorm2d(3)",
]

CASES = [
    # ownership
    ("mt.Sequential(a)", "ValueError", "Sequential: Linear (item 0) already belongs to a model"),
    ("mt.Residual(a)", "ValueError", "Residual: Linear (item 0) already belongs to a model"),
    ("mt.Residual(mt.ReLU(), shortcut=a)", "ValueError", "Linear (item 1) already belongs"),
    ("mt.Sequential(inner)", "ValueError", "Sequential (item 0) already belongs"),
    ("mt.Sequential(fresh, a)", "ValueError", "Linear (item 1) already belongs"),  # fresh stays free
    ("a.forward(x)", "ValueError", "Linear is part of a model"),
    ("a.predict(x)", "ValueError", "Linear is part of a model"),
    ("a.train_step(x, [0, 1], mt.cross_entropy, mt.SGD(a, lr=0.1))", "ValueError", "Linear is part of a model"),
    ("a.memory((2, 4))", "ValueError", "Linear is part of a model"),
    ("a.backward(mt.zeros((2, 3)))", "ValueError", "Linear is part of a model"),
    ("a.release()", "ValueError", "Linear is part of a model"),
    ("inner.forward(x)", "ValueError", "Sequential is part of a model"),
    # transactional passes
    ("m.backward(mt.zeros((3, 2)))", "ValueError", "dy has shape (3, 2), the output (2, 3)"),
    ("m.backward(mt.zeros((6,)))", "ValueError", "dy has shape (6,), the output (2, 3)"),
    ("m.forward(mt.zeros((2, 5)))", "ValueError", "expects 4 input features"),
    ("m.backward(mt.zeros((2, 3)))", "ValueError", "call forward first"),
    ("m.forward(x); m.evaluate(x, [0, 7])", "ValueError", "label 7 is outside"),
    ("m.backward(mt.zeros((2, 3)))", "ValueError", "call forward first"),
    ("m.forward(x); m.train_step(x, [0, 9], mt.cross_entropy, opt)", "ValueError", "label 9 is outside"),
    ("m.backward(mt.zeros((2, 3)))", "ValueError", "call forward first"),
    # re-planned for another batch by memory(shape): the last forward's buffers are gone
    ("m.forward(x); m.memory((5, 4)); m.backward(mt.zeros((2, 3)))", "ValueError", "call forward first"),
    ("m.forward(x); m.forward(42)", "TypeError", "forward: x must be"),
    ("m.backward(mt.zeros((2, 3)))", "ValueError", "call forward first"),
    ("m.train_step(" + NAN_X + ", [0, 1], mt.cross_entropy, opt)", "ValueError",
     "loss is not finite; weights unchanged"),
    ("m.train_step(" + INF_X + ", mt.zeros((2, 3)), mt.mse, opt)", "ValueError",
     "loss is not finite; weights unchanged"),
    ("m.backward(mt.zeros((2, 3)))", "ValueError", "call forward first"),
    ("m.forward(x); m.backward(" + tensor_expr(np.array([[np.nan, 0, 0], [0, 0, 0]], np.float32)) + ", opt)",
     "ValueError", "dy is not finite; weights unchanged"),
    # range trackers (an inf batch after a finite one is checked in AFTER) and setters
    ("mt.Convert(mt.int8).forward(" + INF_X + ")", "ValueError", "Convert: the range to quantize is not finite"),
    ("c.quant_range = (float('inf'), 1.0)", "ValueError", "quant_range must be (min, max)"),
    ("c.quant_range = (float('nan'), 1.0)", "ValueError", "quant_range must be (min, max)"),
    ("c.quant_range = (2.0, 1.0)", "ValueError", "quant_range must be (min, max)"),
    ("c.quant_range = (1.0,)", "ValueError", "length"),
    ("m.trainable = 1", "TypeError", "trainable must be True or False, not int"),
    ("m.trainable = None", "TypeError", "trainable must be True or False"),
    # load_state_dict: strict by default, shapes and dtypes compared
    ("conv.load_state_dict({'0.weight': sd['0.weight']})", "KeyError", "missing keys ['0.bias']"),
    ("conv.load_state_dict({'0.weight': sd['0.weight'], '0.bias': sd['0.bias'], '0.wieght': sd['0.bias']})",
     "KeyError", "unexpected keys ['0.wieght']"),
    # PyTorch's (O, I, KH, KW) layout: the same size, refused rather than loaded scrambled
    ("conv.load_state_dict({'0.weight': mt.zeros((3, 2, 3, 3)), '0.bias': sd['0.bias']})", "ValueError",
     "0.weight has shape (3, 2, 3, 3), the model (3, 3, 3, 2)"),
    ("conv.load_state_dict({'0.weight': mt.zeros((3, 2, 3, 3)), '0.bias': sd['0.bias']}, strict=False)",
     "ValueError", "0.weight has shape (3, 2, 3, 3)"),
    ("conv.load_state_dict({'0.weight': mt.zeros((3, 3, 3, 2), dtype=mt.int8), '0.bias': sd['0.bias']})",
     "TypeError", "0.weight is int8, the model's is float32"),
    ("conv.load_state_dict({'0.weight': bytes(216), '0.bias': sd['0.bias']})", "TypeError",
     "0.weight must be a Tensor, not bytes"),
    ("conv.load_state_dict([1])", "TypeError", "load_state_dict: need a dict"),
    # messages stay within MicroPython's 84-byte decompression buffer (ASan caught this one)
    ("mt.Residual(mt.Linear(4, 3)).forward(x)", "ValueError", "Residual: body gives (2, 3), shortcut (2, 4)"),
    # copy_from (what mt.clone copies with): same type and config only
    ("fresh.copy_from(mt.Linear(4, 2))", "ValueError", "Linear.copy_from: its weight differs"),
    ("fresh.copy_from(mt.Linear(4, 3, bias=False))", "ValueError", "Linear.copy_from: its bias differs"),
    ("fresh.copy_from(mt.ReLU())", "TypeError", "Linear.copy_from: need a Linear, not ReLU"),
    ("m.copy_from(m)", "TypeError", "containers: mt.clone"),
    # BatchNorm2d training on one value per channel, as PyTorch
    ("bn.forward(mt.zeros((1, 1, 1, 3)))", "ValueError", "more than 1 value per channel"),
    ("bn.train_step(mt.zeros((1, 3)), mt.zeros((1, 3)), mt.mse, mt.SGD(bn, lr=0.1))", "ValueError",
     "more than 1 value per channel"),
    # int8 has no eval-mode backward yet: refused, not computed with batch statistics
    ("bn8 = mt.BatchNorm2d(3, dtype=mt.int8); x8 = mt.zeros((1, 2, 2, 3), dtype=mt.int8); "
     "bn8.forward(x8, training=False, grad=True); bn8.backward(x8, mt.SGD(bn8, lr=0.1))", "ValueError",
     "int8 backward after forward(training=False) is not supported"),
    # forward(training=False) alone plans no gradients (as predict): backward asks for a forward
    ("bn9 = mt.BatchNorm2d(3); bn9.forward(mt.zeros((2, 2, 2, 3)), training=False); "
     "bn9.backward(mt.zeros((2, 2, 2, 3)))", "ValueError", "call forward first (with grad)"),
]

AFTER = ("(w0 == bytes(m[0].weight), c.forward(" + INF_X + ") is not None, c.quant_range == r0, "
         "fresh.forward(x).shape, cw0 == bytes(conv[0].weight), "
         "conv.load_state_dict({'0.weight': sd['0.weight'], 'x': sd['0.bias']}, strict=False), "
         "bn.predict(mt.zeros((1, 1, 1, 3))).shape)")


def test_ownership_transactions_setters_and_shapes_fail_clearly(target):
    out = assert_raises_clearly(target, CASES, SETUP, after=AFTER)
    # Weights survived the non-finite loss and dy, the Convert's range the inf batch, the
    # refused state dicts left conv as it was, and fresh was not taken by the failed Sequential.
    assert out[-1] == ("(True, True, True, (2, 3), True, (['0.bias'], ['x']), (1, 1, 1, 3))"), out[-1]


def test_layer_planned_alone_then_adopted_gives_the_model_output(target):
    """A Linear run on its own at batch 5, then adopted by a Sequential run at batch 2: the
    model plans it afresh (issue 15's corrupting sequence) and computes relu(x W^T + b)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    x5 = rng.standard_normal((5, 4)).astype(np.float32)
    x2 = rng.standard_normal((2, 4)).astype(np.float32)
    s = DeviceScript()
    s.add("lin = mt.Linear(4, 3)")
    s.add(f"lin.weight.copy_from({tensor_expr(w)}); lin.bias.copy_from({tensor_expr(b)})")
    s.emit("alone", f"lin.forward({tensor_expr(x5)})", (5, 3))
    s.add("model = mt.Sequential(lin, mt.ReLU())")
    s.add("print('output after adoption', lin.output)")
    s.emit("model", f"model.forward({tensor_expr(x2)})", (2, 3))
    s.emit("dx", f"model.backward({tensor_expr(np.ones((2, 3), np.float32))})", (2, 4))
    got = s.run(target)
    # float32 dot products of 4 terms: a few ulps of the magnitudes involved
    np.testing.assert_allclose(got["alone"], x5 @ w.T + b, rtol=1e-5, atol=1e-5)
    ref = np.maximum(x2 @ w.T + b, 0)
    np.testing.assert_allclose(got["model"], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["dx"], (ref > 0).astype(np.float32) @ w, rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_quantize_and_dequantize_return_independent_models(target):
    """The transforms copy: the input keeps its weights and outputs, shares no layer with the
    result, and the quantized model answers each new input (not the calibration's last)."""
    rng = np.random.default_rng(5)
    x, labels = rng.standard_normal((4, 5, 5, 2)).astype(np.float32), rng.integers(0, 3, 4)
    xa, xb = (rng.standard_normal((1, 5, 5, 2)).astype(np.float32) for _ in range(2))
    s = DeviceScript()
    s.add("model = mt.Sequential(mt.Conv2d(2, 4, 3), mt.BatchNorm2d(4), mt.ReLU(), mt.Flatten(), mt.Linear(36, 3))")
    s.add("opt = mt.SGD(model, lr=0.05)")
    s.add(f"x = {tensor_expr(x)}")
    s.add(f"for _ in range(3): model.train_step(x, {labels_expr(labels)}, mt.cross_entropy, opt)")
    s.add(f"xa = {tensor_expr(xa)}; xb = {tensor_expr(xb)}")
    s.emit("float_a", "model.predict(xa)", (1, 3))
    s.add("w0 = bytes(model[0].weight)")
    s.add("folded = mt.fold_batchnorm(model)")
    s.emit("folded_a", "folded.predict(xa)", (1, 3))
    s.add("q = mt.quantize(model, [xa, xb], keep_float=(3,))")  # the Linear (index in the folded model)
    s.emit("q_a", "q.predict(xa)", (1, 3))
    s.emit("q_b", "q.predict(xb)", (1, 3))
    s.add("d = mt.dequantize(q)")
    s.emit("d_b", "d.predict(xb)", (1, 3))
    s.emit("q_b2", "q.predict(xb)", (1, 3))
    s.emit("float_a2", "model.predict(xa)", (1, 3))
    s.emit("float_b", "model.predict(xb)", (1, 3))
    s.add("ids = lambda m: [id(l) for l in m]")
    s.add("print('shared', set(ids(model)) & (set(ids(folded)) | set(ids(q)) | set(ids(d))), "
          "w0 == bytes(model[0].weight), len(folded), model[1].running_var is not None)")
    # Each model keeps training on its own.
    s.add("for mm in (model, folded, q, d): mm.train_step(xa, [1], mt.cross_entropy, mt.SGD(mm, lr=0.01))")
    s.emit("float_a3", "model.predict(xa)", (1, 3))
    got = s.run(target)
    # BatchNorm folding reorders float32 roundings only: a few ulps of logits of size ~1
    np.testing.assert_allclose(got["folded_a"], got["float_a"], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got["float_a2"], got["float_a"])  # the input model is untouched
    assert not np.array_equal(got["q_a"], got["q_b"]), "the quantized model repeats a stale output"
    np.testing.assert_array_equal(got["q_b2"], got["q_b"])
    # int8 activations and weights: a few quantization steps of logits of size ~1
    np.testing.assert_allclose(got["q_a"], got["float_a"], atol=0.15)
    np.testing.assert_allclose(got["q_b"], got["float_b"], atol=0.15)
    np.testing.assert_allclose(got["d_b"], got["float_b"], atol=0.15)
    assert not np.array_equal(got["float_a3"], got["float_a"])  # it trained, on its own weights


def test_batchnorm_backward_after_inference_forward_uses_running_statistics(target):
    """PyTorch eval mode: dx = dy * gamma / sqrt(running_var + eps), dgamma = sum(dy * xhat),
    dbeta = sum(dy) with xhat from the running statistics - after a training batch whose own
    statistics differ, in float32 and float16."""
    rng = np.random.default_rng(8)
    c, eps = 3, 1e-5
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    rm = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    rv = rng.uniform(0.5, 2.0, c).astype(np.float32)
    x_train = (3 * rng.standard_normal((2, 2, 2, c)) + 1).astype(np.float32)
    x = rng.standard_normal((2, 2, 3, c)).astype(np.float32)
    dy = rng.standard_normal((2, 2, 3, c)).astype(np.float32)
    s = DeviceScript()
    for dtype in ("float32", "float16"):
        s.add(f"bn = mt.BatchNorm2d({c}, momentum=0.0, dtype=mt.{dtype})")
        s.add(f"bn.weight.copy_from({tensor_expr(gamma)}); bn.bias.copy_from({tensor_expr(beta)})")
        s.add(f"bn.running_mean.copy_from({tensor_expr(rm)}); bn.running_var.copy_from({tensor_expr(rv)})")
        s.add(f"bn.forward({tensor_expr(x_train, dtype)})")  # momentum 0: running stats stay
        # grad=True: a backward follows (forward(training=False) alone plans no gradients)
        s.emit(f"{dtype}.y", f"bn.forward({tensor_expr(x, dtype)}, training=False, grad=True)", x.shape, dtype)
        s.emit(f"{dtype}.dx", f"bn.backward({tensor_expr(dy, dtype)})", x.shape, dtype)
        s.emit(f"{dtype}.dgamma", "bn.weight.grad", (c,))
        s.emit(f"{dtype}.dbeta", "bn.bias.grad", (c,))
    got = s.run(target)
    for dtype, tol in (("float32", 1e-5), ("float16", 2e-3)):  # fp16: inputs and outputs rounded to 11 bits
        xd = x.astype(dtype).astype(np.float64)
        dyd = dy.astype(dtype).astype(np.float64)
        inv_std = 1 / np.sqrt(rv.astype(np.float64) + eps)
        xhat = (xd - rm) * inv_std
        np.testing.assert_allclose(got[f"{dtype}.y"], xhat * gamma + beta, rtol=tol, atol=tol)
        np.testing.assert_allclose(got[f"{dtype}.dx"], dyd * gamma * inv_std, rtol=tol, atol=tol)
        np.testing.assert_allclose(got[f"{dtype}.dgamma"], (dyd * xhat).sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[f"{dtype}.dbeta"], dyd.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)


def test_clone_copies_layers_bit_for_bit_in_every_dtype(target):
    """mt.clone: an owned layer or a whole model, float32 with BatchNorm statistics, int8 with
    quant_ranges and weight scales, mixed: the copy predicts exactly what the original does
    and belongs to no model, so a new one can take it."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 4, 2)).astype(np.float32)
    s = DeviceScript()
    s.add(f"x = {tensor_expr(x)}")
    s.add("models = [mt.Sequential(mt.Conv2d(2, 3, 3), mt.BatchNorm2d(3), mt.ReLU(), mt.Flatten(), mt.Linear(12, 2)),"
          " mt.Sequential(mt.Convert(mt.int8), mt.Conv2d(2, 3, 3, dtype=mt.int8), mt.ReLU(), mt.Flatten(),"
          " mt.Linear(12, 2, dtype=mt.int8), mt.Convert(mt.float32)),"
          " mt.Sequential(mt.Conv2d(2, 3, 3, dtype='mixed'), mt.Flatten(), mt.Linear(12, 2, dtype='mixed'))]")
    for i in range(3):
        s.add(f"m = models[{i}]")
        s.add("m.train_step(x, [0, 1], mt.cross_entropy, mt.SGD(m, lr=0.05))")
        s.emit(f"m{i}", "m.predict(x)", (2, 2))
        s.add("c = mt.clone(m)")
        s.emit(f"c{i}", "c.predict(x)", (2, 2))
        # an owned layer copies too, and the copy joins another model
        s.add("h = mt.Sequential(mt.clone(m[len(m) - 1]))")
    got = s.run(target)
    for i in range(3):
        np.testing.assert_array_equal(got[f"c{i}"], got[f"m{i}"], err_msg=f"model {i}")


def test_batchnorm_running_statistics_skip_non_finite_batches(target):
    """One inf in a channel's batch leaves that channel's running statistics as they were;
    the other channels update as usual (PyTorch would store inf)."""
    x = np.ones((2, 1, 2, 2), np.float32)
    x[:, 0, :, 1] = [[1, 3], [5, 7]]
    x[0, 0, 0, 0] = np.inf
    s = DeviceScript()
    s.add("bn = mt.BatchNorm2d(2, momentum=0.5)")
    s.add(f"bn.forward({tensor_expr(x)})")
    s.emit("rm", "bn.running_mean", (2,))
    s.emit("rv", "bn.running_var", (2,))
    got = s.run(target)
    # channel 1 holds 1, 3, 5, 7: mean 4, unbiased variance 20/3
    np.testing.assert_allclose(got["rm"], [0.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(got["rv"], [1.0, 0.5 + 0.5 * 20 / 3], rtol=1e-6)
