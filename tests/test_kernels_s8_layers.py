"""int8 parameterless and joining kernels (host build, UBSan): add_s8, the int8 average pool,
softmax's integer backward and batch normalization against mcutrain.reference.quantized bit for
bit, over geometries and scales the device tests do not reach (multipliers far apart, tiny and
huge output scales, in-place sums, overlapping pool windows)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from kernel_lib import ptr
from mcutrain.reference import functional as F
from mcutrain.reference import quantized as Q

c_float, c_int32, vp = ctypes.c_float, ctypes.c_int32, ctypes.c_void_p


class Range(ctypes.Structure):
    _fields_ = [("min", c_float), ("max", c_float)]


class QParams(ctypes.Structure):
    _fields_ = [("scale", c_float), ("zero_point", c_int32)]


class Requant(ctypes.Structure):
    _fields_ = [("multiplier", c_int32), ("shift", c_int32)]


class AddS8(ctypes.Structure):
    _fields_ = [("m_a", c_int32), ("m_b", c_int32), ("sh_a", c_int32), ("sh_b", c_int32),
                ("right", c_int32), ("unit", c_float)]


class PoolParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in (
        "batch", "in_h", "in_w", "channels", "out_h", "out_w", "kernel_h", "kernel_w",
        "stride_h", "stride_w", "pad_h", "pad_w")]


@pytest.fixture(scope="module")
def lib(kernels):
    k = kernels
    P = ctypes.POINTER
    k.mt_add_s8_make.argtypes, k.mt_add_s8_make.restype = [c_float, c_float, c_float, P(AddS8)], ctypes.c_int
    k.mt_add_s8.argtypes = [P(AddS8), vp, c_int32, vp, c_int32, vp, c_int32, c_int32, c_int32,
                            ctypes.c_size_t, P(Range)]
    k.mt_avgpool2d_s8_forward.argtypes = [P(PoolParams), vp, vp, c_int32]
    k.mt_avgpool2d_s8_grad_input.argtypes = [P(PoolParams), vp, vp]
    k.mt_avgpool2d_s8_cover.argtypes, k.mt_avgpool2d_s8_cover.restype = [P(PoolParams)], ctypes.c_int
    k.mt_maxpool2d_s8_forward.argtypes = [P(PoolParams), vp, vp]
    k.mt_maxpool2d_s8_grad_input.argtypes = [P(PoolParams), vp, vp, vp]
    k.mt_softmax_s8_grad_absmax.argtypes, k.mt_softmax_s8_grad_absmax.restype = [vp, vp, ctypes.c_int,
                                                                                 ctypes.c_int], c_int32
    k.mt_softmax_s8_grad_input.argtypes = [vp, vp, vp, ctypes.c_int, ctypes.c_int, Requant]
    k.mt_quant_multiplier.argtypes = [c_float, P(Requant)]
    return k


def s8(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int8)


# (a scale, b scale, y scale): similar, far apart (more than 2**22: the smaller product is
# rounded first), one term negligible, an output scale below the inputs' (M >= 1)
ADD_SCALES = [(0.05, 0.031, 0.1), (0.5, 2.0**-30, 0.25), (1e-3, 3e-12, 7e-3), (0.2, 0.3, 0.01),
              (2.0**-20, 2.0**-20, 2.0**-19), (1.0, 1.0, 1e-6)]


@pytest.mark.parametrize("scales", ADD_SCALES)
@pytest.mark.parametrize("symmetric", [False, True])
def test_add_s8_matches_the_reference_and_rounds_once(lib, scales, symmetric):
    rng = np.random.default_rng(61)
    sa, sb, sy = scales
    n = 257
    a, b = s8(rng.integers(-128, 128, n)), s8(rng.integers(-128, 128, n))
    za, zb, zy = (0, 0, 0) if symmetric else (5, -17, 9)
    qmin, qmax = (-127, 127) if symmetric else (-128, 127)
    k = AddS8()
    assert lib.mt_add_s8_make(sa, sb, sy, ctypes.byref(k)) == 0
    ref_k = Q.add_s8_make(sa, sb, sy)
    assert (k.m_a, k.m_b, k.sh_a, k.sh_b, k.right) == ref_k[:5] and np.float32(k.unit) == np.float32(ref_k.unit)
    y, r = s8(np.zeros(n)), Range()
    lib.mt_add_s8(ctypes.byref(k), ptr(a), za, ptr(b), zb, ptr(y), zy, qmin, qmax, n, ctypes.byref(r))
    ref_y, (lo, hi) = Q.add_s8(ref_k, a, za, b, zb, zy, qmin, qmax)
    assert np.array_equal(y, ref_y)
    assert (np.float32(r.min), np.float32(r.max)) == (np.float32(lo), np.float32(hi))
    # In place (y = a), and range only (y NULL) give the same.
    a2 = a.copy()
    lib.mt_add_s8(ctypes.byref(k), ptr(a2), za, ptr(b), zb, ptr(a2), zy, qmin, qmax, n, None)
    assert np.array_equal(a2, ref_y)
    # One rounding of the float32 multipliers' exact sum unless the exponents lie over 22 apart.
    ma, mb = np.float32(np.float32(sa) / np.float32(sy)), np.float32(np.float32(sb) / np.float32(sy))
    exact = float(ma) * (a.astype(np.int64) - za) + float(mb) * (b.astype(np.int64) - zb)
    inside = (exact + zy > qmin) & (exact + zy < qmax)
    spread = abs(Q.quant_multiplier(ma)[1] - Q.quant_multiplier(mb)[1]) if ma and mb else 0
    slack = 0.5 if spread <= 22 else 0.5 + 2.0**-20
    assert np.all(np.abs(y.astype(np.int64) - zy - exact)[inside] <= slack)


def test_add_s8_refuses_unrepresentable_multipliers(lib):
    k = AddS8()
    assert lib.mt_add_s8_make(1.0, 1.0, 1e-10, ctypes.byref(k)) == -1  # 1e10 >= 2**30
    assert lib.mt_add_s8_make(float("inf"), 1.0, 1.0, ctypes.byref(k)) == -1


POOL_GEOMETRIES = [((2, 6, 5, 3), (2, 2), (2, 2), (0, 0)), ((1, 7, 6, 4), (3, 3), (2, 2), (1, 1)),
                   ((3, 5, 8, 2), (3, 2), (1, 2), (1, 0)), ((1, 9, 9, 1), (5, 4), (1, 3), (2, 2)),
                   ((2, 4, 4, 3), (4, 4), (1, 1), (2, 1))]


@pytest.mark.parametrize("shape,kernel,stride,padding", POOL_GEOMETRIES)
def test_avgpool2d_s8_matches_the_reference(lib, shape, kernel, stride, padding):
    rng = np.random.default_rng(62)
    x = s8(rng.integers(-128, 128, shape))
    oh = (shape[1] + 2 * padding[0] - kernel[0]) // stride[0] + 1
    ow = (shape[2] + 2 * padding[1] - kernel[1]) // stride[1] + 1
    p = PoolParams(shape[0], shape[1], shape[2], shape[3], oh, ow, *kernel, *stride, *padding)
    for zp in (-128, 0, 37):
        y = s8(np.zeros((shape[0], oh, ow, shape[3])))
        lib.mt_avgpool2d_s8_forward(ctypes.byref(p), ptr(x), ptr(y), zp)
        assert np.array_equal(y, Q.avgpool2d_s8_forward(x, zp, kernel, stride, padding))
    dy = s8(rng.integers(-127, 128, (shape[0], oh, ow, shape[3])))
    dy[0, 0, 0, 0] = 127  # a saturated error everywhere it lands
    dx = s8(np.full(shape, 99))
    lib.mt_avgpool2d_s8_grad_input(ctypes.byref(p), ptr(dy), ptr(dx))
    ref, _ = Q.avgpool2d_s8_grad_input(shape, dy, 1.0, kernel, stride, padding)
    assert np.array_equal(dx, ref)
    assert lib.mt_avgpool2d_s8_cover(ctypes.byref(p)) == Q.avgpool2d_s8_cover(shape, kernel, stride, padding)
    assert np.abs(dx.astype(int)).max() <= 127


def pool_params(shape, kernel, stride, padding) -> tuple[PoolParams, int, int]:
    oh = (shape[1] + 2 * padding[0] - kernel[0]) // stride[0] + 1
    ow = (shape[2] + 2 * padding[1] - kernel[1]) // stride[1] + 1
    return PoolParams(shape[0], shape[1], shape[2], shape[3], oh, ow, *kernel, *stride, *padding), oh, ow


# Channels 1..7 (whole words of four and the tails), windows (1,1), (2,2), (3,3), (5,1) with
# strides below, at and above the kernel, padding, batches 1..5.
ODD_POOLS = [((b, h, w, c), k, s, pad)
             for b, h, w, c, k, s, pad in [
                 (1, 1, 1, 1, (1, 1), (1, 1), (0, 0)), (2, 3, 5, 7, (1, 1), (2, 1), (0, 0)),
                 (1, 4, 4, 4, (2, 2), (2, 2), (0, 0)), (3, 5, 7, 3, (2, 2), (2, 2), (0, 0)),
                 (5, 6, 6, 5, (2, 2), (2, 2), (1, 1)), (2, 5, 5, 6, (2, 2), (3, 3), (0, 0)),
                 (1, 6, 5, 2, (2, 2), (1, 1), (1, 0)), (4, 7, 7, 7, (3, 3), (3, 3), (0, 0)),
                 (2, 7, 6, 4, (3, 3), (2, 2), (1, 1)), (1, 5, 5, 1, (3, 3), (1, 1), (1, 1)),
                 (1, 25, 5, 32, (5, 1), (5, 1), (0, 0)), (3, 12, 3, 5, (5, 1), (5, 1), (2, 0)),
                 (2, 11, 4, 8, (5, 1), (2, 1), (0, 0)), (1, 9, 2, 6, (5, 1), (6, 1), (2, 0)),
                 # overlapping max windows past the gather's 64-value tile: channels, then columns
                 (1, 9, 2, 70, (5, 1), (2, 1), (2, 0)), (2, 4, 40, 3, (3, 3), (1, 1), (1, 1))]]


def ties(rng, shape) -> np.ndarray:
    """int8 values from a handful of levels (many equal maxima in a window), extremes included."""
    return s8(rng.choice(np.array([-128, -127, -1, 0, 1, 126, 127]), shape))


@pytest.mark.parametrize("shape,kernel,stride,padding", ODD_POOLS)
def test_maxpool2d_s8_matches_the_reference_with_ties_and_odd_shapes(lib, shape, kernel, stride, padding):
    rng = np.random.default_rng(sum(shape) * 7 + kernel[0])
    p, oh, ow = pool_params(shape, kernel, stride, padding)
    for x in (ties(rng, shape), s8(rng.integers(-128, 128, shape)), s8(np.full(shape, -128))):
        y = s8(np.full((shape[0], oh, ow, shape[3]), 99))
        lib.mt_maxpool2d_s8_forward(ctypes.byref(p), ptr(x), ptr(y))
        assert np.array_equal(y, F.maxpool2d_forward(x, kernel, stride, padding))
        # Errors at the limits (-128 saturates to -127) and overlapping windows summing past them.
        dy = s8(rng.choice(np.array([-128, -127, -100, 0, 3, 100, 127]), y.shape))
        dx = s8(np.full(shape, 99))
        lib.mt_maxpool2d_s8_grad_input(ctypes.byref(p), ptr(x), ptr(dy), ptr(dx))
        ref = np.clip(F.maxpool2d_backward(x, dy, kernel, stride, padding), -127, 127)
        assert np.array_equal(dx, ref)


@pytest.mark.parametrize("shape,kernel,stride,padding", ODD_POOLS)
def test_avgpool2d_s8_matches_the_reference_with_odd_shapes_and_extreme_zero_points(
        lib, shape, kernel, stride, padding):
    rng = np.random.default_rng(sum(shape) * 11 + kernel[1])
    p, oh, ow = pool_params(shape, kernel, stride, padding)
    for x in (ties(rng, shape), s8(rng.integers(-128, 128, shape))):
        for zp in (-128, -1, 0, 127):
            y = s8(np.full((shape[0], oh, ow, shape[3]), 99))
            lib.mt_avgpool2d_s8_forward(ctypes.byref(p), ptr(x), ptr(y), zp)
            assert np.array_equal(y, Q.avgpool2d_s8_forward(x, zp, kernel, stride, padding))
    for dy in (ties(rng, (shape[0], oh, ow, shape[3])), s8(np.full((shape[0], oh, ow, shape[3]), -128))):
        dx = s8(np.full(shape, 99))
        lib.mt_avgpool2d_s8_grad_input(ctypes.byref(p), ptr(dy), ptr(dx))
        ref, _ = Q.avgpool2d_s8_grad_input(shape, dy, 1.0, kernel, stride, padding)
        assert np.array_equal(dx, ref)


@pytest.mark.parametrize("area", [1, 2, 3, 4, 5, 6, 8, 9, 12, 16, 25, 49, 64, 100, 255, 256, 1024, 1025])
def test_avgpool2d_s8_rounds_every_window_sum_exactly(lib, area):
    # Every sum of a window of `area` offsets in [-255, 255] (zero points -128 and 127), each in
    # its own output, against the exact half-to-even rounding: the reciprocal multiply (areas up
    # to 1024) and the division beyond it.
    for zp in (-128, 127):
        lo, hi = (-128 - zp) * area, (127 - zp) * area
        sums = np.arange(lo, hi + 1) if area <= 64 else np.unique(np.concatenate([
            np.arange(lo, lo + 4 * area), np.arange(hi - 4 * area, hi + 1),
            np.arange(-4 * area, 4 * area + 1)]))
        sums = sums[(sums >= lo) & (sums <= hi)]
        # A window of `area` values in [-128, 127] with each sum of offsets.
        base = np.full((len(sums), area), -128 if zp == 127 else 127, dtype=np.int64)
        need = sums + zp * area - base.sum(axis=1)
        step = 255 if zp == 127 else -255
        for i in range(area):
            take = np.clip(need, min(0, step), max(0, step)) if step > 0 else np.clip(need, step, 0)
            base[:, i] += take
            need -= take
        assert not need.any()
        x = s8(base.T.reshape(1, area, 1, len(sums)))
        p, oh, ow = pool_params(x.shape, (area, 1), (area, 1), (0, 0))
        y = s8(np.zeros((1, 1, 1, len(sums))))
        lib.mt_avgpool2d_s8_forward(ctypes.byref(p), ptr(x), ptr(y), zp)
        exact = zp + Q.div_round_half_even(sums, area)
        assert np.array_equal(y.ravel(), np.clip(exact, -128, 127))


@pytest.mark.parametrize("rows,cols", [(3, 10), (1, 1), (2, 300), (5, 2)])
def test_softmax_s8_integer_backward_matches_the_reference(lib, rows, cols):
    rng = np.random.default_rng(63)
    # A softmax output (as the layer stores it) and errors at the limits.
    y = Q.softmax_s8_forward(rng.integers(-128, 128, (rows, cols)), 0.1)
    dy = s8(rng.choice([-127, 127, 0, 5], (rows, cols)))
    dy_scale = 0.0078125
    dx_ref, dx_scale = Q.softmax_s8_grad_input(y, dy, dy_scale)
    u, d = y.astype(np.int64) + 128, dy.astype(np.int64)
    acc = u * (256 * d - (u * d).sum(axis=-1, keepdims=True))
    assert lib.mt_softmax_s8_grad_absmax(ptr(y), ptr(dy), rows, cols) == np.abs(acc).max()
    m = Requant()
    assert lib.mt_quant_multiplier(np.float32(dy_scale / 65536) / np.float32(dx_scale), ctypes.byref(m)) == 0
    dx = s8(np.zeros((rows, cols)))
    lib.mt_softmax_s8_grad_input(ptr(y), ptr(dy), ptr(dx), rows, cols, m)
    assert np.array_equal(dx, dx_ref)
