"""fp32 activation, pooling, batch norm, loss and optimizer kernels against the numpy reference.

The kernels run on float32 inputs; the reference sees the same float32 values in float64, so
every difference is the kernel's own rounding. Bounds use u = 2**-24 (float32 unit roundoff)
times the number of roundings that can pile up on an element, relative to the magnitudes
involved (Higham, Accuracy and Stability of Numerical Algorithms, ch. 3).
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest
from kernel_lib import f32, ptr
from mcutrain.reference import (
    BatchNormCache,
    adam_step,
    avgpool2d_backward,
    avgpool2d_forward,
    batchnorm2d_backward,
    batchnorm2d_forward_eval,
    batchnorm2d_forward_train,
    batchnorm_fold,
    conv_output_size,
    cross_entropy,
    global_avgpool_backward,
    global_avgpool_forward,
    maxpool2d_backward,
    maxpool2d_forward,
    mse,
    relu6_backward,
    relu6_forward,
    relu_backward,
    relu_forward,
    sgd_step,
    softmax_backward,
    softmax_forward,
)

U = 2.0**-24  # float32 unit roundoff


# ---------------------------------------------------------------------------------------------
# ctypes mirrors of the headers


class Pool2dParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in (
        "batch", "in_h", "in_w", "channels", "out_h", "out_w", "kernel_h", "kernel_w",
        "stride_h", "stride_w", "pad_h", "pad_w")]


class BatchNormParams(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int), ("channels", ctypes.c_int),
                ("eps", ctypes.c_float), ("momentum", ctypes.c_float)]


class SgdParams(ctypes.Structure):
    _fields_ = [("lr", ctypes.c_float), ("momentum", ctypes.c_float),
                ("weight_decay", ctypes.c_float)]


class AdamParams(ctypes.Structure):
    _fields_ = [("lr", ctypes.c_float), ("beta1", ctypes.c_float), ("beta2", ctypes.c_float),
                ("eps", ctypes.c_float), ("weight_decay", ctypes.c_float),
                ("step", ctypes.c_int)]


P, I, N, F = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_float
SIGNATURES = {
    "mt_relu_f32_forward": (None, [P, P, N]),
    "mt_relu_f32_grad_input": (None, [P, P, P, N]),
    "mt_relu6_f32_forward": (None, [P, P, N]),
    "mt_relu6_f32_grad_input": (None, [P, P, P, N]),
    "mt_softmax_f32_forward": (None, [P, P, I, I]),
    "mt_softmax_f32_grad_input": (None, [P, P, P, I, I]),
    "mt_add_f32": (None, [P, P, P, N]),
    "mt_clamp_s8_forward": (None, [P, P, N, ctypes.c_int32, ctypes.c_int32]),
    "mt_clamp_s8_grad_input": (None, [P, P, P, N, ctypes.c_int32, ctypes.c_int32]),
    "mt_maxpool2d_f32_forward": (None, [ctypes.POINTER(Pool2dParams), P, P]),
    "mt_maxpool2d_f32_grad_input": (None, [ctypes.POINTER(Pool2dParams), P, P, P]),
    "mt_avgpool2d_f32_forward": (None, [ctypes.POINTER(Pool2dParams), P, P]),
    "mt_avgpool2d_f32_grad_input": (None, [ctypes.POINTER(Pool2dParams), P, P]),
    "mt_global_avgpool_f32_forward": (None, [P, P, I, I, I]),
    "mt_global_avgpool_f32_grad_input": (None, [P, P, I, I, I]),
    "mt_batchnorm_f32_forward_train": (
        None, [ctypes.POINTER(BatchNormParams), P, P, P, P, P, P, P, P]),
    "mt_batchnorm_f32_forward_eval": (
        None, [ctypes.POINTER(BatchNormParams), P, P, P, P, P, P]),
    "mt_batchnorm_f32_backward": (
        None, [ctypes.POINTER(BatchNormParams), P, P, P, P, P, P, F, P, P]),
    "mt_batchnorm_f32_fold": (
        None, [ctypes.POINTER(BatchNormParams), P, P, P, P, P, I, P]),
    "mt_cross_entropy_f32": (F, [P, P, I, I, P]),
    "mt_mse_f32": (F, [P, P, I, P]),
    "mt_sgd_f32_step": (None, [ctypes.POINTER(SgdParams), P, P, P, N]),
    "mt_sgd_f32_fused_begin": (None, [ctypes.POINTER(SgdParams), P, P, N]),
    "mt_sgd_f32_fused_end": (None, [ctypes.POINTER(SgdParams), P, P, N]),
    "mt_adam_f32_step": (None, [ctypes.POINTER(AdamParams), P, P, P, P, N]),
}


@pytest.fixture(scope="module")
def k(kernels):
    """The kernel library with this file's functions typed (floats and size_t need it)."""
    for name, (restype, argtypes) in SIGNATURES.items():
        fn = getattr(kernels, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return kernels


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(20251124 + seed)


def assert_within(got: np.ndarray, expected: np.ndarray, bound: np.ndarray | float, what: str):
    err = np.abs(np.asarray(got, np.float64) - expected)
    bound = np.broadcast_to(np.asarray(bound, np.float64), err.shape)
    bad = err > bound
    assert not bad.any(), (
        f"{what}: {bad.sum()} of {err.size} elements off, worst error {err.max():.3g} "
        f"(bound there {bound.flat[np.argmax(err - bound)]:.3g})"
    )


# ---------------------------------------------------------------------------------------------
# activations, softmax, add


def test_relu_and_relu6_match_reference_exactly_in_place(k):
    x = f32(rng(1).standard_normal(3 * 5 * 7) * 4)
    x[:6] = [0.0, -0.0, 6.0, -1e-30, 1e-30, 6.000001]  # the boundaries of both masks
    dy = f32(rng(2).standard_normal(x.size))
    for forward, grad_input, ref_forward, ref_backward in (
        (k.mt_relu_f32_forward, k.mt_relu_f32_grad_input, relu_forward, relu_backward),
        (k.mt_relu6_f32_forward, k.mt_relu6_f32_grad_input, relu6_forward, relu6_backward),
    ):
        y = x.copy()
        forward(ptr(y), ptr(y), y.size)  # in place
        # Selecting and clamping round nothing: exact.
        np.testing.assert_array_equal(y, ref_forward(x))
        dx = dy.copy()
        grad_input(ptr(y), ptr(dx), ptr(dx), dx.size)  # in place
        np.testing.assert_array_equal(dx, ref_backward(y, dy))


# Every class of float bits the ReLU kernels (which work on the bits) must tell apart: +-0,
# the smallest and largest subnormals and normals, 6 and its neighbours, +-inf, quiet and
# signalling NaNs of both signs.
SPECIAL_F32_BITS = np.array([
    0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x007fffff, 0x807fffff, 0x00800000, 0x80800000,
    0x3f800000, 0xbf800000, 0x40bfffff, 0x40c00000, 0x40c00001, 0xc0c00000, 0x7f7fffff, 0xff7fffff,
    0x7f800000, 0xff800000, 0x7f800001, 0xff800001, 0x7fc00000, 0xffc00000, 0x7fffffff, 0xffffffff,
], dtype=np.uint32)


@pytest.mark.parametrize("n", [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 24, 33])
def test_relu_kernels_match_the_float_comparisons_bit_for_bit_on_special_values(k, n):
    """Every length around the 4- and 8-value steps, special bits and random bits, both
    out of place and in place: the bit tricks must equal the comparisons exactly."""
    r = rng(40 + n)
    bits = np.concatenate([SPECIAL_F32_BITS, r.integers(0, 2**32, 64, dtype=np.uint64).astype(np.uint32)])
    x = r.permutation(bits)[:n].view(np.float32).copy()
    dy = f32(r.standard_normal(n))
    with np.errstate(invalid="ignore"):
        relu = np.where(x < 0, np.float32(0), x)
        relu6 = np.where(relu > 6, np.float32(6), relu)
    for forward, grad_input, want_y, keep in (
        (k.mt_relu_f32_forward, k.mt_relu_f32_grad_input, relu, lambda y: y > 0),
        (k.mt_relu6_f32_forward, k.mt_relu6_f32_grad_input, relu6, lambda y: (y > 0) & (y < 6)),
    ):
        y = np.full(n, np.float32(7.5))
        forward(ptr(x), ptr(y), n)
        assert np.array_equal(y.view(np.uint32), want_y.view(np.uint32))
        inplace = x.copy()
        forward(ptr(inplace), ptr(inplace), n)
        assert np.array_equal(inplace.view(np.uint32), want_y.view(np.uint32))
        # Backward takes any y (as the kernels' contract says), so feed it x's bits as well.
        for yy in (want_y, x):
            with np.errstate(invalid="ignore"):
                want = np.where(keep(yy), dy, np.float32(0))
            dx = np.full(n, np.float32(7.5))
            grad_input(ptr(yy), ptr(dy), ptr(dx), n)
            assert np.array_equal(dx.view(np.uint32), want.view(np.uint32))
            d = dy.copy()
            grad_input(ptr(yy), ptr(d), ptr(d), n)
            assert np.array_equal(d.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("lo, hi", [(-128, 127), (-128, 128), (-3, 128), (-3, 127), (5, 40), (127, 128),
                                    (127, 127), (-128, -128), (-128, -127), (0, 0), (-20, 90)])
def test_int8_clamp_kernels_match_numpy_for_every_bound_and_length(k, lo, hi):
    r = rng(60)
    for n in (0, 1, 3, 4, 5, 8, 11, 16, 37):
        x = r.integers(-128, 128, n).astype(np.int8)
        dy = r.integers(-127, 128, n).astype(np.int8)
        y = np.zeros(n, np.int8)
        k.mt_clamp_s8_forward(ptr(x), ptr(y), n, lo, min(hi, 127))
        assert np.array_equal(y, np.clip(x.astype(np.int32), lo, min(hi, 127)).astype(np.int8))
        dx = np.zeros(n, np.int8)
        k.mt_clamp_s8_grad_input(ptr(x), ptr(dy), ptr(dx), n, lo, hi)
        want = np.where((x > lo) & (x < hi), dy, 0).astype(np.int8)
        assert np.array_equal(dx, want)
        k.mt_clamp_s8_grad_input(ptr(x), ptr(dy), ptr(dy), n, lo, hi)  # in place
        assert np.array_equal(dy, want)


@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 7), (1, 10), (5, 3)])
def test_softmax_forward_and_grad_input_match_reference_in_place(k, rows, cols):
    x = f32(rng(3).standard_normal((rows, cols)) * 5)
    y = x.copy()
    k.mt_softmax_f32_forward(ptr(y), ptr(y), rows, cols)
    # Each y is exp (a few ulp) over a cols-term sum: (cols + 8) u relative to y <= 1; the
    # rounding of x - max adds at most u*t*exp(-t) <= u/e absolute.
    assert_within(y, softmax_forward(x), (cols + 8) * U, "softmax forward")

    dy = f32(rng(4).standard_normal((rows, cols)))
    dx = dy.copy()
    k.mt_softmax_f32_grad_input(ptr(y), ptr(dx), ptr(dx), rows, cols)
    # sum(dy*y) over cols terms, then one subtraction and one product.
    magnitude = np.abs(dy) + (np.abs(dy) * y).sum(axis=1, keepdims=True)
    assert_within(dx, softmax_backward(y, dy), (cols + 4) * U * y * magnitude,
                  "softmax grad_input")


