"""`_mcutrain.dot`: fp32 dot product on every target, checked against numpy."""

from __future__ import annotations

import numpy as np
from mcutrain.runner import run_on

LENGTHS = (0, 1, 3, 17, 1000)


def test_dot_matches_numpy_on_odd_lengths(target):
    rng = np.random.default_rng(20251124)
    cases = [
        (rng.standard_normal(n).astype("<f4"), rng.standard_normal(n).astype("<f4"))
        for n in LENGTHS
    ]
    # Exact float32 inputs travel as hex; the result comes back as its exact float32 bits.
    lines = ["import array, struct, mcutrain as mt"]
    for a, b in cases:
        lines.append(
            f"a = array.array('f', bytes.fromhex('{a.tobytes().hex()}'))\n"
            f"b = array.array('f', bytes.fromhex('{b.tobytes().hex()}'))\n"
            "print(struct.unpack('<I', struct.pack('<f', mt.dot(a, b)))[0])"
        )
    out = run_on(target, "\n".join(lines)).split()
    assert len(out) == len(LENGTHS), out

    for (a, b), bits in zip(cases, out, strict=True):
        n = len(a)
        got = float(np.array([int(bits)], dtype="<u4").view("<f4")[0])
        products = a.astype(np.float64) * b.astype(np.float64)  # exact: 24-bit x 24-bit
        expected = float(products.sum())
        # Any fp32 summation order (sequential, SIMD lanes, pairwise) is within
        # gamma_n = n*u / (1 - n*u) of the exact sum, relative to sum |a_i b_i|
        # (Higham, Accuracy and Stability of Numerical Algorithms, eq. 3.5), u = 2**-24.
        # The products are rounded too: one more u. Plus 1e-12 for the float64 reference.
        u = 2.0**-24
        bound = ((n + 1) * u / (1 - (n + 1) * u)) * float(np.abs(products).sum()) + 1e-12
        assert abs(got - expected) <= bound, f"n={n}: got {got}, numpy {expected}, bound {bound}"
    assert out[0] == "0", "the empty dot product is exactly +0.0"


def test_dot_rejects_bad_arguments_with_the_right_exception(target):
    code = """
import array, mcutrain as mt
f3 = array.array('f', [1, 2, 3])
cases = [
    (None, f3), (f3, None),                           # not buffers
    (array.array('d', [1, 2, 3]), f3),                # float64
    (f3, array.array('i', [1, 2, 3])),                # int32: same item size as float32
    (bytearray(12), f3),                              # raw bytes, also 12 bytes
    (1.5, 2.5),                                       # scalars
    (f3, array.array('f', [1, 2])),                   # length mismatch
    (array.array('f'), f3),                           # empty vs non-empty
]
for a, b in cases:
    try:
        mt.dot(a, b)
        print('no error')
    except Exception as e:
        print(type(e).__name__)
"""
    assert run_on(target, code).split() == ["TypeError"] * 6 + ["ValueError"] * 2
