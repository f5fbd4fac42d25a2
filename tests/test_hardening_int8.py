"""int8 and mixed numerics at degenerate ranges (issue 15, fuzzer findings F2, F8, F15 in
tests/fuzz/FINDINGS.md): a near-constant activation no longer saturates the int32 bias (the
answer stays right and no accumulator overflows), int8 BatchNorm2d saturates on an extreme
input scale, and tiny padded or strided int8/mixed convolutions plan, run and train at batch 1.
The device script runs on every target and under ASan/UBSan; the degenerate-range rule is
checked bit for bit against the numpy reference."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from mcutrain.reference import quantized as ref
from mcutrain.runner import run_on

ROOT = Path(__file__).resolve().parents[1]
SANITIZED = ROOT / "build" / "unix-san" / "micropython"

SCRIPT = """
import mcutrain as mt
mt.seed(3)
x = mt.zeros((1, 4, 4, 3))
x.fill(1e-5)

# F8: a near-constant input to a mixed depthwise conv with bias 1 (was -0.218 / UBSan).
c = mt.Conv2d(3, 3, 3, padding=1, groups=3, dtype=mt.mixed)
c.bias.fill(1.0)
print('F8 mixed', [round(v, 3) for v in c.forward(x).tolist()[0][1][1]])

# F8, fully int8: Convert's first pass pins the range at (1e-5, 1e-5).
m = mt.Sequential(mt.Convert(mt.int8), mt.Conv2d(3, 3, 3, padding=1, groups=3, dtype=mt.int8),
                  mt.Convert(mt.float32))
m[1].bias.fill(1.0)
print('F8 int8', [round(v, 3) for v in m.forward(x).tolist()[0][1][1]])
import struct
print('F8 scale', struct.pack('<f', m[0].output.scale).hex())

# F8, as the fuzzer met it: a training step on an all-zero sample through conv -> BatchNorm.
m = mt.Sequential(mt.Conv2d(3, 3, 3, padding=1, dtype=mt.mixed), mt.BatchNorm2d(3), mt.ReLU(),
    mt.Residual(mt.Sequential(mt.Conv2d(3, 3, 3, padding=1, groups=3, dtype=mt.mixed), mt.ReLU()),
                mt.Conv2d(3, 3, 1, dtype=mt.mixed)),
    mt.GlobalAvgPool(), mt.Flatten(), mt.Linear(3, 3, dtype=mt.mixed))
loss = m.train_step(mt.zeros((1, 6, 3, 3)), 2, mt.cross_entropy, mt.SGD(m, 0.01))
print('F8 train', loss == loss)

# F8, set directly: a narrow output range is widened to 2^-10; one below 1e-28 is refused.
c = mt.Conv2d(3, 3, 3, padding=1, groups=3, dtype=mt.mixed)
c.quant_range = (0.0, 1e-20)
y = c.forward(x).tolist()[0][1][1]
try:
    c.quant_range = (0.0, 1e-30)
    print('F8 range', all(v == v for v in y), 'no-error')
except ValueError as e:
    print('F8 range', all(v == v for v in y), e)

# F15: int8 BatchNorm2d on an input scale of 1e30 saturates.
bn = mt.BatchNorm2d(2, dtype=mt.int8)
try:
    bn.evaluate(mt.Tensor([21, 23, 12, 30, 17, 11], (1, 1, 3, 2), dtype=mt.int8), mt.zeros((1, 2)), mt.mse)
except ValueError:
    pass
big = mt.Tensor([13, 20, 20, -20, -7, 2], (1, 1, 3, 2), dtype=mt.int8, scale=1e30)
print('F15', bn.predict(big).tolist())