def test_softmax_stays_finite_for_huge_logits(k):
    x = f32([[1e4, -1e4, 0.0, 1e4 - 1], [-1e4, -1e4 + 2, -1e4, -1e4], [3e38, -3e38, 0.0, 1.0]])
    y = np.empty_like(x)
    k.mt_softmax_f32_forward(ptr(x), ptr(y), *x.shape)
    assert np.isfinite(y).all()
    assert_within(y, softmax_forward(x), 12 * U, "softmax forward, huge logits")


def test_add_is_the_rounded_float32_sum_in_place(k):
    a = f32(rng(5).standard_normal(3 * 4 * 5 * 7))
    b = f32(rng(6).standard_normal(a.size) * 1e-3)
    y = a.copy()
    k.mt_add_f32(ptr(y), ptr(b), ptr(y), y.size)
    np.testing.assert_array_equal(y, a + b)  # one IEEE rounding, as numpy's float32 add


# ---------------------------------------------------------------------------------------------
# pooling

POOL_CASES = [
    # batch, in_h, in_w, channels, kernel, stride, padding
    pytest.param(1, 6, 8, 3, (2, 2), (2, 2), (0, 0), id="2x2s2"),
    pytest.param(3, 7, 5, 5, (3, 3), (2, 2), (1, 1), id="3x3s2p1-odd"),
    pytest.param(3, 6, 9, 7, (3, 2), (1, 2), (1, 0), id="3x2-s1x2-p1x0"),
    pytest.param(1, 5, 5, 1, (3, 3), (1, 1), (1, 1), id="3x3s1p1-overlap"),
    pytest.param(3, 9, 4, 5, (2, 3), (3, 1), (1, 1), id="stride-over-kernel"),
]


