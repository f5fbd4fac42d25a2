"""Sizes and values that used to wrap, divide by zero or answer silently wrong (issue 15,
items 5, 7 and 8): every one raises a clear exception quickly, on every target and under
the sanitizers, and error texts fit MicroPython's decompression buffer."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from device_errors import assert_raises_clearly
from mcutrain.runner import run_on

ROOT = Path(__file__).resolve().parents[1]
SANITIZED = ROOT / "build" / "unix-san" / "micropython"

SETUP = [
    "import array, struct, mcutrain as mt",
    "lin = mt.Linear(3, 6)",
    "sgd = mt.SGD(lin, lr=0.1)",
    "lin3 = mt.Linear(3, 3)",
    "sgd3 = mt.SGD(lin3, lr=0.1)",
    # planned once for a small input: a huge input shape must not disturb it
    "planned = mt.Sequential(mt.Conv2d(3, 4, 3, padding=1), mt.ReLU())",
    "planned.memory((1, 4, 4, 3))",
]

# Sizes whose element or byte counts overflow 32 bits (and on 64-bit, int32 indexes).
HUGE_SIZES = [
    ("mt.Linear(32768, 32768)", "MemoryError", "Linear.weight (32768, 32768) does not fit"),
    ("mt.Linear(32768, 32768, dtype=mt.int8)", "MemoryError", "(32768, 32768) does not fit"),
    ("mt.Linear(32768, 32768, dtype='mixed')", "MemoryError", "(32768, 32768) does not fit"),
    ("mt.Linear(32768, 32768, dtype=mt.float16)", "MemoryError", "(32768, 32768) does not fit"),
    ("mt.Linear(1 << 24, 2)", "ValueError", "in_features"),
    ("mt.Conv2d(65535, 65535, 65535)", "MemoryError", "Conv2d.weight"),
    ("mt.Conv2d(1024, 1024, 1024, dtype=mt.int8)", "MemoryError", "Conv2d.weight"),
    ("mt.Conv1d(65535, 65535, 65535)", "MemoryError", "Conv1d.weight"),
    ("mt.Conv2d(3, 4, 3, padding=16384).memory((1, 8, 8, 3))", "MemoryError", "does not fit"),
    ("mt.Conv2d(3, 4, 3, padding=16384).macs((1, 8, 8, 3))", "MemoryError", "does not fit"),
    ("mt.Conv2d(3, 4, 3, padding=16384).forward(mt.zeros((1, 8, 8, 3)))", "MemoryError", "does not fit"),
    ("mt.Conv2d(3, 4, 3, padding=16384, dtype=mt.int8).memory((1, 8, 8, 3))", "MemoryError", "does not fit"),
    ("mt.Conv2d(3, 4, 3, padding=16384, dtype='mixed').memory((1, 8, 8, 3))", "MemoryError", "does not fit"),
    ("mt.Conv2d(3, 4, 3, padding=16384, dtype=mt.float16).memory((1, 8, 8, 3))", "MemoryError", "does not fit"),
    # beyond 64-bit int32 indexes too: 131071^2 pixels of 128 channels
    ("mt.Conv2d(1, 128, 1, padding=65535).memory((1, 1, 1, 1))", "MemoryError", "does not fit"),
    ("mt.Sequential(mt.Conv2d(3, 4, 3, padding=16384), mt.ReLU()).memory((1, 8, 8, 3))", "MemoryError",
     "does not fit"),
    ("mt.Sequential(mt.Conv2d(3, 4, 3, padding=16384), mt.ReLU()).macs((1, 8, 8, 3))", "MemoryError",
     "does not fit"),
    ("mt.Residual(mt.Conv2d(3, 3, 1, padding=16384)).memory((1, 8, 8, 3))", "MemoryError", "does not fit"),
    ("planned.memory((1, 32768, 32768, 3))", "MemoryError", "memory: input_shape"),
    ("planned.macs((1, 32768, 32768, 3))", "MemoryError", "macs: input_shape"),
    ("planned.memory((2 ** 40, 4, 4, 3))", "MemoryError", "does not fit"),
    ("mt.MaxPool2d(65535)", "ValueError", "kernel_size"),
    ("mt.AvgPool2d((4096, 4096))", "ValueError", "kernel_size"),
    ("mt.zeros((65536, 65536))", "MemoryError", "zeros: shape (65536, 65536) does not fit"),
    ("mt.zeros((2 ** 32 + 1,))", "MemoryError", "does not fit"),
    ("mt.zeros((2 ** 70,))", "MemoryError", "does not fit"),
    ("mt.zeros((-2 ** 70,))", "ValueError", "positive"),
    ("mt.zeros((0, 3))", "ValueError", "positive"),
    ("mt.zeros((3,)).reshape((2 ** 40,))", "MemoryError", "does not fit"),
    ("mt.frombuffer(bytearray(8), (2 ** 31,))", "MemoryError", "does not fit"),
    ("mt.Tensor(bytearray(8), (1 << 20, 1 << 20))", "MemoryError", "does not fit"),
]

# Convolutions whose kernel does not fit the padded input, in every dtype.
SMALL_INPUTS = [
    (f"mt.{conv}(1, 2, {k}, dtype={d!r}).{call}", "ValueError", "kernel is larger")
    for d in ("float32", "float16", "int8", "mixed")
    for conv, k, call in (
        ("Conv1d", 3, "memory((1, 2, 1))"),
        ("Conv1d", 5, "macs((2, 4, 1))"),
        ("Conv2d", 3, "memory((1, 2, 3, 1))"),
        ("Conv2d", (1, 4), "memory((1, 3, 3, 1))"),
    )
]

# Wrong targets and labels, which used to pass silently or wrap.
LOSSES = [
    ("mt.mse(mt.zeros((2, 3)), mt.zeros((3, 2)))", "ValueError", "target shape (3, 2), output shape (2, 3)"),
    ("mt.mse(mt.zeros((2, 3)), mt.zeros((6,)))", "ValueError", "(6,)"),
    ("mt.mse.backward(mt.zeros((2, 3)), mt.zeros((3, 2)))", "ValueError", "(3, 2)"),
    ("mt.mse(mt.zeros((2, 3)), mt.zeros((2, 3), dtype=mt.float16))", "TypeError", "float32"),
    ("mt.mse(mt.zeros((2, 3)), [0.0] * 6)", "TypeError", "Tensor"),
    ("lin.train_step(mt.zeros((2, 3)), mt.zeros((3, 4)), mt.mse, sgd)", "ValueError", "(3, 4)"),
    ("lin.train_step(mt.zeros((1, 3)), mt.zeros((2, 3)), mt.mse, sgd)", "ValueError", "(2, 3)"),
    ("mt.cross_entropy(mt.zeros((2, 3)), [0, 2 ** 32 + 1])", "ValueError", "label 4294967297 is outside"),
    ("mt.cross_entropy(mt.zeros((2, 3)), [0, 2 ** 64 + 1])", "ValueError", "is outside [0, 3)"),
    ("mt.cross_entropy(mt.zeros((2, 3)), (0, -2 ** 64))", "ValueError", "is outside [0, 3)"),
    ("mt.cross_entropy(mt.zeros((2, 3)), [0, -1])", "ValueError", "label -1 is outside"),
    ("mt.cross_entropy(mt.zeros((2, 3)), array.array('i', [0, 3]))", "ValueError", "label 3 is outside"),
    ("mt.cross_entropy(mt.zeros((2, 3)), mt.zeros((2,), dtype=mt.float16))", "TypeError", "labels"),
    ("mt.cross_entropy(mt.zeros((2, 3)), [0, 1.0])", "TypeError", "int"),
    ("mt.cross_entropy(mt.zeros((2, 3, 1)), [0, 1])", "ValueError", "(batch, classes)"),
    ("lin3.train_step(mt.zeros((1, 3)), 2 ** 32 + 1, mt.cross_entropy, sgd3)", "ValueError", "4294967297"),
    ("lin3.evaluate(mt.zeros((1, 3)), [2 ** 32 + 1])", "ValueError", "4294967297"),
]

# A frombuffer view of a bytearray that grows (and moves), then shrinks.
FROMBUFFER_SETUP = [
    "buf = bytearray(16)",
    "v = mt.frombuffer(buf, (4,))",
    "rows = v.reshape((2, 2))",
    "row = rows[1]",
    "blocker = bytearray(16)",  # the next heap block is taken: growing must move buf
    "buf.extend(bytes(4096))",
    "v[1] = 2.5",
    "row[0] = 3.5",
    "print('grown', struct.unpack('<4f', buf[:16]), rows.tolist(), row.tolist())",
    "xbuf = bytearray(16)",
    "x = mt.frombuffer(xbuf, (1, 4))",
    "net = mt.Linear(4, 1, bias=False)",
    "net.weight.fill(1.0)",
    "net.forward(x)",
    "blocker2 = bytearray(16)",
    "xbuf.extend(bytes(4096))",
    "x.fill(1.0)",
    "print('forward', net.forward(x).tolist(), struct.unpack('<4f', xbuf[:16]))",
    "xbuf.extend(bytes(8192))",
    "x.fill(2.0)",
    "net.backward(mt.Tensor([[1.0]]))",
    "print('backward', net.weight.grad.tolist())",
    "buf[8:] = b''",
    "xbuf[4:] = b''",
]

FROMBUFFER = [
    ("v.tolist()", "ValueError", "shrank to 8 bytes, the view needs 16"),
    ("row.tolist()", "ValueError", "shrank"),
    ("rows[0].tolist()", "ValueError", "shrank"),
    ("v.fill(1.0)", "ValueError", "shrank"),
    ("memoryview(v)", "ValueError", "shrank"),
    ("mt.Tensor(v)", "ValueError", "shrank"),
    # backward first: a forward that raised leaves nothing for backward to read.
    ("net.backward(mt.Tensor([[1.0]]))", "ValueError", "shrank"),
    ("net.forward(x)", "ValueError", "shrank"),
    ("mt.mse(v, mt.zeros((4,)))", "ValueError", "shrank"),
]

CASES = HUGE_SIZES + SMALL_INPUTS + LOSSES + FROMBUFFER


def check_frombuffer_lines(out: list[str]) -> None:
    grown = next(line for line in out if line.startswith("grown"))
    assert grown == "grown (0.0, 2.5, 3.5, 0.0) [[0.0, 2.5], [3.5, 0.0]] [3.5, 0.0]", grown
    forward = next(line for line in out if line.startswith("forward"))
    assert forward == "forward [[4.0]] (1.0, 1.0, 1.0, 1.0)", forward
    backward = next(line for line in out if line.startswith("backward"))
    assert backward == "backward [[2.0, 2.0, 2.0, 2.0]]", backward


def test_huge_sizes_bad_targets_and_moved_buffers_raise_clearly(target):
    out = assert_raises_clearly(target, CASES, SETUP + FROMBUFFER_SETUP,
                                after="planned.memory()['total'] > 0")
    check_frombuffer_lines(out)
    assert out[-1] == "True"  # the planned model kept its plan and the board still works


# Tiny convolutions (smaller than one int8 weight panel) used to divide by zero sizing their
# scratch: they plan, run and train in every dtype, down to a single output pixel.
TINY_CONVS = """
import mcutrain as mt
mt.seed(1)
for d in ('float32', 'float16', 'int8', 'mixed'):
    for shape, conv in (((1, 4, 1), mt.Conv1d(1, 2, 3, dtype=d)), ((2, 3, 1), mt.Conv1d(1, 2, 3, dtype=d)),
                        ((1, 3, 3, 1), mt.Conv2d(1, 2, 3, dtype=d)), ((1, 1, 1, 1), mt.Conv2d(1, 1, 1, dtype=d)),
                        ((1, 2, 2, 2), mt.Conv2d(2, 2, 2, groups=2, dtype=d))):
        # fresh Converts per model: a layer belongs to one container
        first = [mt.Convert(d)] if d in ('float16', 'int8') else []
        last = [mt.Convert(mt.float32)] if d in ('float16', 'int8') else []
        model = mt.Sequential(*first, conv, *last)
        ok = model.memory(shape)['total'] > 0 and model.macs(shape)['forward'] > 0
        x = mt.zeros(shape)
        x.fill(0.5)
        y = mt.zeros(model.output_shape)
        loss = model.train_step(x, y, mt.mse, mt.SGD(model, lr=0.01))
        print(d, shape, ok, loss == loss)
