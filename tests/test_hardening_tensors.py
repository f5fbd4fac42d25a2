"""Tensors that used to fault or answer silently wrong (issue 15, fuzzer findings F1 and
F10-F14 in tests/fuzz/FINDINGS.md): empty dicts, copy_from across dtypes, grown frombuffer
views, dequantize sharing layers, a model fed its own buffers, and planned outputs that have
no data yet. Each raises a clear exception or gives the right values, on every target and
under the sanitizers."""

from __future__ import annotations

from pathlib import Path

import pytest
from device_errors import assert_raises_clearly
from test_hardening_sizes import SanitizedUnix

ROOT = Path(__file__).resolve().parents[1]
SANITIZED = ROOT / "build" / "unix-san" / "micropython"

SETUP = [
    "import mcutrain as mt",
    "from array import array",
    # F1: an empty mt dict had a NULL table, which dict.copy() passed to memcpy (UBSan)
    "print('F1', mt.ReLU().state_dict().copy(), mt.Flatten().config().copy(), mt.MaxPool2d(2).state_dict().copy())",
    # F10: copy_from converts between dtypes instead of reinterpreting the bytes
    "a = mt.zeros((2,)); a.copy_from(array('i', [1, 2]))",
    "h = mt.zeros((2,), mt.float16); h.copy_from(mt.Tensor([10, 20], dtype=mt.int8, scale=0.5))",
    "f = mt.zeros((2,)); f.copy_from(mt.Tensor([10, 20], dtype=mt.int8, scale=0.5, zero_point=2))",
    "q = mt.Tensor([0, 0, 0], dtype=mt.int8, scale=0.5, zero_point=1)",
    "q.copy_from(mt.Tensor([1.0, -100.0, 1e30]))",
    "r = mt.Tensor([0, 0], dtype=mt.int8, scale=0.25); r.copy_from(mt.Tensor([4, 8], dtype=mt.int8, scale=0.5))",
    "s = mt.zeros((2,), mt.int8); s.copy_from(array('h', [5, -7]))",
    "t = mt.zeros((2,), mt.int8, ); t.scale = 0.5; t.copy_from(array('f', [1.4, 2.6]))",
    "u = mt.zeros((2,)); u.copy_from(mt.Tensor([1.5, -2.0], dtype=mt.float16))",
    "w = mt.zeros((2,)); w.copy_from(bytes(array('f', [0.25, 4.0])))",
    "print('F10', a.tolist(), h.tolist(), f.tolist(), q.tolist(), r.tolist(), s.tolist(), t.tolist(),"
    " u.tolist(), w.tolist())",
    "ov = bytearray(8)",
    "ov32 = mt.frombuffer(ov, (2,))",
    "ov16 = mt.frombuffer(memoryview(ov)[:4], (2,), mt.float16)",
    # F11: a view of a bytearray that grew (and moved) sees the new block
    "gb = bytearray(16); gv = mt.frombuffer(gb, (4,)); blocker = bytearray(16)",
    "gb.extend(bytes(256)); gb[4:8] = bytes(array('f', [1.5]))",
    "print('F11', gv.tolist())",
    # F12: dequantize returns an independent model: backward of the loaded one stays sound
    "m12 = mt.Sequential(mt.Linear(2, 3), mt.Softmax(), mt.Flatten())",
    "mt.save(m12, 'hardening_tensors.mtm'); l12 = mt.load('hardening_tensors.mtm')",
    "d12 = mt.dequantize(l12)",
    "x12 = mt.zeros((2, 2)); x12.fill(0.5); l12.forward(x12)",
    "q12 = mt.quantize(d12, [mt.Tensor([[0.625, 2.375]]), mt.Tensor([[-1.25, 1.0]])])",
    "print('F12', d12[0] is not l12[0], len(l12.backward(mt.zeros((2, 3))).tolist()))",
    "import os; os.remove('hardening_tensors.mtm')",
    # F13: a model's own buffers given back to it
    "m13 = mt.Sequential(mt.Linear(3, 3), mt.ReLU(), mt.Flatten(), mt.Linear(3, 3))",
    "x13 = mt.Tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [1.5, 0.0, -2.0]])",
    "y13 = m13.forward(x13)",
    "c13 = mt.zeros(y13.shape); c13.copy_from(y13)",
    "g13 = m13.backward(mt.zeros((3, 3)))",
    "ref13 = m13.predict(c13).tolist()",
    "y13 = m13.forward(x13)",
    "print('F13', m13.predict(mt.Tensor(ref13)) is m13.output, m13.forward(m13[0].weight) is m13.output)",
    # F14: planned views (Flatten, in-place ReLU) before any pass have no data
    "f14 = mt.Flatten(); r14 = mt.ReLU()",
    "m14 = mt.Sequential(mt.Linear(3, 3), r14, f14, mt.Linear(3, 4))",
    "m14.macs((1, 3))",
    "print('F14', repr(f14.output), m14.memory((2, 3))['total'] > 0)",
]