def pool_params(batch, in_h, in_w, channels, kernel, stride, padding) -> Pool2dParams:
    out_h = conv_output_size(in_h, kernel[0], stride[0], padding[0])
    out_w = conv_output_size(in_w, kernel[1], stride[1], padding[1])
    return Pool2dParams(batch, in_h, in_w, channels, out_h, out_w, *kernel, *stride, *padding)


def taps_per_input(kernel, stride) -> int:
    """How many windows can cover one input pixel: the most terms a dx element sums."""
    return math.ceil(kernel[0] / stride[0]) * math.ceil(kernel[1] / stride[1])


def run_maxpool(k, p: Pool2dParams, x: np.ndarray, dy: np.ndarray):
    x, dy = f32(x), f32(dy)  # held here so the pointers outlive the calls
    y = np.empty((p.batch, p.out_h, p.out_w, p.channels), np.float32)
    k.mt_maxpool2d_f32_forward(ctypes.byref(p), ptr(x), ptr(y))
    dx = np.full(x.shape, np.nan, np.float32)  # overwritten, so garbage must not survive
    k.mt_maxpool2d_f32_grad_input(ctypes.byref(p), ptr(x), ptr(dy), ptr(dx))
    return y, dx


@pytest.mark.parametrize("batch, in_h, in_w, channels, kernel, stride, padding", POOL_CASES)
def test_maxpool2d_matches_reference(k, batch, in_h, in_w, channels, kernel, stride, padding):
    p = pool_params(batch, in_h, in_w, channels, kernel, stride, padding)
    # All negative, so a kernel that padded with zeros instead of -inf would show.
    x = f32(-1 - np.abs(rng(7).standard_normal((batch, in_h, in_w, channels))))
    dy = f32(rng(8).standard_normal((batch, p.out_h, p.out_w, channels)))
    y, dx = run_maxpool(k, p, x, dy)
    np.testing.assert_array_equal(y, maxpool2d_forward(x, kernel, stride, padding))  # exact
    # dx sums up to taps dy values, in another order than the reference.
    bound = taps_per_input(kernel, stride) * U * maxpool2d_backward(
        x, np.abs(dy), kernel, stride, padding)
    assert_within(dx, maxpool2d_backward(x, dy, kernel, stride, padding), bound,
                  "maxpool grad_input")


