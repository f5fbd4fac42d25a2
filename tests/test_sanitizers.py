"""The kernels under AddressSanitizer and UndefinedBehaviorSanitizer (unix firmware built
with `make firmware-unix-san`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SANITIZED = ROOT / "build" / "unix-san" / "micropython"

KERNEL_WORKOUT = """
import array, mcutrain as mt
for n in (0, 1, 2, 3, 4, 5, 7, 8, 17, 1000):
    a = array.array('f', range(n))
    assert mt.dot(a, a) == sum(float(i) * i for i in range(n)) or n > 100
for bad in (None, 1, 'ab', b'abcd', array.array('d', [1.0]), array.array('i', [1])):
    try:
        mt.dot(bad, array.array('f', [1.0]))
    except TypeError:
        pass
    else:
        raise AssertionError(bad)
try:
    mt.dot(array.array('f', [1.0]), array.array('f', [1.0, 2.0]))
except ValueError:
    pass
print('clean')
"""


# Training steps of small CNNs in every dtype: layers whose int8 weight panels are packed a
# block of channels at a time (8 to 16 channels on 4x4 and 2x2 images), odd channel counts
# and groups, a batch of one and of three.
TRAINING_WORKOUT = """
import array, mcutrain as mt
mt.seed(3)
def layers(d):
    return [mt.Conv2d(1, 8, 3, padding=1, dtype=d), mt.ReLU(), mt.MaxPool2d(2),
            mt.Conv2d(8, 16, 3, padding=1, dtype=d), mt.ReLU(), mt.MaxPool2d(2),
            mt.Conv2d(16, 10, 3, padding=1, groups=2, dtype=d), mt.ReLU(),
            mt.Conv2d(10, 6, 3, padding=1, dtype=d), mt.Flatten(), mt.Linear(24, 5, dtype=d)]
for d in ('float32', 'float16', 'int8', 'mixed'):
    first = [mt.Convert(d)] if d in ('float16', 'int8') else []
    model = mt.Sequential(*first, *layers(d))
    opt = mt.SGD(model, lr=0.01)
    for batch in (1, 3):
        x = mt.zeros((batch, 8, 8, 1))
        x.copy_from(array.array('f', [((7 * i) % 13) / 6 - 1 for i in range(64 * batch)]))
        for step in range(3):
            labels = [(step + b) % 5 for b in range(batch)]
            loss = model.train_step(x, labels if batch > 1 else labels[0], mt.cross_entropy, opt)
            assert loss == loss, d
        y = labels if batch > 1 else labels[0]
        skipped = model.train_step(x, y, mt.cross_entropy, opt, skip_below=1e9)  # forward and loss only
        assert skipped == skipped, d
    model.release()
print('clean')
"""


@pytest.mark.parametrize("workout", [KERNEL_WORKOUT, TRAINING_WORKOUT], ids=["dot", "training"])
def test_kernels_run_clean_under_asan_and_ubsan(workout):
    if not SANITIZED.is_file():
        pytest.skip("run `make firmware-unix-san`")
    result = subprocess.run(
        [str(SANITIZED), "-c", workout], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"
    assert "runtime error" not in result.stderr  # UBSan's report line
    assert "AddressSanitizer" not in result.stderr