# F2: tiny padded / strided int8 and mixed convolutions at batch 1 (used to divide by zero).
for d in ('int8', 'mixed'):
    for shape, args, kw in (((1, 3, 4, 1), (1, 3, 3), dict(padding=1)),
                            ((1, 3, 4, 1), (1, 3, 3), dict(stride=2, padding=1)),
                            ((1, 3, 3, 3), (3, 2, 3), dict(stride=2, padding=1)),
                            ((1, 3, 3, 1), (1, 2, 3), dict(stride=2, padding=1)),
                            ((1, 4, 1), (1, 2, 3), dict(padding=1)),
                            ((1, 3, 3, 2), (2, 2, 3), dict(padding=1, groups=2))):
        conv = (mt.Conv1d if len(shape) == 3 else mt.Conv2d)(*args, dtype=d, **kw)
        if d == 'int8':
            model = mt.Sequential(mt.Convert(mt.int8), conv, mt.Convert(mt.float32))
        else:
            model = mt.Sequential(conv)
        ok = model.memory(shape)['total'] > 0 and model.macs(shape)['forward'] > 0
        xs = mt.zeros(shape)
        xs.fill(0.5)
        model.forward(xs)
        loss = model.train_step(xs, mt.zeros(model.output_shape), mt.mse, mt.SGD(model, lr=0.01))
        print('F2', d, shape, ok, loss == loss)

# Fuzz seed 23: a mixed conv too large to plan sized its float32 scratch in int first.
try:
    mt.Conv2d(5, 4, 5, padding=16384, dtype=mt.mixed).predict(mt.zeros((3, 5, 3, 5)))
    print('huge no-error')
except MemoryError as e:
    print('huge MemoryError', len(str(e)) > 0)
print('done')
"""


def check(out: str) -> None:
    lines = out.splitlines()
    assert lines[-1] == "done", out
    get = {line.split(" ", 2)[0] + " " + line.split(" ", 2)[1]: line for line in lines if line.startswith("F8")}
    for key in ("F8 mixed", "F8 int8"):
        values = eval(get[key].split(" ", 2)[2])
        assert values == [1.0, 1.0, 1.0], out
    # The collapsed range was widened to 2^-10 (MT_QUANT_MIN_RANGE), as the reference does.
    scale = np.frombuffer(bytes.fromhex(get["F8 scale"].split(" ", 2)[2]), "<f4")[0]
    # (the boards' Python floats keep 22 mantissa bits: the last two may differ)
    assert abs(scale / np.float32(ref.qparams_asymmetric(1e-5, 1e-5).scale) - 1) < 2**-21, out
    assert get["F8 train"].endswith("True"), out
    assert get["F8 range"] == "F8 range True quant_range must be (min, max) with finite min <= max", out
    assert "F15 [[[[127, 127], [127, -128], [-128, 127]]]]" in lines, out
    assert "huge MemoryError True" in lines, out
    tiny = [line for line in lines if line.startswith("F2 ")]
    assert len(tiny) == 12 and all(line.endswith("True True") for line in tiny), out


def test_degenerate_int8_ranges_on_device(target):
    check(run_on(target, SCRIPT))


def test_degenerate_int8_ranges_run_clean_under_asan_and_ubsan():
    if not SANITIZED.is_file():
        pytest.skip("run `make firmware-unix-san`")
    done = subprocess.run([str(SANITIZED), "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "runtime error" not in done.stderr, done.stderr
    assert "AddressSanitizer" not in done.stderr, done.stderr
    check(done.stdout)


def test_reference_rule_for_degenerate_ranges():
    # A range narrower than 2^-10 is widened upward to it; wider ones are untouched.
    assert ref.qparams_asymmetric(0.0, 1e-5) == ref.qparams_asymmetric(0.0, 2.0**-10)
    assert ref.qparams_asymmetric(-1e-5, 0.0).scale == float(np.float32(2.0**-10) / np.float32(255))
    assert ref.qparams_asymmetric(-1.0, 2.0) == ref.QParams(float(np.float32(3) / np.float32(255)), -43)
    assert ref.qparams_asymmetric(0.0, 0.0) == ref.QParams(1.0, 0)
    with pytest.raises(ValueError):
        ref.qparams_asymmetric(0.0, 1e-30)  # below MIN_SCALE before widening: refused as before
    # Biases saturate to +-2^30, so that an output's products cannot overflow the accumulator.
    q = ref.quantize_bias([1.0, -1.0, 0.5], 1e-12, [1e-3, 1e-3, 1.0])
    assert q.tolist() == [2**30, -(2**30), 2**30]
    assert ref.quantize_bias([0.5], 0.01, [0.01]).tolist() == [5000]
    assert ref.rescale_bias([2**30], 1.0, 1e-3).tolist() == [2**30]