@pytest.mark.parametrize("batch, in_h, in_w, channels, kernel, stride, padding", POOL_CASES)
def test_maxpool2d_ties_go_to_the_first_maximum_in_row_major_order(
        k, batch, in_h, in_w, channels, kernel, stride, padding):
    p = pool_params(batch, in_h, in_w, channels, kernel, stride, padding)
    # Three values, so most windows hold tied maxima; dy powers of two sum exactly, so
    # exact equality checks which input each window credited.
    x = f32(rng(9).integers(-1, 2, (batch, in_h, in_w, channels)))
    dy = f32(2.0 ** rng(10).integers(-4, 5, (batch, p.out_h, p.out_w, channels)))
    y, dx = run_maxpool(k, p, x, dy)
    np.testing.assert_array_equal(y, maxpool2d_forward(x, kernel, stride, padding))
    np.testing.assert_array_equal(dx, maxpool2d_backward(x, dy, kernel, stride, padding))

    constant = np.full_like(x, -3.0)
    y, dx = run_maxpool(k, p, constant, dy)
    np.testing.assert_array_equal(y, -3.0)
    np.testing.assert_array_equal(dx, maxpool2d_backward(constant, dy, kernel, stride, padding))


@pytest.mark.parametrize("batch, in_h, in_w, channels, kernel, stride, padding", POOL_CASES)
def test_avgpool2d_matches_reference_counting_padding(
        k, batch, in_h, in_w, channels, kernel, stride, padding):
    p = pool_params(batch, in_h, in_w, channels, kernel, stride, padding)
    x = f32(rng(11).standard_normal((batch, in_h, in_w, channels)) + 2)
    y = np.empty((batch, p.out_h, p.out_w, channels), np.float32)
    k.mt_avgpool2d_f32_forward(ctypes.byref(p), ptr(x), ptr(y))
    area = kernel[0] * kernel[1]
    # A sum of area terms, then one scaling by the rounded 1/area.
    bound = (area + 2) * U * avgpool2d_forward(np.abs(x), kernel, stride, padding)
    assert_within(y, avgpool2d_forward(x, kernel, stride, padding), bound, "avgpool forward")

    dy = f32(rng(12).standard_normal(y.shape))
    dx = np.full(x.shape, np.nan, np.float32)
    k.mt_avgpool2d_f32_grad_input(ctypes.byref(p), ptr(dy), ptr(dx))
    # Each contribution dy/area is rounded twice, then up to taps of them are summed.
    bound = (taps_per_input(kernel, stride) + 2) * U * avgpool2d_backward(
        x.shape, np.abs(dy), kernel, stride, padding)
    assert_within(dx, avgpool2d_backward(x.shape, dy, kernel, stride, padding), bound,
                  "avgpool grad_input")


@pytest.mark.parametrize("batch, height, width, channels",
                         [(3, 5, 7, 5), (1, 1, 1, 3), (1, 4, 3, 7)])
def test_global_avgpool_matches_reference(k, batch, height, width, channels):
    pixels = height * width
    x = f32(rng(13).standard_normal((batch, height, width, channels)))
    y = np.empty((batch, channels), np.float32)
    k.mt_global_avgpool_f32_forward(ptr(x), ptr(y), batch, pixels, channels)
    # A sum of `pixels` terms, then one scaling by the rounded 1/pixels.
    bound = (pixels + 2) * U * global_avgpool_forward(np.abs(x))
    assert_within(y, global_avgpool_forward(x), bound, "global avgpool forward")

    dy = f32(rng(14).standard_normal((batch, channels)))
    dx = np.full(x.shape, np.nan, np.float32)
    k.mt_global_avgpool_f32_grad_input(ptr(dy), ptr(dx), batch, pixels, channels)
    expected = global_avgpool_backward(x.shape, dy)
    assert_within(dx, expected, 2 * U * np.abs(expected), "global avgpool grad_input")


# ---------------------------------------------------------------------------------------------
# batch normalization

EPS, MOMENTUM = 1e-5, 0.1


def bn_inputs(seed: int, rows: int, channels: int):
    r = rng(seed)
    # A mean far from zero: a one-pass variance formula would lose it to cancellation.
    x = f32(r.standard_normal((rows, channels)) * r.uniform(0.5, 3, channels)
            + r.uniform(-20, 20, channels))
    gamma = f32(r.uniform(0.5, 2, channels) * r.choice([-1, 1], channels))
    beta = f32(r.standard_normal(channels))
    running_mean = f32(r.standard_normal(channels))
    running_var = f32(r.uniform(0.5, 2, channels))
    return x, gamma, beta, running_mean, running_var


def bn_params(rows: int, channels: int) -> BatchNormParams:
    return BatchNormParams(rows, channels, EPS, MOMENTUM)


