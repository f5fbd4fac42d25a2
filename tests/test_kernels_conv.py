"""GEMM, Linear and Conv2d fp32 kernels (host build) against the float64 numpy reference."""

from __future__ import annotations

import ctypes
import itertools
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from kernel_lib import build_kernels, f32, ptr
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
    """Any fp32 evaluation order of a sum of `terms` products is within gamma_(terms + 1) of
    the exact result relative to the sum of the magnitudes (Higham, eq. 3.5, u = 2**-24;
    the +1 is the rounding of each product). The float64 reference's own error is 2**-29
    times smaller; the 1e-30 floor lets exact zeros compare equal."""
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
        getattr(kernels, f"{name}_packed").argtypes = [ctypes.POINTER(GemmShape), f, vp, vp, vp,
                                                       vp, ctypes.c_size_t]
    kernels.mt_gemm_f32_pack_floats.argtypes = [ctypes.c_int] * 3
    kernels.mt_gemm_f32_pack_floats.restype = ctypes.c_size_t
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

def run_gemm(lib, variant, m, n, k, pad, alpha, rng, packed=False):
    """One GEMM with row strides `pad` floats longer than needed and a non-zero C; `packed`
    calls the _packed form with exactly the workspace it asks for (canaries after it)."""
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
    chunks = 0
    if packed:
        need = lib.mt_gemm_f32_pack_floats(m, n, k)
        pack = Guarded.empty((max(need, 1),))
        getattr(lib, f"mt_gemm_f32_{variant}_packed")(ctypes.byref(shape), alpha, ptr(a_full),
                                                      ptr(b_full), c.p, pack.p, need)
        pack.value()  # the canaries after the workspace survive
        chunks = -(-k // 16)  # the packed asm adds k in chunks of at least 16 into C
    else:
        getattr(lib, f"mt_gemm_f32_{variant}")(ctypes.byref(shape), alpha, ptr(a_full), ptr(b_full),
                                               c.p)
    got = c.value()
    # Padding columns of C must be untouched (bit for bit).
    assert np.array_equal(got[:, n:], c_full[:, n:]), "wrote outside the m x n block of C"
    # k products, times alpha, plus C: k + 2 rounded operations per element (and one more
    # per extra chunk of k where the packed form sums in chunks).
    assert_within_rounding(got, expected, magnitude, k + 2 + chunks,
                           f"gemm_{variant} m={m} n={n} k={k}")


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
@pytest.mark.parametrize("m,n,k", [*itertools.product((1, 4, 9), (1, 5, 8), (1, 3, 9)),
                                   (16, 16, 16), (17, 19, 33), (125, 32, 32), (32, 32, 125),
                                   (21, 33, 300)])
def test_gemm_packed_matches_numpy_with_its_workspace(lib, variant, m, n, k):
    run_gemm(lib, variant, m, n, k, pad=(m + k) % 3, alpha=-0.5,
             rng=np.random.default_rng(m * 100 + n * 10 + k), packed=True)


@pytest.fixture(scope="module")
def wide_gemm(tmp_path_factory):
    return build_kernels(tmp_path_factory.mktemp("wide"), ("MCUTRAIN_GEMM_WIDE",), ("gemm_f32",))


@pytest.mark.parametrize("variant", ["nt", "nn", "tn"])
def test_gemm_4x6_blocks_equal_the_4x4_blocks_bit_for_bit(kernels, wide_gemm, variant):
    """The GEMM blocks of cores with 32 FP registers (qemu-rv32f) give the host build's bits:
    each sum runs over k in the same order in both block shapes (gemm_f32_wide.h), so the
    numpy checks of the host build hold for them too. Every panel split and k tail."""
    rng = np.random.default_rng(7)
    shapes = [*itertools.product((1, 4, 5, 9), range(1, 31), (1, 3, 4, 9)),
              (64, 144, 32), (32, 144, 64), (17, 49, 33)]
    for m, n, k in shapes:
        a = f32(rng.standard_normal((k, m) if variant == "tn" else (m, k)))
        b = f32(rng.standard_normal((n, k) if variant == "nt" else (k, n)))
        c0 = f32(rng.standard_normal((m, n)))
        shape = GemmShape(m, n, k, a.shape[1], b.shape[1], n)
        results = []
        for build in (kernels, wide_gemm):
            c = c0.copy()
            fn = getattr(build, f"mt_gemm_f32_{variant}")
            fn.argtypes = [ctypes.POINTER(GemmShape), ctypes.c_float] + [ctypes.c_void_p] * 3
            fn(ctypes.byref(shape), -0.25, ptr(a), ptr(b), ptr(c))
            results.append(c)
        assert np.array_equal(results[0].view(np.uint32), results[1].view(np.uint32)), (m, n, k)


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


def test_linear_fused_sgd_step_updates_the_weights_in_place(lib):
    rng = np.random.default_rng(7)
    batch, inp, out, lr = 2, 19, 6, 0.05
    x, w0, b0 = (f32(rng.standard_normal(s)) for s in ((batch, inp), (out, inp), (out,)))
    dy = f32(rng.standard_normal((batch, out)))
    w, b, dx = Guarded(w0), Guarded(b0), Guarded.empty((batch, inp))
    p = ctypes.byref(LinearParams(batch, inp, out))
    lib.mt_linear_f32_grad_input(p, ptr(dy), w.p, dx.p)
    lib.mt_linear_f32_grad_weight(p, ptr(x), ptr(dy), -lr, w.p, b.p)
    ref_dx, ref_dw, ref_db = linear_backward(x, w0, dy)
    mag_dx, mag_dw, mag_db = linear_backward(np.abs(x), np.abs(w0), np.abs(dy))
    # out products per dx element; batch products, times -lr, plus the old value for w, b.
    assert_within_rounding(dx.value(), ref_dx, mag_dx, out, "dx")
    assert_within_rounding(w.value(), w0 - lr * ref_dw, np.abs(w0) + lr * mag_dw, batch + 2, "w")
    assert_within_rounding(b.value(), b0 - lr * ref_db, np.abs(b0) + lr * mag_db, batch + 2, "b")


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
    # im2col of one channel (KWS conv0: rows of kernel_w floats), and padding wider than the
    # kernel (patches wholly outside the image); pointwise shapes the M4F packs.
    "kws_conv0_1ch_10x4_stride2": (1, 49, 10, 1, 8, (10, 4), (2, 2), (5, 1), 1),
    "3x3_pad3_wider_than_kernel": (1, 4, 3, 2, 3, (3, 3), (1, 1), (1, 3), 1),
    "pointwise_32ch_25px": (1, 5, 5, 32, 32, (1, 1), (1, 1), (0, 0), 1),
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
    """Exactly the scratch the kernel asks for, with canaries after it, or None (NULL) when
    it needs none. Hold on to it: the buffer lives as long as the object."""
    floats = lib.mt_conv2d_f32_scratch_floats(ctypes.byref(params))
    return Guarded.empty(floats) if floats else None


def scratch_ptr(scratch):
    return scratch.p if scratch else None


def check_scratch(scratch):
    if scratch:
        scratch.value()


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
                              scratch_ptr(scratch))
    check_scratch(scratch)
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
    lib.mt_conv2d_f32_grad_input(ctypes.byref(params), ptr(d["dy"]), ptr(d["w"]), dx.p,
                                 scratch_ptr(scratch))
    check_scratch(scratch)
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
                                  db.p if db else None, scratch_ptr(scratch))
    check_scratch(scratch)
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


