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


def test_kernels_run_clean_under_asan_and_ubsan():
    if not SANITIZED.is_file():
        pytest.skip("run `make firmware-unix-san`")
    result = subprocess.run(
        [str(SANITIZED), "-c", KERNEL_WORKOUT], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"
    assert "runtime error" not in result.stderr  # UBSan's report line
    assert "AddressSanitizer" not in result.stderr