def run_bn_train(k, x, gamma, beta, running_mean, running_var, y=None):
    rows, channels = x.shape
    p = bn_params(rows, channels)
    y = np.empty_like(x) if y is None else y
    mean = np.empty(channels, np.float32)
    inv_std = np.empty(channels, np.float32)
    k.mt_batchnorm_f32_forward_train(ctypes.byref(p), ptr(x), ptr(gamma), ptr(beta), ptr(y),
                                     ptr(mean), ptr(inv_std), ptr(running_mean),
                                     ptr(running_var))
    return y, mean, inv_std


# The kernel's float32 eps and momentum are what the reference must use.
EPS32, MOMENTUM32 = float(np.float32(EPS)), float(np.float32(MOMENTUM))


@pytest.mark.parametrize("rows, channels", [(3 * 5 * 7, 5), (1 * 4 * 6, 3), (2 * 3 * 3, 21)])
def test_batchnorm_forward_train_matches_reference_in_place(k, rows, channels):
    x, gamma, beta, running_mean, running_var = bn_inputs(15, rows, channels)
    ref_running_mean, ref_running_var = running_mean.astype(np.float64), running_var.astype(
        np.float64)
    expected, cache = batchnorm2d_forward_train(x, gamma, beta, ref_running_mean,
                                                ref_running_var, EPS32, MOMENTUM32)
    y = x.copy()
    y, mean, inv_std = run_bn_train(k, y, gamma, beta, running_mean, running_var, y=y)

    # Sums over `rows` terms of magnitude |x| (mean) or |x - mean|^2 (variance).
    ref_mean = x.astype(np.float64).mean(axis=0)
    abs_mean = np.abs(x).mean(axis=0)
    assert_within(mean, ref_mean, (rows + 2) * U * abs_mean, "batch mean")
    assert_within(inv_std, cache.inv_std, (rows + 8) * U * cache.inv_std, "inv_std")
    # y: the subtraction x - mean inherits the mean's error (scaled by inv_std), and the
    # variance error (rows u relative) scales xhat.
    bound = (rows + 8) * U * np.abs(gamma) * (abs_mean * cache.inv_std + np.abs(cache.xhat)) \
        + 2 * U * np.abs(beta)
    assert_within(y, expected, bound, "batchnorm train y")
    assert_within(running_mean, ref_running_mean,
                  (rows + 4) * U * (np.abs(ref_running_mean) + abs_mean), "running mean")
    assert_within(running_var, ref_running_var, (rows + 8) * U * np.abs(ref_running_var),
                  "running var")


def test_batchnorm_single_row_gives_beta_and_keeps_the_running_variance(k):
    x, gamma, beta, running_mean, running_var = bn_inputs(16, 1, 5)
    var_before = running_var.copy()
    ref_running_mean = running_mean.astype(np.float64)
    y, mean, inv_std = run_bn_train(k, x, gamma, beta, running_mean, running_var)
    # One row: mean == x exactly, so xhat is exactly 0 and y exactly beta.
    np.testing.assert_array_equal(mean, x[0])
    np.testing.assert_array_equal(y[0], beta)
    np.testing.assert_array_equal(running_var, var_before)
    batchnorm2d_forward_train(x, gamma, beta, ref_running_mean, None, EPS32, MOMENTUM32)
    assert_within(running_mean, ref_running_mean,
                  4 * U * (np.abs(ref_running_mean) + np.abs(x[0])), "running mean")
    assert_within(inv_std, 1 / np.sqrt(EPS32), 3 * U / np.sqrt(EPS32), "inv_std")

    dy = f32(rng(17).standard_normal(x.shape))
    dx = np.full_like(x, np.nan)
    dgamma, dbeta = np.zeros(5, np.float32), np.zeros(5, np.float32)
    p = bn_params(1, 5)
    k.mt_batchnorm_f32_backward(ctypes.byref(p), ptr(x), ptr(dy), ptr(gamma), ptr(mean),
                                ptr(inv_std), ptr(dx), 1.0, ptr(dgamma), ptr(dbeta))
    # With one row the output is constant in x: exactly zero gradient.
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(dgamma, 0.0)
    np.testing.assert_array_equal(dbeta, dy[0])