"""


def test_tiny_convolutions_plan_and_train_in_every_dtype(target):
    out = run_on(target, TINY_CONVS).split("\n")
    lines = [line for line in out if line]
    assert len(lines) == 20, out
    assert all(line.endswith("True True") for line in lines), out


class SanitizedUnix:
    """The unix port built with ASan and UBSan, as a target for device_errors: a script
    that provokes a sanitizer report fails."""

    def exec(self, code: str, timeout: float | None = None) -> str:
        done = subprocess.run([str(SANITIZED), "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "runtime error" not in done.stderr, done.stderr  # UBSan's report line
        assert "AddressSanitizer" not in done.stderr, done.stderr
        return done.stdout


def test_same_cases_run_clean_under_asan_and_ubsan():
    if not SANITIZED.is_file():
        pytest.skip("run `make firmware-unix-san`")
    residual = [("mt.Residual(mt.Linear(4, 3)).forward(mt.zeros((1, 4)))", "ValueError", "body gives (1, 3)")]
    out = assert_raises_clearly(SanitizedUnix(), CASES + residual, SETUP + FROMBUFFER_SETUP,
                                after="planned.memory()['total'] > 0")
    check_frombuffer_lines(out)
    out = SanitizedUnix().exec(TINY_CONVS)
    assert out.count("True True") == 20, out


# Every MP_ERROR_TEXT is decompressed into a stack buffer of MP_MAX_UNCOMPRESSED_TEXT_LEN
# bytes, the length of the longest message in the firmware, with no room for the NUL
# (MicroPython 1.25): ours must stay shorter than MicroPython's own longest (73 bytes) so
# that none is the longest, and well under the 80 the project allows.
ERROR_TEXT = re.compile(r'MP_ERROR_TEXT\(\s*((?:"(?:[^"\\]|\\.)*"\s*)+)\)', re.S)
C_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
MAX_ERROR_TEXT = 80


def error_texts() -> list[tuple[str, bytes]]:
    texts = []
    for path in sorted((ROOT / "usermod").rglob("*.[ch]")):
        for m in ERROR_TEXT.finditer(path.read_text()):
            text = "".join(C_STRING.findall(m.group(1))).encode().decode("unicode_escape").encode("latin-1")
            texts.append((f"{path.relative_to(ROOT)}", text))
    return texts


def test_error_texts_fit_micropythons_decompression_buffer():
    texts = error_texts()
    assert len(texts) > 100  # the scan finds them
    too_long = [(where, t) for where, t in texts if len(t) >= MAX_ERROR_TEXT]
    assert not too_long, too_long
    # Against each firmware as built: its buffer (the longest message) must have room for
    # every one of ours and its NUL.
    for genhdr in sorted((ROOT / "build").glob("*/genhdr/compressed.data.h")):
        buffer = int(re.search(r"MP_MAX_UNCOMPRESSED_TEXT_LEN \((\d+)\)", genhdr.read_text()).group(1))
        over = [(where, t) for where, t in texts if len(t) >= buffer]
        assert not over, f"{genhdr.parent.parent.name}: {over}"
