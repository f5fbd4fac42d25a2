"""The int8 Conv2d update (and forward) on the boards (DSP and portable paths) against the integer reference
bit for bit, over the shapes its packing special-cases: one, two and three input channels
(weights paired along the flattened tap axis), output rows of 1 to 9 pixels (pixel pairs that
span two rows, tiles that end mid-row), batches 1 to 5, strides and padding, and a layer
large enough to take several pixel tiles and channel blocks."""

from __future__ import annotations

import numpy as np
import pytest
from device_arrays import DeviceScript
from test_dtypes_device import DY_SCALE, X_SCALE, _int8_reference_update, _s8_case, _s8_reference, _s8_script

# (name, layer source, x shape, w shape, stride, padding, groups, bias)
CASES = [
    ("cin1_kws_like", "mt.Conv2d(1, 6, (5, 4), stride=2, padding=(2, 1), dtype=mt.int8)",
     (1, 13, 10, 1), (6, 5, 4, 1), (2, 2), (2, 1), 1, True),
    ("cin1_batch5_row1", "mt.Conv2d(1, 4, 3, padding=1, dtype=mt.int8)",
     (5, 3, 1, 1), (4, 3, 3, 1), (1, 1), (1, 1), 1, True),
    ("cin2_row3_batch2", "mt.Conv2d(2, 5, 3, padding=1, bias=False, dtype=mt.int8)",
     (2, 4, 3, 2), (5, 3, 3, 2), (1, 1), (1, 1), 1, False),
    ("cin3_row7_stride2", "mt.Conv2d(3, 7, (2, 3), stride=(1, 2), padding=(0, 2), dtype=mt.int8)",
     (3, 5, 11, 3), (7, 2, 3, 3), (1, 2), (0, 2), 1, True),
    ("cin3_row9_batch4", "mt.Conv2d(3, 4, 1, dtype=mt.int8)",
     (4, 2, 9, 3), (4, 1, 1, 3), (1, 1), (0, 0), 1, True),
    ("pointwise_rows5_batch4", "mt.Conv2d(8, 8, 1, dtype=mt.int8)",
     (4, 5, 5, 8), (8, 1, 1, 8), (1, 1), (0, 0), 1, True),
    ("cin2_k2x2_by_rows", "mt.Conv2d(2, 3, 2, padding=1, dtype=mt.int8)",
     (2, 5, 6, 2), (3, 2, 2, 2), (1, 1), (1, 1), 1, True),
    ("many_tiles_blocks", "mt.Conv2d(4, 12, 3, padding=1, dtype=mt.int8)",
     (2, 9, 9, 4), (12, 3, 3, 4), (1, 1), (1, 1), 1, True),
]


@pytest.mark.parametrize("standardize", [True, False], ids=["standardized", "plain"])
def test_int8_conv_update_matches_the_integer_reference_for_odd_shapes(target, standardize):
    lr, wd = (0.0625, 0.015625) if standardize else (0.25, 0.015625)
    rng = np.random.default_rng(7)
    script = DeviceScript()
    cases = []
    outputs = {}
    for name, src, x_shape, w_shape, stride, padding, groups, bias in CASES:
        x, w, ws, b = _s8_case(rng, x_shape, w_shape, bias)
        q, bias_q, y = _s8_reference(x, w, ws, b, stride, padding, groups)
        q.dy_scale = DY_SCALE
        dy = rng.integers(-127, 128, y.shape).astype(np.int8)
        _s8_script(name, src, x, w, ws, b, dy, True, script)
        cases.append((name, x, w, ws, b, dy, q, bias_q, stride, padding, groups))
        outputs[name] = y
    script.lines = [line.replace("lr=0.05, weight_decay=0.01",
                                 f"lr={lr}, weight_decay={wd}, standardize={standardize}, rounding='nearest'")
                    for line in script.lines]
    results = script.run(target)
    for case in cases:
        name, x, w, ws, b = case[:5]
        assert np.array_equal(results[f"{name}.y"], outputs[name]), f"{name}: forward differs"
        r = _int8_reference_update(case, lr, wd, standardize)
        assert np.array_equal(results[f"{name}.w"], r.w), f"{name}: updated weights differ"
        assert np.array_equal(results[f"{name}.ws"], r.w_scale), f"{name}: updated weight scales differ"
        assert not np.array_equal(r.w, w), f"{name}: the step changed nothing"
        if b is not None:
            expected = r.bias.astype(np.float32) * (np.float32(X_SCALE) * r.w_scale)
            assert np.array_equal(results[f"{name}.b"], expected.astype(np.float32)), f"{name}: bias differs"