@pytest.mark.parametrize("rows, channels", [(3 * 5 * 7, 5), (1 * 4 * 6, 3), (2 * 3 * 3, 21)])
def test_batchnorm_backward_matches_reference_accumulating_and_in_place(k, rows, channels):
    x, gamma, beta, running_mean, running_var = bn_inputs(18, rows, channels)
    _, mean, inv_std = run_bn_train(k, x, gamma, beta, running_mean, running_var)
    dy = f32(rng(19).standard_normal(x.shape))
    # The reference from the kernel's own saved statistics: only backward's rounding differs.
    xhat = (x.astype(np.float64) - mean) * inv_std.astype(np.float64)
    cache = BatchNormCache(xhat, gamma.astype(np.float64), inv_std.astype(np.float64), True)
    ref_dx, ref_dgamma, ref_dbeta = batchnorm2d_backward(dy, cache)

    alpha = np.float32(-0.1)
    dgamma0 = f32(rng(20).standard_normal(channels))
    dbeta0 = f32(rng(21).standard_normal(channels))
    dgamma, dbeta = dgamma0.copy(), dbeta0.copy()
    dx = dy.copy()
    p = bn_params(rows, channels)
    k.mt_batchnorm_f32_backward(ctypes.byref(p), ptr(x), ptr(dx), ptr(gamma), ptr(mean),
                                ptr(inv_std), ptr(dx), float(alpha), ptr(dgamma), ptr(dbeta))

    # Sums over rows of |dy| and |dy * xhat|, then a few roundings per element.
    sum_abs_dy = np.abs(dy).sum(axis=0)
    sum_abs_dy_xhat = np.abs(dy * xhat).sum(axis=0)
    assert_within(dbeta, dbeta0 + alpha * ref_dbeta,
                  (rows + 3) * U * (abs(alpha) * sum_abs_dy + np.abs(dbeta0)), "dbeta")
    assert_within(dgamma, dgamma0 + alpha * ref_dgamma,
                  (rows + 6) * U * (abs(alpha) * sum_abs_dy_xhat + np.abs(dgamma0)), "dgamma")
    scale = np.abs(gamma) * inv_std
    bound = (rows + 8) * U * scale * (
        np.abs(dy) + (sum_abs_dy + np.abs(xhat) * sum_abs_dy_xhat) / rows)
    assert_within(dx, ref_dx, bound, "batchnorm dx")

    # dx alone, and the parameter gradients alone, give the same values.
    dx_only = np.empty_like(dx)
    k.mt_batchnorm_f32_backward(ctypes.byref(p), ptr(x), ptr(dy), ptr(gamma), ptr(mean),
                                ptr(inv_std), ptr(dx_only), 1.0, None, None)
    np.testing.assert_array_equal(dx_only, dx)
    dgamma_only = dgamma0.copy()
    k.mt_batchnorm_f32_backward(ctypes.byref(p), ptr(x), ptr(dy), ptr(gamma), ptr(mean),
                                ptr(inv_std), None, float(alpha), ptr(dgamma_only), None)
    np.testing.assert_array_equal(dgamma_only, dgamma)

    # Fused SGD without momentum accumulates alpha * dgamma straight into gamma: dx must
    # still see gamma as it was on entry.
    gamma_updated = gamma.copy()
    k.mt_batchnorm_f32_backward(ctypes.byref(p), ptr(x), ptr(dy), ptr(gamma), ptr(mean),
                                ptr(inv_std), None, float(alpha), ptr(gamma_updated), None)
    gamma_fused, dx_fused = gamma.copy(), np.empty_like(dx)
    k.mt_batchnorm_f32_backward(ctypes.byref(p), ptr(x), ptr(dy), ptr(gamma_fused), ptr(mean),
                                ptr(inv_std), ptr(dx_fused), float(alpha), ptr(gamma_fused),
                                None)
    np.testing.assert_array_equal(gamma_fused, gamma_updated)
    np.testing.assert_array_equal(dx_fused, dx_only)


@pytest.mark.parametrize("rows, channels", [(3 * 5 * 7, 5), (2 * 3 * 3, 21)])
def test_batchnorm_forward_eval_and_fold_match_reference(k, rows, channels):
    x, gamma, beta, running_mean, running_var = bn_inputs(22, rows, channels)
    # Close to the data's mean (up to +-20), so x - mean cancels.
    running_mean = f32(x.mean(axis=0) + running_mean * 0.1)
    p = bn_params(rows, channels)
    y = x.copy()
    k.mt_batchnorm_f32_forward_eval(ctypes.byref(p), ptr(y), ptr(gamma), ptr(beta),
                                    ptr(running_mean), ptr(running_var), ptr(y))
    scale = np.abs(gamma) / np.sqrt(running_var.astype(np.float64) + EPS32)
    # y = x * s + (beta - mean * s) with s rounded (3 u): the error is relative to the terms
    # before they cancel, not to y.
    bound = 6 * U * (np.abs(x) * scale + np.abs(running_mean) * scale + np.abs(beta))
    expected = batchnorm2d_forward_eval(x, gamma, beta, running_mean, running_var, EPS32)
    assert_within(y, expected, bound, "batchnorm eval")

    row_len = 3 * 3 * 4
    weight = f32(rng(23).standard_normal((channels, row_len)))
    bias = f32(rng(24).standard_normal(channels))
    ref_w, ref_b = batchnorm_fold(weight, bias, gamma, beta, running_mean, running_var, EPS32)
    k.mt_batchnorm_f32_fold(ctypes.byref(p), ptr(gamma), ptr(beta), ptr(running_mean),
                            ptr(running_var), ptr(weight), row_len, ptr(bias))
    assert_within(weight, ref_w, 5 * U * np.abs(ref_w), "folded weight")
    assert_within(bias, ref_b, 6 * U * ((np.abs(ref_b - beta) + np.abs(running_mean) * scale)
                                        + np.abs(beta)), "folded bias")


# ---------------------------------------------------------------------------------------------
# losses


def run_cross_entropy(k, logits, labels, dlogits):
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    rows, classes = logits.shape
    return k.mt_cross_entropy_f32(ptr(logits), ptr(labels), rows, classes, ptr(dlogits))


