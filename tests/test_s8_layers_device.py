"""int8 (fully quantized) parameterless and joining layers on the device (unix, qemu-m4f,
qemu-rv32): AvgPool2d and Residual against the integer reference (mcutrain.reference.quantized)
bit for bit, and within stated bounds of float64 on the dequantized operands; bad input.

Scales reach the device as Python literals; the emulated boards' 30-bit floats hold the ones
used here exactly, so the reference sees the device's values. A scale the device computes is
sent back as a float32 tensor through a Python float, so it is compared to 2**-20 relative.
"""

from __future__ import annotations

import numpy as np

from device_arrays import DeviceScript, tensor_expr
from device_errors import assert_raises_clearly
from mcutrain.reference import functional as F
from mcutrain.reference import quantized as Q
from mcutrain.runner import run_on

X_SCALE, X_ZP = 0.046875, 5
DY_SCALE = 0.0078125
SCALE_RTOL = 2.0**-20  # a device scale through a 30-bit Python float


def s8_expr(a: np.ndarray, scale: float, zero_point: int = 0) -> str:
    return (f"mt.Tensor(bytes.fromhex('{a.astype(np.int8).tobytes().hex()}'), {a.shape}, dtype=mt.int8, "
            f"scale={scale}, zero_point={zero_point})")


# (name, x shape, kernel, stride, padding): the keyword-spotting case (2x2, no overlap) first
AVGPOOL_CASES = [
    ("k2_no_overlap_batch2", (2, 6, 5, 3), 2, None, 0),
    ("k3_stride2_pad1_overlap", (1, 7, 6, 4), 3, 2, 1),
    ("k3x2_stride1x2_pad1x0_batch3", (3, 5, 8, 2), (3, 2), (1, 2), (1, 0)),
    ("k1_identity", (1, 3, 3, 2), 1, None, 0),
]


def test_int8_avgpool2d_matches_the_integer_reference_bit_for_bit(target):
    rng = np.random.default_rng(51)
    script = DeviceScript()
    cases = []
    for name, shape, kernel, stride, padding in AVGPOOL_CASES:
        x = rng.integers(-128, 128, shape).astype(np.int8)
        y = Q.avgpool2d_s8_forward(x, X_ZP, kernel, stride, padding)
        dy = rng.integers(-127, 128, y.shape).astype(np.int8)
        script.add(f"layer = mt.AvgPool2d({kernel!r}, stride={stride!r}, padding={padding!r})")
        script.add(f"x = {s8_expr(x, X_SCALE, X_ZP)}")
        script.emit(f"{name}.y", "layer.forward(x)", y.shape, "int8")
        script.add(f"y = layer.output")
        script.emit(f"{name}.yq", "mt.Tensor([y.scale, y.zero_point])", (2,))
        script.add(f"dx = layer.backward({s8_expr(dy, DY_SCALE)})")
        script.emit(f"{name}.dx", "dx", x.shape, "int8")
        script.emit(f"{name}.dxq", "mt.Tensor([dx.scale, dx.zero_point])", (2,))
        cases.append((name, shape, kernel, stride, padding, x, y, dy))
    results = script.run(target)
    for name, shape, kernel, stride, padding, x, y, dy in cases:
        assert np.array_equal(results[f"{name}.y"], y), f"{name}: forward differs from the integer reference"
        assert results[f"{name}.yq"].tolist() == [X_SCALE, X_ZP], f"{name}: the mean keeps the quantization"
        dx, dx_scale = Q.avgpool2d_s8_grad_input(shape, dy, DY_SCALE, kernel, stride, padding)
        assert np.array_equal(results[f"{name}.dx"], dx), f"{name}: input gradient differs"
        got_scale, got_zp = results[f"{name}.dxq"]
        assert abs(got_scale - dx_scale) <= SCALE_RTOL * dx_scale and got_zp == 0, (name, got_scale, dx_scale)

        # Against float64: the forward is the exact mean rounded once (half a step of x's
        # scale; a mean of in-range values cannot saturate); the input gradient is exact when
        # windows do not overlap (cover 1), else within half a step of its scale; the float32
        # scale dy_scale * cover / area adds its own rounding (2**-23 relative, twice).
        xr = Q.dequantize(x, X_SCALE, X_ZP).astype(np.float64)
        ref = F.avgpool2d_forward(xr, kernel, stride, padding)
        yr = Q.dequantize(y, X_SCALE, X_ZP).astype(np.float64)
        assert np.all(np.abs(yr - ref) <= 0.5 * X_SCALE), f"{name}: forward beyond half a step"
        dx_ref = F.avgpool2d_backward(shape, dy.astype(np.float64) * DY_SCALE, kernel, stride, padding)
        cover = Q.avgpool2d_s8_cover(shape, kernel, stride, padding)
        err = np.abs(dx.astype(np.float64) * dx_scale - dx_ref)
        bound = (0.0 if cover == 1 else 0.5 * dx_scale) + 2.0**-22 * np.abs(dx_ref)
        assert np.all(err <= bound), f"{name}: input gradient beyond its bound"


def test_int8_layers_refuse_mixed_dtypes_clearly(target):
    cases = [
        ("mt.AvgPool2d(2, dtype=mt.int8).forward(mt.zeros((1, 2, 2, 1)))", "ValueError",
         "AvgPool2d has dtype int8 but its input is float32"),
        ("mt.AvgPool2d(2).forward(mt.zeros((1, 1, 1, 1), dtype=mt.int8))", "ValueError", "kernel is larger"),
        ("p8.backward(mt.zeros((1, 1, 1, 1)))", "TypeError", "int8"),
    ]
    setup = ["import mcutrain as mt", "p8 = mt.AvgPool2d(2)", "p8.forward(mt.zeros((1, 2, 2, 1), dtype=mt.int8))"]
    out = assert_raises_clearly(target, cases, setup, after="p8.output.dtype")
    assert out[-1] == "int8"  # the board still works