@pytest.mark.parametrize("case", ["3x3_stride2_pad1_batch3", "groups2", "depthwise_3x3",
                                  "pointwise_batch3"])
def test_conv2d_fused_sgd_step_updates_the_weights_in_place(lib, case):
    # As a training step does it: grad_input with the old weights, then grad_weight with
    # dweight = weight and alpha = -lr.
    params, d, ref_args, _ = conv_case(case)
    lr = 0.05
    w, b, dx = Guarded(d["w"]), Guarded(d["b"]), Guarded.empty(d["x"].shape)
    scratch = scratch_for(lib, params)
    p = ctypes.byref(params)
    lib.mt_conv2d_f32_grad_input(p, ptr(d["dy"]), w.p, dx.p, scratch_ptr(scratch))
    lib.mt_conv2d_f32_grad_weight(p, ptr(d["x"]), ptr(d["dy"]), -lr, w.p, b.p, scratch_ptr(scratch))
    check_scratch(scratch)
    ref_dx, ref_dw, ref_db = conv2d_backward(d["x"], d["w"], d["dy"], **ref_args)
    mag_dx, _, _ = conv2d_backward(d["x"], np.abs(d["w"]), np.abs(d["dy"]), **ref_args)
    _, mag_dw, mag_db = conv2d_backward(np.abs(d["x"]), d["w"], np.abs(d["dy"]), **ref_args)
    # The same term counts as in the separate grad_input and grad_weight tests.
    taps = params.kernel_h * params.kernel_w
    assert_within_rounding(dx.value(), ref_dx, mag_dx, taps * (params.out_c // params.groups + 2),
                           "dx")
    pixels = params.batch * params.out_h * params.out_w
    assert_within_rounding(w.value(), d["w"] - lr * ref_dw, np.abs(d["w"]) + lr * mag_dw,
                           3 * pixels, "weight")
    assert_within_rounding(b.value(), d["b"] - lr * ref_db, np.abs(d["b"]) + lr * mag_db,
                           3 * pixels, "bias")


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


# ---- the Cortex-M4F asm paths, on the emulated board --------------------------------------
#
# The host build above runs the portable C. The firmware for Thumb-2 + FPU targets runs the
# inline-asm kernels instead; this builds a bare-metal program for QEMU's mps2-an386 that
# links both (the C one with its symbols renamed ref_*), checks the asm against the C on
# many shapes, and counts the guest instructions of a training step with the firmware's
# -icount clock.

ARM_GCC = shutil.which("arm-none-eabi-gcc")
ARM_OBJCOPY = shutil.which("arm-none-eabi-objcopy")
RISCV_GCC = shutil.which("riscv64-unknown-elf-gcc")


def _picolibc_specs(gcc: str | None) -> list[str]:
    if gcc is None:
        return []
    path = subprocess.run([gcc, "--print-file-name=picolibc.specs"], capture_output=True, text=True).stdout.strip()
    return [f"--specs={path}"] if path and path != "picolibc.specs" else []


RISCV_LIBC_SPECS = _picolibc_specs(RISCV_GCC)
QEMU_ARM = shutil.which("qemu-system-arm")
M4F_FLAGS = ["-mthumb", "-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"]
WARNINGS = ["-Wall", "-Wextra", "-Werror", "-Wdouble-promotion", "-Wfloat-conversion"]
KERNEL_DIR = Path(__file__).resolve().parents[1] / "usermod" / "mcutrain" / "kernels"
KERNEL_FILES = ("gemm_f32", "linear_f32", "conv2d_f32", "optim_f32")
KERNEL_FUNCTIONS = [f"mt_gemm_f32_{v}" for v in ("nt", "nn", "tn")] + [
    f"mt_gemm_f32_{v}_packed" for v in ("nt", "nn", "tn")] + ["mt_gemm_f32_pack_floats"] + [
    f"mt_{layer}_f32_{p}" for layer in ("linear", "conv2d")
    for p in ("forward", "grad_input", "grad_weight")] + ["mt_conv2d_f32_scratch_floats"] + [
    f"mt_sgd_f32_{p}" for p in ("step", "fused_begin", "fused_end")] + ["mt_adam_f32_step"]

M4F_LINK = """
MEMORY { CODE (rx) : ORIGIN = 0x00000000, LENGTH = 4M
         RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 4M }
SECTIONS {
    .text : { KEEP(*(.isr_vector)) *(.text*) *(.rodata*) . = ALIGN(4); } > CODE
    .data : { _sdata = .; *(.data*) . = ALIGN(4); _edata = .; } > RAM AT > CODE
    _sidata = LOADADDR(.data);
    .bss (NOLOAD) : { _sbss = .; *(.bss*) *(COMMON) . = ALIGN(8); _ebss = .; } > RAM
    _stack_top = ORIGIN(RAM) + LENGTH(RAM);
}
"""

M4F_STARTUP = r"""
#include <stddef.h>
#include <stdint.h>
extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _stack_top;
int main(void);
static void semihost(int op, const void *arg) {
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile ("bkpt 0xab" : "+r" (r0) : "r" (r1) : "memory");
}
void put(const char *s) { semihost(0x04, s); }  // SYS_WRITE0
static void stop(int code) {
    const uint32_t args[2] = { 0x20026, (uint32_t)code };  // ADP_Stopped_ApplicationExit
    semihost(0x20, args);  // SYS_EXIT_EXTENDED
    for (;;) {}
}
void *memcpy(void *d, const void *s, size_t n) {
    char *dc = d; const char *sc = s;
    while (n--) *dc++ = *sc++;
    return d;
}
void *memset(void *d, int v, size_t n) {
    char *dc = d;
    while (n--) *dc++ = (char)v;
    return d;
}
void Reset_Handler(void) {
    *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20;  // CPACR: FPU on
    __asm__ volatile ("dsb\n isb");
    for (uint32_t *s = &_sidata, *d = &_sdata; d < &_edata;) *d++ = *s++;
    for (uint32_t *d = &_sbss; d < &_ebss;) *d++ = 0;
    stop(main());
}
void Fault_Handler(void) { put("FAIL fault\n"); stop(1); }
__attribute__((section(".isr_vector"), used)) const void *const vectors[16] = {
    &_stack_top, Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler };
"""

M4F_CHECK = r"""
#include <stdint.h>
#include "gemm_f32.h"
#include "linear_f32.h"
#include "conv2d_f32.h"
#include "optim_f32.h"
void put(const char *s);
// Adam's libm calls, never made here (the program links without a libc).
float expm1f(float x) { return x; }
float log1pf(float x) { return x; }
float sqrtf(float x) { return x; }
#define REF(ret, name, ...) ret ref_##name(__VA_ARGS__);
REF(void, mt_gemm_f32_nt, const mt_gemm_shape_t *, float, const float *, const float *, float *)
REF(void, mt_gemm_f32_nn, const mt_gemm_shape_t *, float, const float *, const float *, float *)
REF(void, mt_gemm_f32_tn, const mt_gemm_shape_t *, float, const float *, const float *, float *)
REF(void, mt_linear_f32_forward, const mt_linear_params_t *, const float *, const float *,
    const float *, float *)
REF(void, mt_linear_f32_grad_input, const mt_linear_params_t *, const float *, const float *,
    float *)
REF(void, mt_linear_f32_grad_weight, const mt_linear_params_t *, const float *, const float *,
    float, float *, float *)
REF(void, mt_conv2d_f32_forward, const mt_conv2d_params_t *, const float *, const float *,
    const float *, float *, float *)
REF(void, mt_conv2d_f32_grad_input, const mt_conv2d_params_t *, const float *, const float *,
    float *, float *)
REF(void, mt_conv2d_f32_grad_weight, const mt_conv2d_params_t *, const float *, const float *,
    float, float *, float *, float *)
REF(void, mt_sgd_f32_fused_begin, const mt_sgd_params_t *, float *, float *, size_t)
REF(void, mt_sgd_f32_fused_end, const mt_sgd_params_t *, float *, const float *, size_t)

static void put_u(uint32_t v) {
    char b[12]; int i = 11; b[i] = 0;
    do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    put(b + i);
}

static uint32_t seed = 1;
static void fill(float *a, int n) {
    for (int i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        a[i] = (float)(int32_t)(seed >> 8 & 0xffff) / 32768.0f - 1.0f;
    }
}
static void copy(float *d, const float *s, int n) { for (int i = 0; i < n; i++) d[i] = s[i]; }

static float A[40000], B[40000], W1[40000], W2[40000], C1[40000], C2[40000];
static float S1[8192], S2[8192], D1[512], D2[512];
static int failures, checked;

// Both paths add each element's products in the same order, except that the asm tn takes
// its rank-1 route up to k = 8 (the C one up to 2): a few roundings of sums below ~100 in
// magnitude, far inside 1e-5 * (1 + |c|), while a wrong element is off by O(1).
static void compare(const char *what, int id, const float *got, const float *ref, int n) {
    checked++;
    for (int i = 0; i < n; i++) {
        float d = got[i] - ref[i], m = ref[i] < 0.0f ? -ref[i] : ref[i];
        if (!(d <= 1e-5f * (1.0f + m) && -d <= 1e-5f * (1.0f + m))) {
            put("FAIL "); put(what); put(" case "); put_u((uint32_t)id); put(" at ");
            put_u((uint32_t)i); put("\n");
            failures++;
            return;
        }
    }
}

typedef void gemm_fn(const mt_gemm_shape_t *, float, const float *, const float *, float *);

static void check_gemm(void) {
    gemm_fn *const fns[3][2] = { { mt_gemm_f32_nt, ref_mt_gemm_f32_nt },
        { mt_gemm_f32_nn, ref_mt_gemm_f32_nn }, { mt_gemm_f32_tn, ref_mt_gemm_f32_tn } };
    static const int big[][3] = { {64, 32, 144}, {1, 128, 256}, {128, 256, 1}, {28, 144, 32},
        {32, 144, 28}, {3, 37, 50}, {37, 3, 50}, {1, 256, 128}, {128, 96, 3}, {2, 10, 33} };
    int id = 0;
    for (int v = 0; v < 3; v++) {
        for (int m = 1; m <= 9; m++) for (int n = 1; n <= 13; n++) for (int k = 0; k <= 13; k++, id++) {
            const int pad = (m + n + k) % 3;
            const mt_gemm_shape_t s = { m, n, k, (v == 2 ? m : k) + pad, (v == 0 ? k : n) + pad, n + pad };
            fill(A, 300); fill(B, 300); fill(C1, 300); copy(C2, C1, 300);
            fns[v][0](&s, -0.75f, A, B, C1); fns[v][1](&s, -0.75f, A, B, C2);
            compare("gemm", id, C1, C2, 300);
        }
        for (unsigned t = 0; t < sizeof big / sizeof big[0]; t++, id++) {
            const int m = big[t][0], n = big[t][1], k = big[t][2];
            const mt_gemm_shape_t s = { m, n, k, (v == 2 ? m : k) + 1, (v == 0 ? k : n) + 2, n + 3 };
            fill(A, 40000); fill(B, 40000); fill(C1, 40000); copy(C2, C1, 40000);
            fns[v][0](&s, 0.5f, A, B, C1); fns[v][1](&s, 0.5f, A, B, C2);
            compare("gemm", id, C1, C2, 40000);
        }
    }
}

typedef void packed_fn(const mt_gemm_shape_t *, float, const float *, const float *, float *,
    float *, size_t);

// The packed products against the portable unpacked ones: m, n, k from 1 to 9 (never
// packed) and shapes that pack with every k remainder, odd and padded strides, k cut into
// chunks, and a workspace too small (or NULL) to use. The workspace is followed by NaN
// canaries that must survive.
static void check_gemm_packed(void) {
    packed_fn *const fns[3] = { mt_gemm_f32_nt_packed, mt_gemm_f32_nn_packed, mt_gemm_f32_tn_packed };
    gemm_fn *const refs[3] = { ref_mt_gemm_f32_nt, ref_mt_gemm_f32_nn, ref_mt_gemm_f32_tn };
    static const int shapes[][3] = { {16, 16, 16}, {17, 18, 17}, {19, 17, 18}, {20, 19, 19},
        {31, 33, 21}, {16, 32, 45}, {125, 32, 32}, {32, 32, 125}, {64, 32, 40}, {32, 40, 64},
        {21, 33, 300}, {18, 150, 37} };
    const float nan = __builtin_nanf("");
    int id = 0;
    for (int v = 0; v < 3; v++) {
        for (int m = 1; m <= 9; m++) for (int n = 1; n <= 9; n++) for (int k = 1; k <= 9; k++, id++) {
            const mt_gemm_shape_t s = { m, n, k, (v == 2 ? m : k) + k % 2, (v == 0 ? k : n) + m % 2, n + 1 };
            fill(A, 300); fill(B, 300); fill(C1, 300); copy(C2, C1, 300);
            fns[v](&s, -0.75f, A, B, C1, S1, 8192); refs[v](&s, -0.75f, A, B, C2);
            compare("gemm packed small", id, C1, C2, 300);
        }
        for (unsigned t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
            for (int w = 0; w < 3; w++, id++) {
                const int m = shapes[t][0], n = shapes[t][1], k = shapes[t][2];
                const mt_gemm_shape_t s = { m, n, k, (v == 2 ? m : k) + w, (v == 0 ? k : n) + 2 * w,
                                            n + w };
                // w = 0: what the product asks for; 1: one float short; 2: no workspace.
                size_t need = mt_gemm_f32_pack_floats(m, n, k);
                size_t given = w == 0 ? need : w == 1 && need ? need - 1 : 0;
                for (int i = 0; i < 8192; i++) S1[i] = nan;
                fill(A, 40000); fill(B, 40000); fill(C1, 40000); copy(C2, C1, 40000);
                fns[v](&s, 0.5f, A, B, C1, w == 2 ? 0 : S1, given);
                refs[v](&s, 0.5f, A, B, C2);
                compare("gemm packed", id, C1, C2, 40000);
                for (size_t i = given; i < 8192; i++) {
                    if (S1[i] == S1[i]) { put("FAIL gemm packed wrote past its workspace\n"); failures++; break; }
                }
            }
        }
    }
    // On this FPU the KWS pointwise shape packs, in at most 2048 floats.
    if (mt_gemm_f32_pack_floats(125, 32, 32) == 0 || mt_gemm_f32_pack_floats(21, 33, 300) > 2048) {
        put("FAIL gemm pack_floats\n");
        failures++;
    }
}

static void check_linear(void) {
    static const int cases[][3] = { {1, 256, 128}, {1, 7, 5}, {3, 9, 10}, {2, 33, 17}, {4, 64, 10} };
    for (unsigned t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const mt_linear_params_t p = { cases[t][0], cases[t][1], cases[t][2] };
        const int xn = p.batch * p.in_features, yn = p.batch * p.out_features;
        const int wn = p.in_features * p.out_features;
        fill(A, xn); fill(B, yn); fill(W1, wn); fill(D1, p.out_features);
        mt_linear_f32_forward(&p, A, W1, D1, C1); ref_mt_linear_f32_forward(&p, A, W1, D1, C2);
        compare("linear forward", (int)t, C1, C2, yn);
        mt_linear_f32_grad_input(&p, B, W1, C1); ref_mt_linear_f32_grad_input(&p, B, W1, C2);
        compare("linear grad_input", (int)t, C1, C2, xn);
        copy(W2, W1, wn); copy(D2, D1, p.out_features);
        mt_linear_f32_grad_weight(&p, A, B, -0.01f, W1, D1);
        ref_mt_linear_f32_grad_weight(&p, A, B, -0.01f, W2, D2);
        compare("linear grad_weight", (int)t, W1, W2, wn);
        compare("linear grad_bias", (int)t, D1, D2, p.out_features);
    }
}

// batch, in_h, in_w, in_c, out_h, out_w, out_c, kernel_h, kernel_w, stride_h, stride_w,
// pad_h, pad_w, groups
static const int conv_cases[][14] = {
    {1, 5, 7, 3, 5, 7, 5, 3, 3, 1, 1, 1, 1, 1}, {3, 7, 8, 4, 4, 4, 6, 3, 3, 2, 2, 1, 1, 1},
    {1, 16, 16, 16, 16, 16, 32, 3, 3, 1, 1, 1, 1, 1}, {1, 8, 8, 8, 7, 7, 16, 3, 3, 1, 1, 1, 1, 1},
    {1, 5, 6, 6, 5, 6, 4, 3, 3, 1, 1, 1, 1, 2}, {2, 1, 11, 3, 1, 6, 5, 1, 3, 1, 2, 0, 1, 1},
    {1, 6, 5, 7, 6, 5, 7, 3, 3, 1, 1, 1, 1, 7}, {3, 9, 8, 5, 5, 4, 5, 3, 3, 2, 2, 1, 1, 5},
    {1, 7, 6, 9, 7, 6, 9, 5, 5, 1, 1, 2, 2, 9}, {2, 5, 11, 16, 5, 6, 16, 3, 1, 1, 2, 1, 0, 16},
    {1, 16, 16, 32, 16, 16, 32, 3, 3, 1, 1, 1, 1, 32}, {1, 9, 9, 12, 8, 8, 12, 3, 3, 1, 1, 1, 1, 12},
    {3, 4, 5, 7, 4, 5, 5, 1, 1, 1, 1, 0, 0, 1}, {1, 6, 6, 16, 6, 6, 24, 1, 1, 1, 1, 0, 0, 1},
    {1, 6, 6, 16, 5, 4, 24, 1, 1, 1, 1, 0, 0, 1},
    // One input channel: im2col rows of kernel_w floats (4 as in the KWS conv0, 5, 9).
    {1, 49, 10, 1, 25, 5, 32, 10, 4, 2, 2, 5, 1, 1}, {1, 9, 7, 1, 5, 4, 6, 3, 5, 2, 2, 1, 2, 1},
    {2, 6, 12, 1, 6, 6, 3, 1, 9, 1, 2, 0, 4, 1},
    // Padding wider than the kernel; pointwise shapes that pack (whole image and per row).
    {1, 4, 3, 2, 4, 9, 3, 3, 3, 1, 1, 1, 3, 1}, {1, 5, 5, 32, 5, 5, 32, 1, 1, 1, 1, 0, 0, 1},
    {2, 5, 20, 20, 4, 17, 24, 1, 1, 1, 1, 0, 0, 1},
};

static void check_conv(void) {
    for (unsigned t = 0; t < sizeof conv_cases / sizeof conv_cases[0]; t++) {
        const int *c = conv_cases[t];
        const mt_conv2d_params_t p = { c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8],
                                       c[9], c[10], c[11], c[12], c[13] };
        const int xn = p.batch * p.in_h * p.in_w * p.in_c, yn = p.batch * p.out_h * p.out_w * p.out_c;
        const int wn = p.out_c * p.kernel_h * p.kernel_w * p.in_c / p.groups;
        fill(A, xn); fill(B, yn); fill(W1, wn); fill(D1, p.out_c);
        mt_conv2d_f32_forward(&p, A, W1, D1, C1, S1);
        ref_mt_conv2d_f32_forward(&p, A, W1, D1, C2, S2);
        compare("conv2d forward", (int)t, C1, C2, yn);
        mt_conv2d_f32_grad_input(&p, B, W1, C1, S1);
        ref_mt_conv2d_f32_grad_input(&p, B, W1, C2, S2);
        compare("conv2d grad_input", (int)t, C1, C2, xn);
        copy(W2, W1, wn); copy(D2, D1, p.out_c);
        mt_conv2d_f32_grad_weight(&p, A, B, -0.01f, W1, D1, S1);
        ref_mt_conv2d_f32_grad_weight(&p, A, B, -0.01f, W2, D2, S2);
        compare("conv2d grad_weight", (int)t, W1, W2, wn);
        compare("conv2d grad_bias", (int)t, D1, D2, p.out_c);
    }
}

// The asm momentum passes make the same fused multiply-adds as the compiled C: bit-exact.
static void compare_exact(const char *what, int id, const float *got, const float *ref, int n) {
    checked++;
    for (int i = 0; i < n; i++) {
        if (got[i] != ref[i]) {
            put("FAIL "); put(what); put(" case "); put_u((uint32_t)id); put(" at ");
            put_u((uint32_t)i); put("\n");
            failures++;
            return;
        }
    }
}

static void check_sgd(void) {
    static const int sizes[] = { 1, 7, 8, 9, 15, 16, 17, 37, 1000 };
    static const float decays[] = { 0.0f, 0.01f };
    int id = 0;
    for (unsigned t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
        for (unsigned d = 0; d < 2; d++, id++) {
            const int n = sizes[t];
            const mt_sgd_params_t p = { 0.05f, 0.9f, decays[d] };
            fill(W1, n + 1); fill(A, n + 1); fill(B, n);
            copy(W2, W1, n + 1); copy(C1, A, n + 1); copy(C2, A, n + 1);
            for (int step = 0; step < 3; step++) {
                mt_sgd_f32_fused_begin(&p, W1, C1, (size_t)n);
                ref_mt_sgd_f32_fused_begin(&p, W2, C2, (size_t)n);
                compare_exact("sgd begin", id, C1, C2, n + 1);
                for (int i = 0; i < n; i++) { C1[i] += B[i]; C2[i] += B[i]; }
                mt_sgd_f32_fused_end(&p, W1, C1, (size_t)n);
                ref_mt_sgd_f32_fused_end(&p, W2, C2, (size_t)n);
                compare_exact("sgd end", id, W1, W2, n + 1);
            }
        }
    }
}

// CMSDK TIMER0 counts down at 25 MHz: 40 ns, i.e. 40 instructions under -icount shift=0.
#define TIMER0 ((volatile uint32_t *)0x40000000)
static uint32_t ticks(void) { return 0xffffffffu - TIMER0[1]; }

static void perf_line(const char *name, const char *pass, uint32_t macs, uint32_t t) {
    put("PERF "); put(name); put(" "); put(pass); put(" "); put_u(macs); put(" ");
    put_u(t * 40u); put("\n");
}

static void perf_conv(const char *name, mt_conv2d_params_t p) {
    const uint32_t macs = (uint32_t)(p.batch * p.out_h * p.out_w * p.out_c * p.kernel_h
                                     * p.kernel_w * (p.in_c / p.groups));
    fill(A, 20000); fill(B, 20000); fill(W1, 20000); fill(D1, 512);
    const uint32_t t0 = ticks();
    mt_conv2d_f32_forward(&p, A, W1, D1, C1, S1);
    const uint32_t t1 = ticks();
    mt_conv2d_f32_grad_input(&p, B, W1, C2, S1);
    const uint32_t t2 = ticks();
    mt_conv2d_f32_grad_weight(&p, A, B, -0.01f, W1, D1, S1);
    const uint32_t t3 = ticks();
    perf_line(name, "forward", macs, t1 - t0);
    perf_line(name, "grad_input", macs, t2 - t1);
    perf_line(name, "grad_weight", macs, t3 - t2);
}

static void perf_linear(const char *name, mt_linear_params_t p) {
    const uint32_t macs = (uint32_t)(p.batch * p.in_features * p.out_features);
    fill(A, 20000); fill(B, 20000); fill(W1, 40000); fill(D1, 512);
    const uint32_t t0 = ticks();
    mt_linear_f32_forward(&p, A, W1, D1, C1);
    const uint32_t t1 = ticks();
    mt_linear_f32_grad_input(&p, B, W1, C2);
    const uint32_t t2 = ticks();
    mt_linear_f32_grad_weight(&p, A, B, -0.01f, W1, D1);
    const uint32_t t3 = ticks();
    perf_line(name, "forward", macs, t1 - t0);
    perf_line(name, "grad_input", macs, t2 - t1);
    perf_line(name, "grad_weight", macs, t3 - t2);
}

int main(void) {
    TIMER0[2] = 0xffffffffu;    // RELOAD
    TIMER0[1] = 0xffffffffu;    // VALUE
    TIMER0[0] = 1;              // CTRL: enable
    check_gemm();
    check_gemm_packed();
    check_linear();
    check_conv();
    check_sgd();
    put("CHECKED "); put_u((uint32_t)checked); put("\n");
    perf_conv("conv3x3", (mt_conv2d_params_t){ 1, 16, 16, 16, 16, 16, 32, 3, 3, 1, 1, 1, 1, 1 });
    perf_linear("linear", (mt_linear_params_t){ 1, 256, 128 });
    perf_conv("depthwise3x3", (mt_conv2d_params_t){ 1, 16, 16, 32, 16, 16, 32, 3, 3, 1, 1, 1, 1, 32 });
    return failures != 0;
}
"""


def run_tool(cmd) -> None:
    """Runs a build step, failing the test with its stderr."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stderr}"


@pytest.fixture(scope="module")
def m4f_output(tmp_path_factory) -> str:
    """Builds the check program with the M4F toolchain, runs it on QEMU, returns its output."""
    if not (ARM_GCC and ARM_OBJCOPY and QEMU_ARM):
        pytest.skip("needs arm-none-eabi-gcc and qemu-system-arm (`make setup`)")
    out = tmp_path_factory.mktemp("m4f")
    (out / "link.ld").write_text(M4F_LINK)
    (out / "startup.c").write_text(M4F_STARTUP)
    (out / "check.c").write_text(M4F_CHECK)
    cc = [ARM_GCC, "-std=gnu99", *M4F_FLAGS, "-O2", *WARNINGS, "-I", KERNEL_DIR, "-c"]
    objects = []
    renames = [arg for f in KERNEL_FUNCTIONS for arg in ("--redefine-sym", f"{f}=ref_{f}")]
    for name in KERNEL_FILES:
        source, ref = KERNEL_DIR / f"{name}.c", out / f"ref_{name}.o"
        objects += [out / f"{name}.o", ref]
        run_tool([*cc, source, "-o", objects[-2]])
        run_tool([*cc, "-DMCUTRAIN_PORTABLE_KERNELS", source, "-o", ref])
        run_tool([ARM_OBJCOPY, *renames, ref])
    for name in ("startup", "check"):
        objects.append(out / f"{name}.o")
        run_tool([*cc, "-fno-builtin", "-fno-tree-loop-distribute-patterns", out / f"{name}.c",
                  "-o", objects[-1]])
    elf = out / "check.elf"
    run_tool([ARM_GCC, *M4F_FLAGS, "-nostdlib", "-T", out / "link.ld", "-o", elf, *objects, "-lgcc"])
    run = subprocess.run(
        [QEMU_ARM, "-machine", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "none",
         "-semihosting-config", "enable=on,target=native", "-icount", "shift=0",
         "-kernel", str(elf)],
        capture_output=True, text=True, timeout=60)
    return run.stdout + run.stderr + f"\nexit status {run.returncode}\n"


def test_m4f_asm_kernels_match_the_portable_c(m4f_output):
    assert "FAIL" not in m4f_output, m4f_output
    assert "CHECKED" in m4f_output and "exit status 0" in m4f_output, m4f_output


# A training step (forward + grad_input + grad_weight with alpha = -lr) in multiply-adds per
# emulated instruction: the design targets are 0.35 (floor) / 0.5 (aim) for conv and dense
# and 0.12 / 0.2 for depthwise; asserting the aims catches a lost asm path or a slow loop.
STEP_TARGETS = {"conv3x3": 0.5, "linear": 0.5, "depthwise3x3": 0.2}


def test_m4f_training_step_reaches_mac_per_instruction_targets(m4f_output):
    macs: dict[str, int] = {}
    instructions: dict[str, int] = {}
    for line in m4f_output.splitlines():
        if line.startswith("PERF "):
            _, name, _pass, mac, instr = line.split()
            macs[name] = macs.get(name, 0) + int(mac)
            instructions[name] = instructions.get(name, 0) + int(instr)
    assert set(macs) == set(STEP_TARGETS), m4f_output
    for name, target in STEP_TARGETS.items():
        ratio = macs[name] / instructions[name]
        print(f"{name}: {instructions[name]} instructions, {ratio:.3f} MAC/instruction")
        assert ratio >= target, f"{name}: {ratio:.3f} MAC/instruction < {target}\n{m4f_output}"


# The firmware's toolchains at other optimization levels and frame-pointer settings: the asm
# operands must still find registers (GCC reports "impossible constraints" otherwise), and
# the no-FPU and RISC-V builds must take the portable path without warnings.
MCU_BUILDS = {
    "m4f-O0": (ARM_GCC, [*M4F_FLAGS, "-O0"]),
    "m4f-Os": (ARM_GCC, [*M4F_FLAGS, "-Os"]),
    "m4f-O3": (ARM_GCC, [*M4F_FLAGS, "-O3"]),
    "m4f-O2-frame-pointer": (ARM_GCC, [*M4F_FLAGS, "-O2", "-fno-omit-frame-pointer"]),
    "m4f-Os-frame-pointer": (ARM_GCC, [*M4F_FLAGS, "-Os", "-fno-omit-frame-pointer"]),
    "m0plus-O2": (ARM_GCC, ["-mthumb", "-mcpu=cortex-m0plus", "-O2"]),
    # With picolibc's headers (<stdint.h> and friends), as boards/qemu/Makefile builds it.
    "rv32imac-O2": (RISCV_GCC, ["-march=rv32imac_zicsr", "-mabi=ilp32", "-O2", *RISCV_LIBC_SPECS]),
}


def test_kernels_build_warning_free_for_mcu_targets(tmp_path):
    builds = {name: build for name, build in MCU_BUILDS.items() if build[0]}
    if not builds:
        pytest.skip("no cross compilers installed (`make setup`)")
    procs = {}
    for name, (gcc, flags) in builds.items():
        (tmp_path / name).mkdir()
        procs[name] = subprocess.Popen(
            [gcc, "-std=gnu99", *flags, *WARNINGS, "-I", str(KERNEL_DIR), "-c",
             *(str(KERNEL_DIR / f"{f}.c") for f in KERNEL_FILES)],
            cwd=tmp_path / name, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = {name: proc.communicate(timeout=60)[0] for name, proc in procs.items()}
    failed = [f"{name}:\n{output[name]}" for name, proc in procs.items() if proc.returncode]
    assert not failed, "\n".join(failed)