@pytest.mark.parametrize("rows, classes, scale", [(3, 7, 3.0), (1, 10, 1.0), (5, 2, 1e4),
                                                  (4, 5, 0.0)])
def test_cross_entropy_matches_reference_in_place(k, rows, classes, scale):
    logits = f32(rng(25).standard_normal((rows, classes)) * scale)
    labels = rng(26).integers(0, classes, rows)
    ref_loss, ref_grad = cross_entropy(logits, labels)
    d = logits.copy()
    loss = run_cross_entropy(k, d, labels, d)  # dlogits aliases logits
    assert math.isfinite(loss) and np.isfinite(d).all()
    # Every row's term log(sum exp) + (max - x[label]) is a sum of non-negative parts, so
    # the loss bounds their magnitude; add a few ulp of log and the row sum.
    assert abs(loss - ref_loss) <= (rows + 8) * U * ref_loss + 4 * U, (loss, ref_loss)
    # softmax (classes + 8 roundings relative to p <= 1, as in softmax) over rows; the
    # subtraction of 1/rows adds one more.
    assert_within(d, ref_grad, (classes + 10) * U / rows, "cross-entropy gradient")
    # Without a gradient buffer (evaluation) the loss is the same, bit for bit.
    assert run_cross_entropy(k, logits, labels, None) == loss


def test_cross_entropy_rejects_an_out_of_range_label_without_writing(k):
    logits = f32(rng(27).standard_normal((3, 5)))
    for bad in (-1, 5, 1 << 30):
        dlogits = np.full_like(logits, 7.0)
        loss = run_cross_entropy(k, logits, [0, 4, bad], dlogits)
        assert loss < 0
        np.testing.assert_array_equal(dlogits, 7.0)


@pytest.mark.parametrize("n", [1, 7, 105])
def test_mse_matches_reference_in_place(k, n):
    pred = f32(rng(28).standard_normal(n))
    target = f32(rng(29).standard_normal(n))
    ref_loss, ref_grad = mse(pred, target)
    d = pred.copy()
    loss = k.mt_mse_f32(ptr(d), ptr(target), n, ptr(d))  # dpred aliases pred
    # Non-negative terms, each rounded 3 times, summed sequentially (n - 1), then divided.
    assert abs(loss - ref_loss) <= (n + 4) * U * ref_loss, (loss, ref_loss)
    # (pred - target) and the product with the rounded 2/n.
    assert_within(d, ref_grad, 3 * U * np.abs(ref_grad), "mse gradient")
    assert k.mt_mse_f32(ptr(pred), ptr(target), n, None) == loss  # loss only, bit for bit


# ---------------------------------------------------------------------------------------------
# optimizers

SGD_CASES = [
    pytest.param(0.05, 0.9, 5e-4, id="momentum-wd"),
    pytest.param(0.1, 0.0, 1e-2, id="plain-wd"),
    pytest.param(0.1, 0.0, 0.0, id="plain"),
    pytest.param(0.02, 0.5, 0.0, id="momentum"),
]
STEPS = 6
SIZE = 37


def sgd_bound(w_ref: np.ndarray, v_ref: np.ndarray | None, lr: float, momentum: float,
              steps: int) -> np.ndarray:
    """Per step about four roundings of w-sized and lr*v-sized values; a velocity error is
    carried into later steps at most 1/(1 - momentum) times."""
    carry = 1 / (1 - momentum)
    v_term = 0.0 if v_ref is None else lr * np.abs(v_ref) * carry
    return 4 * steps * U * (np.abs(w_ref) + v_term + lr * 4 * carry)


@pytest.mark.parametrize("lr, momentum, weight_decay", SGD_CASES)
def test_sgd_step_matches_reference_over_several_steps(k, lr, momentum, weight_decay):
    r = rng(30)
    w = f32(r.standard_normal(SIZE))
    v = np.zeros(SIZE, np.float32) if momentum else None
    p = SgdParams(lr, momentum, weight_decay)
    lr, momentum, weight_decay = p.lr, p.momentum, p.weight_decay  # the float32 values
    w_ref = w.astype(np.float64)
    v_ref = None if v is None else np.zeros(SIZE)
    for _ in range(STEPS):
        g = f32(r.standard_normal(SIZE))
        k.mt_sgd_f32_step(ctypes.byref(p), ptr(w), ptr(g), ptr(v), SIZE)
        sgd_step(w_ref, g, v_ref, lr, momentum, weight_decay)
    assert_within(w, w_ref, sgd_bound(w_ref, v_ref, lr, momentum, STEPS), "sgd w")
    if v is not None:
        assert_within(v, v_ref, 4 * STEPS * U * (np.abs(v_ref) + 4) / (1 - momentum), "sgd v")