CASES = [
    ("mt.zeros((1,)).copy_from(mt.zeros((2,), mt.float16))", "ValueError", "tensor has 1 items, source 2"),
    ("mt.zeros((2,), mt.float16).copy_from(mt.Tensor([60, 0, 64, 0], dtype=mt.int8))", "ValueError",
     "2 items, source 4"),
    ("mt.zeros((2,)).copy_from(bytes(8), scale=float('nan'))", "ValueError", "scale must be a positive"),
    ("mt.zeros((2,)).copy_from(bytes(8), scale=-1.0)", "ValueError", "scale must be a positive"),
    ("mt.zeros((2,)).copy_from(mt.zeros((2,), mt.float16), scale=0.5)", "TypeError", "integer source"),
    ("mt.zeros((2,), mt.int8).copy_from(array('h', [500, -7]))", "ValueError", "out of range"),
    ("mt.zeros((2,)).copy_from(array('i', [1, 2, 3]))", "ValueError", "2 items, source 3"),
    ("mt.zeros((2,)).copy_from(bytes(7))", "ValueError", "8 bytes, source 7"),
    ("ov32.copy_from(ov16)", "ValueError", "separate memory"),
    ("m13.predict(y13)", "ValueError", "x is this model's own buffer"),
    ("m13.predict(y13[0])", "ValueError", "own buffer"),
    ("m13.forward(m13[0].output)", "ValueError", "own buffer"),
    ("m13.forward(m13[1].output)", "ValueError", "own buffer"),
    ("m13.forward(m13[2].output)", "ValueError", "own buffer"),
    ("m13.train_step(y13, mt.zeros((3, 3)), mt.mse, mt.SGD(m13, 0.01))", "ValueError", "own buffer"),
    ("m13.evaluate(y13, [0, 1, 2])", "ValueError", "own buffer"),
    ("m13.forward(g13)", "ValueError", "own buffer"),
    ("m13.forward(x13); m13.backward(m13.output)", "ValueError", "dy is this model's own buffer"),
    # predict plans for inference (no gradients): backward needs a forward of its own
    ("m13.forward(x13); m13.predict(x13); m13.backward(mt.zeros((3, 3)))", "ValueError", "call forward first"),
    ("f14.output.tolist()", "ValueError", "no data yet"),
    ("f14.output.fill(1.0)", "ValueError", "no data yet"),
    ("r14.output.fill(1.0)", "ValueError", "no data yet"),
    ("f14.output[0]", "ValueError", "no data yet"),
    ("f14.output.reshape((3,))", "ValueError", "no data yet"),
    ("memoryview(f14.output)", "ValueError", "no data yet"),
    ("bytes(f14.output)", "ValueError", "no data yet"),
    ("mt.Tensor(f14.output)", "ValueError", "no data yet"),
    ("f14.output.copy_from(mt.zeros((2, 3)))", "ValueError", "no data yet"),
    ("mt.zeros((2, 3)).copy_from(f14.output)", "ValueError", "no data yet"),
    ("mt.Linear(3, 4).predict(f14.output)", "ValueError", "no data yet"),
    ("mt.mse(f14.output, mt.zeros((2, 3)))", "ValueError", "no data yet"),
]

AFTER = "m14.predict(mt.zeros((2, 3))).shape, f14.output.tolist() == m14[0].output.tolist()"


def check_values(out: list[str]) -> None:
    line = {s.split(" ", 1)[0]: s for s in out if s[:3] in ("F1 ", "F10", "F11", "F12", "F13", "F14")}
    assert line["F1"] == "F1 {} {} {}", line["F1"]
    assert line["F10"] == ("F10 [1.0, 2.0] [5.0, 10.0] [4.0, 9.0] [3, -128, 127] [8, 16] [5, -7] [3, 5]"
                           " [1.5, -2.0] [0.25, 4.0]"), line["F10"]
    assert line["F11"] == "F11 [0.0, 1.5, 0.0, 0.0]", line["F11"]
    assert line["F12"] == "F12 True 2", line["F12"]
    assert line["F13"] == "F13 True True", line["F13"]
    assert line["F14"] == "F14 Tensor(shape=(1, 3), dtype=float32, no data yet) True", line["F14"]
    assert out[-1] == "(2, 4) True", out[-1]  # after a pass the view sees its input


def test_tensor_hardening_cases(target):
    check_values(assert_raises_clearly(target, CASES, SETUP, after=AFTER))


def test_tensor_hardening_cases_run_clean_under_asan_and_ubsan():
    if not SANITIZED.is_file():
        pytest.skip("run `make firmware-unix-san`")
    check_values(assert_raises_clearly(SanitizedUnix(), CASES, SETUP, after=AFTER))
