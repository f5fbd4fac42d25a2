"""GEMM, Linear and Conv2d fp32 kernels (host build) against the float64 numpy reference."""

from __future__ import annotations

import ctypes
import itertools

import numpy as np
import pytest
from kernel_lib import f32, ptr

from mcutrain.reference import conv2d_backward, conv2d_forward, linear_backward, linear_forward

U = 2.0**-24  # fp32 unit roundoff


class GemmShape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("m", "n", "k", "lda", "ldb", "ldc")]


class LinearParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("batch", "in_features", "out_features")]


class Conv2dParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in (
        "batch", "in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "kernel_h", "kernel_w",
        "stride_h", "stride_w", "pad_h", "pad_w", "groups")]


def assert_within_rounding(got, expected, magnitude, terms, what):
    """Any fp32 evaluation order of a sum of `terms` products is within gamma_terms of the
    exact result, relative to the sum of the magnitudes (Higham, eq. 3.5; u = 2**-24); the
    float64 reference adds far less than the 1e-30 floor."""
    n = terms + 1
    bound = n * U / (1 - n * U) * np.asarray(magnitude) + 1e-30
    err = np.abs(np.asarray(got, dtype=np.float64) - expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (
        f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
        f"(got {got[worst]!r}, expected {expected[worst]!r})")


class Guarded:
    """A float32 buffer followed by NaN canaries, to catch writes past the end."""

    GUARD = 17

    def __init__(self, values: np.ndarray):
        values = f32(values)
        self.shape = values.shape
        self.size = values.size
        self.buf = np.full(values.size + self.GUARD, np.nan, dtype=np.float32)
        self.buf[: values.size] = values.ravel()

    @classmethod
    def empty(cls, shape, fill=np.nan):
        return cls(np.full(shape, fill, dtype=np.float32))

    @property
    def p(self):
        return ptr(self.buf)

    def value(self) -> np.ndarray:
        assert np.all(np.isnan(self.buf[self.size:])), "kernel wrote past the end of a buffer"
        return self.buf[: self.size].reshape(self.shape).copy()


@pytest.fixture(scope="module")
def lib(kernels):
    vp, f = ctypes.c_void_p, ctypes.c_float
    for name in ("mt_gemm_f32_nt", "mt_gemm_f32_nn", "mt_gemm_f32_tn"):
        getattr(kernels, name).argtypes = [ctypes.POINTER(GemmShape), f, vp, vp, vp]
    lp = ctypes.POINTER(LinearParams)
    kernels.mt_linear_f32_forward.argtypes = [lp, vp, vp, vp, vp]
    kernels.mt_linear_f32_grad_input.argtypes = [lp, vp, vp, vp]
    kernels.mt_linear_f32_grad_weight.argtypes = [lp, vp, vp, f, vp, vp]
    cp = ctypes.POINTER(Conv2dParams)
    kernels.mt_conv2d_f32_scratch_floats.argtypes = [cp]
    kernels.mt_conv2d_f32_scratch_floats.restype = ctypes.c_size_t
    kernels.mt_conv2d_f32_forward.argtypes = [cp, vp, vp, vp, vp, vp]
    kernels.mt_conv2d_f32_grad_input.argtypes = [cp, vp, vp, vp, vp]
    kernels.mt_conv2d_f32_grad_weight.argtypes = [cp, vp, vp, f, vp, vp, vp]
    return kernels


# ---- GEMM --------------------------------------------------------------------------------

def run_gemm(lib, variant, m, n, k, pad, alpha, rng):
    """One GEMM with row strides `pad` floats longer than needed and a non-zero C."""
    a_rows, a_cols = (k, m) if variant == "tn" else (m, k)
    b_rows, b_cols = (n, k) if variant == "nt" else (k, n)
    lda, ldb, ldc = a_cols + pad, b_cols + 2 * pad, n + 3 * pad
    a_full = f32(rng.standard_normal((a_rows, lda)))
    b_full = f32(rng.standard_normal((b_rows, ldb)))
    c_full = f32(rng.standard_normal((m, ldc)))
    a, b = a_full[:, :a_cols].astype(np.float64), b_full[:, :b_cols].astype(np.float64)
    op_a = a.T if variant == "tn" else a
    op_b = b.T if variant == "nt" else b
    c0 = c_full.astype(np.float64)
    expected = c0.copy()
    expected[:, :n] += alpha * (op_a @ op_b)
    magnitude = np.abs(c0)
    magnitude[:, :n] += abs(alpha) * (np.abs(op_a) @ np.abs(op_b))
    c = Guarded(c_full)
    shape = GemmShape(m, n, k, lda, ldb, ldc)
    getattr(lib, f"mt_gemm_f32_{variant}")(ctypes.byref(shape), alpha, ptr(a_full), ptr(b_full), c.p)
    got = c.value()
    # Padding columns of C must be untouched (bit for bit).
    assert np.array_equal(got[:, n:], c_full[:, n:]), "wrote outside the m x n block of C"
    # k products, times alpha, plus C: k + 2 rounded operations per element.
    assert_within_rounding(got, expected, magnitude, k + 2, f"gemm_{variant} m={m} n={n} k={k}")


@pytest.mark.parametrize("variant", ["nt", "nn", "tn"])
def test_gemm_matches_numpy_for_every_small_shape(lib, variant):
    rng = np.random.default_rng(1)
    for m, n, k in itertools.product(range(1, 10), repeat=3):
        run_gemm(lib, variant, m, n, k, pad=(m + n + k) % 3, alpha=0.75, rng=rng)


@pytest.mark.parametrize("variant", ["nt", "nn", "tn"])
@pytest.mark.parametrize("m,n,k", [(17, 33, 65), (64, 32, 144), (1, 128, 256), (128, 256, 1),
                                   (5, 4, 300), (36, 13, 3)])
@pytest.mark.parametrize("alpha", [1.0, -0.01])
def test_gemm_matches_numpy_for_larger_strided_shapes(lib, variant, m, n, k, alpha):
    run_gemm(lib, variant, m, n, k, pad=5, alpha=alpha, rng=np.random.default_rng(m * n + k))


@pytest.mark.parametrize("variant", ["nt", "nn", "tn"])
def test_gemm_with_zero_k_leaves_c_unchanged(lib, variant):
    c = Guarded(np.arange(12.0).reshape(3, 4))
    a = f32(np.zeros(16))
    getattr(lib, f"mt_gemm_f32_{variant}")(ctypes.byref(GemmShape(3, 4, 0, 4, 4, 4)), 1.0,
                                           ptr(a), ptr(a), c.p)
    assert np.array_equal(c.value(), np.arange(12.0).reshape(3, 4))


# ---- Linear ------------------------------------------------------------------------------

@pytest.mark.parametrize("batch,inp,out", [(1, 256, 128), (1, 7, 5), (3, 9, 10), (3, 1, 1),
                                           (2, 33, 17)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_reference(lib, batch, inp, out, with_bias):
    rng = np.random.default_rng(batch * 1000 + inp * 10 + out)
    x, w, b = (f32(rng.standard_normal(s)) for s in ((batch, inp), (out, inp), (out,)))
    dy = f32(rng.standard_normal((batch, out)))
    p = ctypes.byref(LinearParams(batch, inp, out))
    bias = b if with_bias else None

    y = Guarded.empty((batch, out))
    lib.mt_linear_f32_forward(p, ptr(x), ptr(w), ptr(bias), y.p)
    expected = linear_forward(x, w, bias)
    magnitude = linear_forward(np.abs(x), np.abs(w), np.abs(bias) if with_bias else None)
    # inp products plus the bias.
    assert_within_rounding(y.value(), expected, magnitude, inp + 1, "linear forward")

    dx = Guarded.empty((batch, inp))
    lib.mt_linear_f32_grad_input(p, ptr(dy), ptr(w), dx.p)
    ref_dx, ref_dw, ref_db = linear_backward(x, w, dy)
    mag_dx, mag_dw, mag_db = linear_backward(np.abs(x), np.abs(w), np.abs(dy))
    assert_within_rounding(dx.value(), ref_dx, mag_dx, out, "linear grad_input")

    # Accumulates alpha * gradient into non-zero buffers, as a fused SGD step does.
    alpha = -0.125
    w0, b0 = f32(rng.standard_normal((out, inp))), f32(rng.standard_normal(out))
    dw = Guarded(w0)
    db = Guarded(b0) if with_bias else None
    lib.mt_linear_f32_grad_weight(p, ptr(x), ptr(dy), alpha, dw.p, db.p if db else None)
    # batch products, times alpha, plus the old value.
    assert_within_rounding(dw.value(), w0 + alpha * ref_dw, np.abs(w0) + abs(alpha) * mag_dw,
                           batch + 2, "linear grad_weight")
    if db:
        assert_within_rounding(db.value(), b0 + alpha * ref_db, np.abs(b0) + abs(alpha) * mag_db,
                               batch + 2, "linear grad_bias")


# ---- Conv2d ------------------------------------------------------------------------------

# (batch, in_h, in_w, in_c, out_c, kernel (h, w), stride (h, w), padding (h, w), groups)
CONV_CASES = {
    "3x3_odd_channels": (1, 5, 7, 3, 5, (3, 3), (1, 1), (1, 1), 1),
    "3x3_stride2_pad1_batch3": (3, 7, 8, 4, 6, (3, 3), (2, 2), (1, 1), 1),
    "5x5_pad2": (1, 6, 6, 3, 4, (5, 5), (1, 1), (2, 2), 1),
    "3x2_kernel_mixed_stride_pad": (2, 6, 5, 5, 7, (3, 2), (2, 1), (1, 2), 1),
    "2x4_kernel": (1, 7, 6, 4, 3, (2, 4), (1, 1), (1, 2), 1),
    "groups2": (1, 5, 6, 6, 4, (3, 3), (1, 1), (1, 1), 2),
    "groups3_stride2_batch3": (3, 7, 5, 6, 9, (3, 3), (2, 2), (1, 1), 3),
    "channel_multiplier": (2, 5, 5, 3, 6, (3, 3), (1, 1), (1, 1), 3),
    "depthwise_3x3": (1, 6, 5, 7, 7, (3, 3), (1, 1), (1, 1), 7),
    "depthwise_stride2_batch3": (3, 9, 8, 5, 5, (3, 3), (2, 2), (1, 1), 5),
    "depthwise_5x5_pad2": (1, 7, 6, 9, 9, (5, 5), (1, 1), (2, 2), 9),
    "depthwise_3x1_wide": (2, 5, 11, 16, 16, (3, 1), (1, 2), (1, 0), 16),
    "depthwise_32ch_16x16": (1, 16, 16, 32, 32, (3, 3), (1, 1), (1, 1), 32),
    "pointwise_batch3": (3, 4, 5, 7, 5, (1, 1), (1, 1), (0, 0), 1),
    "pointwise_16ch": (1, 6, 6, 16, 24, (1, 1), (1, 1), (0, 0), 1),
    "1x1_stride2": (2, 5, 6, 3, 4, (1, 1), (2, 2), (0, 0), 1),
    "1x1_pad1": (1, 3, 4, 5, 3, (1, 1), (1, 1), (1, 1), 1),
    "conv1d_k3": (2, 1, 11, 3, 5, (1, 3), (1, 2), (0, 1), 1),
    "conv1d_k5_groups": (1, 1, 20, 4, 8, (1, 5), (1, 1), (0, 2), 2),
    "3x3_16ch_to_32": (1, 16, 16, 16, 32, (3, 3), (1, 1), (1, 1), 1),
    "3x3_many_channels_min_tile": (1, 5, 5, 130, 6, (3, 3), (1, 1), (1, 1), 1),
}


def conv_case(case, crop=(0, 0)):
    """Random float32 data for a case, and the params with out_h/out_w cropped by `crop`."""
    n, h, w, c, o, (kh, kw), (sh, sw), (ph, pw), g = CONV_CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))
    oh_full, ow_full = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    oh, ow = max(1, oh_full - crop[0]), max(1, ow_full - crop[1])
    data = {
        "x": f32(rng.standard_normal((n, h, w, c))),
        "w": f32(rng.standard_normal((o, kh, kw, c // g))),
        "b": f32(rng.standard_normal(o)),
        "dy": f32(rng.standard_normal((n, oh, ow, o))),
        "w0": f32(rng.standard_normal((o, kh, kw, c // g))),
        "b0": f32(rng.standard_normal(o)),
    }
    params = Conv2dParams(n, h, w, c, oh, ow, o, kh, kw, sh, sw, ph, pw, g)
    ref_args = {"stride": (sh, sw), "padding": (ph, pw), "groups": g}
    return params, data, ref_args, (oh_full, ow_full)


def full_dy(dy, full_hw):
    """dy zero-extended to the reference's (uncropped) output size."""
    out = np.zeros((dy.shape[0], *full_hw, dy.shape[3]))
    out[:, : dy.shape[1], : dy.shape[2]] = dy
    return out


def scratch_for(lib, params):
    """Exactly the scratch the kernel asks for, with canaries after it (hold on to it: the
    buffer lives as long as the object)."""
    return Guarded.empty(max(1, lib.mt_conv2d_f32_scratch_floats(ctypes.byref(params))))


CROPS = {"full": (0, 0), "cropped": (1, 1)}


@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_matches_reference(lib, case, with_bias, crop):
    params, d, ref_args, _ = conv_case(case, CROPS[crop])
    bias = d["b"] if with_bias else None
    y = Guarded.empty((params.batch, params.out_h, params.out_w, params.out_c))
    scratch = scratch_for(lib, params)
    lib.mt_conv2d_f32_forward(ctypes.byref(params), ptr(d["x"]), ptr(d["w"]), ptr(bias), y.p,
                              scratch.p)
    scratch.value()
    oh, ow = params.out_h, params.out_w
    expected = conv2d_forward(d["x"], d["w"], bias, **ref_args)[:, :oh, :ow]
    magnitude = conv2d_forward(np.abs(d["x"]), np.abs(d["w"]),
                               np.abs(bias) if with_bias else None, **ref_args)[:, :oh, :ow]
    terms = d["w"][0].size + 2  # the patch's products, plus the bias, plus 1 * sum
    assert_within_rounding(y.value(), expected, magnitude, terms, f"conv2d forward {case}")


@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_grad_input_matches_reference(lib, case, crop):
    params, d, ref_args, full_hw = conv_case(case, CROPS[crop])
    dx = Guarded.empty(d["x"].shape)
    scratch = scratch_for(lib, params)
    lib.mt_conv2d_f32_grad_input(ctypes.byref(params), ptr(d["dy"]), ptr(d["w"]), dx.p, scratch.p)
    scratch.value()
    dy = full_dy(d["dy"], full_hw)
    expected = conv2d_backward(d["x"], d["w"], dy, **ref_args)[0]
    magnitude = conv2d_backward(d["x"], np.abs(d["w"]), np.abs(dy), **ref_args)[0]
    # Each input pixel gathers kernel_h * kernel_w sums of out_c/groups products at most.
    taps = params.kernel_h * params.kernel_w
    terms = taps * (params.out_c // params.groups + 2)
    assert_within_rounding(dx.value(), expected, magnitude, terms, f"conv2d grad_input {case}")


@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("with_dbias", [True, False])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_grad_weight_accumulates_alpha_times_reference(lib, case, with_dbias, crop):
    params, d, ref_args, full_hw = conv_case(case, CROPS[crop])
    alpha = -0.25
    dw = Guarded(d["w0"])
    db = Guarded(d["b0"]) if with_dbias else None
    scratch = scratch_for(lib, params)
    lib.mt_conv2d_f32_grad_weight(ctypes.byref(params), ptr(d["x"]), ptr(d["dy"]), alpha, dw.p,
                                  db.p if db else None, scratch.p)
    scratch.value()
    dy = full_dy(d["dy"], full_hw)
    _, ref_dw, ref_db = conv2d_backward(d["x"], d["w"], dy, **ref_args)
    _, mag_dw, mag_db = conv2d_backward(np.abs(d["x"]), d["w"], np.abs(dy), **ref_args)
    # One product per output pixel; each tile's sum is scaled by alpha and added (2 more
    # roundings per tile, and tiles have at least one pixel).
    terms = 3 * params.batch * params.out_h * params.out_w
    assert_within_rounding(dw.value(), d["w0"] + alpha * ref_dw,
                           np.abs(d["w0"]) + abs(alpha) * mag_dw, terms, f"conv2d dweight {case}")
    if db:
        assert_within_rounding(db.value(), d["b0"] + alpha * ref_db,
                               np.abs(d["b0"]) + abs(alpha) * mag_db, terms, f"conv2d dbias {case}")


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_scratch_is_zero_for_direct_paths_and_bounded_otherwise(lib, case):
    params, *_ = conv_case(case)
    floats = lib.mt_conv2d_f32_scratch_floats(ctypes.byref(params))
    k = params.kernel_h * params.kernel_w * params.in_c // params.groups
    depthwise = params.groups == params.in_c == params.out_c
    pointwise = case.startswith("pointwise")
    if depthwise or pointwise:
        assert floats == 0
    else:
        # A tile of at most 64 output pixels and 16 KB, unless a 4-pixel tile needs more.
        assert 0 < floats <= max(4096, 4 * k)
        assert floats % k == 0