@pytest.mark.parametrize("lr, momentum, weight_decay", SGD_CASES)
def test_sgd_fused_with_an_accumulating_gradient_pass_matches_step(k, lr, momentum,
                                                                   weight_decay):
    r = rng(31)
    w_fused = f32(r.standard_normal(SIZE))
    w_step = w_fused.copy()
    v_fused = np.zeros(SIZE, np.float32) if momentum else None
    v_step = None if v_fused is None else v_fused.copy()
    p = SgdParams(lr, momentum, weight_decay)
    lr, momentum, weight_decay = p.lr, p.momentum, p.weight_decay
    w_ref = w_fused.astype(np.float64)
    v_ref = None if v_fused is None else np.zeros(SIZE)
    for _ in range(STEPS):
        g = f32(r.standard_normal(SIZE))
        k.mt_sgd_f32_fused_begin(ctypes.byref(p), ptr(w_fused), ptr(v_fused), SIZE)
        # The gradient pass (a gemm with C += alpha * ...), in float32 as the kernel does it.
        if momentum:
            v_fused += np.float32(1.0) * g
        else:
            w_fused += np.float32(-lr) * g
        k.mt_sgd_f32_fused_end(ctypes.byref(p), ptr(w_fused), ptr(v_fused), SIZE)
        k.mt_sgd_f32_step(ctypes.byref(p), ptr(w_step), ptr(g), ptr(v_step), SIZE)
        sgd_step(w_ref, g, v_ref, lr, momentum, weight_decay)
    bound = sgd_bound(w_ref, v_ref, lr, momentum, STEPS)
    assert_within(w_fused, w_ref, bound, "fused sgd w vs reference")
    # Both are within bound of the reference, so within twice it of each other.
    assert_within(w_fused, w_step, 2 * bound, "fused sgd w vs step")
    if momentum:
        assert_within(v_fused, v_step, 8 * STEPS * U * (np.abs(v_ref) + 4) / (1 - momentum),
                      "fused sgd v vs step")


ADAM_CASES = [
    pytest.param(1e-2, 0.9, 0.999, 1e-8, 0.0, id="defaults"),
    pytest.param(3e-3, 0.8, 0.99, 1e-6, 1e-2, id="weight-decay"),
]


@pytest.mark.parametrize("lr, beta1, beta2, eps, weight_decay", ADAM_CASES)
@pytest.mark.parametrize("first_step", [1, 10_000])
def test_adam_step_matches_reference_over_several_steps(k, lr, beta1, beta2, eps,
                                                        weight_decay, first_step):
    r = rng(32)
    w = f32(r.standard_normal(SIZE))
    m = np.zeros(SIZE, np.float32)
    v = np.zeros(SIZE, np.float32)
    p = AdamParams(lr, beta1, beta2, eps, weight_decay, 0)
    hyper = dict(lr=p.lr, beta1=p.beta1, beta2=p.beta2, eps=p.eps, weight_decay=p.weight_decay)
    w_ref, m_ref, v_ref = w.astype(np.float64), np.zeros(SIZE), np.zeros(SIZE)
    for step in range(first_step, first_step + STEPS):
        g = f32(r.standard_normal(SIZE))
        p.step = step
        k.mt_adam_f32_step(ctypes.byref(p), ptr(w), ptr(g), ptr(m), ptr(v), SIZE)
        adam_step(w_ref, g, m_ref, v_ref, step, **hyper)
    # m and v: a few roundings per step of values no larger than the gradients (|g| <~ 4);
    # old errors decay by beta each step.
    g_scale = 4 + weight_decay * np.abs(w_ref)
    assert_within(m, m_ref, 4 * STEPS * U * g_scale, "adam m")
    assert_within(v, v_ref, 4 * STEPS * U * (np.abs(v_ref) + (1 - p.beta2) * g_scale**2),
                  "adam v")
    # The update lr * mhat / (sqrt(vhat) + eps) is at most a few lr (|mhat| <~ sqrt(vhat) for
    # a few steps), computed with about 10 roundings plus the bias corrections' few ulp; m's
    # absolute error over sqrt(vhat) is amplified where vhat is small, hence the 32.
    bound = STEPS * U * (4 * np.abs(w_ref) + 32 * p.lr)
    assert_within(w, w_ref, bound, "adam w")


@pytest.mark.parametrize("step", [1, 2, 3, 10, 10_000])
def test_adam_bias_correction_keeps_full_precision_in_early_steps(k, step):
    # From w = m = v = 0 the update is the bias-corrected ratio alone, about lr in size, so
    # its relative error shows how well 1 - beta^step was computed: 1 - powf(0.999, 2)
    # would be off by ~1e-5 relative, here it must stay within a few roundings.
    g = f32(rng(33).standard_normal(SIZE))
    w, m, v = (np.zeros(SIZE, np.float32) for _ in range(3))
    p = AdamParams(1e-2, 0.9, 0.999, 1e-8, 0.0, step)
    k.mt_adam_f32_step(ctypes.byref(p), ptr(w), ptr(g), ptr(m), ptr(v), SIZE)
    w_ref, m_ref, v_ref = np.zeros(SIZE), np.zeros(SIZE), np.zeros(SIZE)
    adam_step(w_ref, g, m_ref, v_ref, step, lr=p.lr, beta1=p.beta1, beta2=p.beta2, eps=p.eps)
    # Two bias corrections (a few ulp each through log1p/expm1), a sqrt, a divide and about
    # six more roundings on the way to w.
    assert_within(w, w_ref, 16 * U * np.abs(w_ref), "adam first update")
