"""float16 kernels (host build): binary16 conversions against numpy, layers against the float64
numpy reference run on the same fp16-rounded inputs.

Error bounds. Every fp16 kernel sums in fp32 and rounds each output to fp16 once, so an output
is within 2**-11 of its own size (fp16's unit roundoff; 2**-25 absolute below fp16's normal
range) of the fp32 result, which is itself within Higham's gamma_n (n rounded operations,
u = 2**-24) of the exact result relative to the sum of the magnitudes. Stochastic rounding
may land on either neighbour: one full fp16 spacing, 2**-10 relative.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from kernel_lib import ptr
from mcutrain.reference import (
    adam_step,
    avgpool2d_backward,
    avgpool2d_forward,
    batchnorm2d_backward,
    batchnorm2d_forward_eval,
    batchnorm2d_forward_train,
    conv2d_backward,
    conv2d_forward,
    global_avgpool_backward,
    global_avgpool_forward,
    linear_backward,
    linear_forward,
    maxpool2d_backward,
    maxpool2d_forward,
    softmax_backward,
    softmax_forward,
)

U16 = 2.0**-11  # fp16 unit roundoff
U32 = 2.0**-24  # fp32 unit roundoff
TINY = 2.0**-25  # half the smallest fp16 subnormal: the absolute rounding error floor


def gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


def h(a) -> np.ndarray:
    """C-contiguous float16 values."""
    return np.ascontiguousarray(a, dtype=np.float16)


def f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def assert_f16_within(got, expected, magnitude, terms, what, spacings=1):
    """got (fp16) is the fp32 result of `terms` rounded operations rounded to fp16 by at most
    `spacings` half-spacings (1: nearest, 2: stochastic)."""
    expected, magnitude = f64(expected), f64(magnitude)
    bound = (spacings * (U16 * np.abs(expected) + TINY)
             + (1 + spacings * U16) * gamma(terms) * magnitude)
    err = np.abs(f64(got) - expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.ndim else ()
    assert np.all(err <= bound), (
        f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
        f"(got {f64(got)[worst]!r}, expected {expected[worst]!r})")


class Guarded16:
    """An fp16 buffer followed by canary halves, to catch writes past the end."""

    GUARD = 17
    CANARY = 0x7E5A  # a NaN no kernel produces

    def __init__(self, values):
        values = h(values)
        self.shape, self.size = values.shape, values.size
        self.buf = np.full(values.size + self.GUARD, self.CANARY, dtype=np.uint16)
        self.buf[: values.size] = values.ravel().view(np.uint16)

    @classmethod
    def empty(cls, shape):
        g = cls(np.zeros(shape))
        g.buf[: g.size] = 0x7E01  # NaN: every element must be written
        return g

    @property
    def p(self):
        return ptr(self.buf)

    def value(self) -> np.ndarray:
        assert np.all(self.buf[self.size:] == self.CANARY), "kernel wrote past the end of a buffer"
        return self.buf[: self.size].view(np.float16).reshape(self.shape).copy()


class Scratch:
    """Exactly the floats a kernel asks for, followed by NaN canaries."""

    def __init__(self, floats: int):
        self.n = floats
        self.buf = np.full(floats + 17, np.nan, dtype=np.float32)

    @property
    def p(self):
        return ptr(self.buf)

    def check(self):
        assert np.all(np.isnan(self.buf[self.n:])), "kernel wrote past the end of its scratch"


class Rng(ctypes.Structure):
    _fields_ = [("state", ctypes.c_uint32)]


class LinearParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("batch", "in_features", "out_features")]


class Conv2dParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in (
        "batch", "in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "kernel_h", "kernel_w",
        "stride_h", "stride_w", "pad_h", "pad_w", "groups")]


class PoolParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in (
        "batch", "in_h", "in_w", "channels", "out_h", "out_w", "kernel_h", "kernel_w",
        "stride_h", "stride_w", "pad_h", "pad_w")]


class BatchNormParams(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int), ("channels", ctypes.c_int), ("eps", ctypes.c_float),
                ("momentum", ctypes.c_float)]


class SgdParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_float) for name in ("lr", "momentum", "weight_decay")]


class AdamParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_float) for name in ("lr", "beta1", "beta2", "eps", "weight_decay")]
    _fields_ += [("step", ctypes.c_int)]


@pytest.fixture(scope="module")
def lib(kernels):
    vp, f, i, sz = ctypes.c_void_p, ctypes.c_float, ctypes.c_int, ctypes.c_size_t
    sigs = {
        "mt_f16_to_f32_array": [vp, vp, sz],
        "mt_f32_to_f16_array": [vp, vp, sz],
        "mt_f16_add_scaled": [vp, vp, f, sz, vp],
        "mt_conv2d_f16_scratch_floats": [vp],
        "mt_conv2d_f32_scratch_floats": [vp],
        "mt_conv2d_f16_forward": [vp, vp, vp, vp, vp, vp],
        "mt_conv2d_f16_grad_input": [vp, vp, vp, vp, vp],
        "mt_conv2d_f16_grad_weight": [vp, vp, vp, f, vp, vp, vp, vp],
        "mt_conv2d_f16_grad_weight_f32": [vp, vp, vp, f, vp, vp, vp],
        "mt_linear_f16_scratch_floats": [vp],
        "mt_linear_f16_forward": [vp, vp, vp, vp, vp, vp],
        "mt_linear_f16_grad_input": [vp, vp, vp, vp, vp],
        "mt_linear_f16_grad_weight": [vp, vp, vp, f, vp, vp, vp, vp],
        "mt_linear_f16_grad_weight_f32": [vp, vp, vp, f, vp, vp, vp],
        "mt_relu_f16_forward": [vp, vp, sz],
        "mt_relu_f16_grad_input": [vp, vp, vp, sz],
        "mt_relu6_f16_forward": [vp, vp, sz],
        "mt_relu6_f16_grad_input": [vp, vp, vp, sz],
        "mt_softmax_f16_forward": [vp, vp, i, i],
        "mt_softmax_f16_grad_input": [vp, vp, vp, i, i],
        "mt_add_f16": [vp, vp, vp, sz],
        "mt_maxpool2d_f16_forward": [vp, vp, vp],
        "mt_maxpool2d_f16_grad_input": [vp, vp, vp, vp],
        "mt_avgpool2d_f16_forward": [vp, vp, vp],
        "mt_avgpool2d_f16_grad_input": [vp, vp, vp],
        "mt_global_avgpool_f16_forward": [vp, vp, i, i, i],
        "mt_global_avgpool_f16_grad_input": [vp, vp, i, i, i],
        "mt_batchnorm_f16_forward_train": [vp] * 9,
        "mt_batchnorm_f16_forward_eval": [vp] * 7,
        "mt_batchnorm_f16_backward": [vp] * 7 + [f, vp, vp],
        "mt_batchnorm_f16_fold": [vp] * 6 + [i, vp],
        "mt_sgd_f16_fused_begin_v16": [vp, vp, vp, sz, vp],
        "mt_sgd_f16_fused_end_v16": [vp, vp, vp, sz, vp],
        "mt_sgd_f16_fused_begin_v32": [vp, vp, vp, sz, vp],
        "mt_sgd_f16_fused_end_v32": [vp, vp, vp, sz, vp],
        "mt_sgd_f16_step_v16": [vp, vp, vp, vp, sz, vp],
        "mt_sgd_f16_step_v32": [vp, vp, vp, vp, sz, vp],
        "mt_adam_f16_step": [vp, vp, vp, vp, vp, sz, vp],
    }
    for name, args in sigs.items():
        getattr(kernels, name).argtypes = args
        getattr(kernels, name).restype = None
    kernels.mt_conv2d_f16_scratch_floats.restype = sz
    kernels.mt_conv2d_f32_scratch_floats.restype = sz
    kernels.mt_linear_f16_scratch_floats.restype = sz
    return kernels


def ref(obj):
    return ctypes.byref(obj)


# ---- conversions ---------------------------------------------------------------------------

ALL_HALVES = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def quieted_f32(bits32: np.ndarray) -> np.ndarray:
    """numpy's float bits with NaNs quieted, as the kernels (and the Cortex-M FPU) give."""
    nan = (bits32 & 0x7F800000) == 0x7F800000
    nan &= (bits32 & 0x007FFFFF) != 0
    return np.where(nan, bits32 | 0x00400000, bits32)


def quieted_f16(bits16: np.ndarray) -> np.ndarray:
    nan = ((bits16 & 0x7C00) == 0x7C00) & ((bits16 & 0x03FF) != 0)
    return np.where(nan, bits16 | 0x0200, bits16).astype(np.uint16)


def to_f32(lib, halves: np.ndarray) -> np.ndarray:
    out = np.full(halves.size + 3, np.nan, dtype=np.float32)
    lib.mt_f16_to_f32_array(ptr(halves), ptr(out), halves.size)
    assert np.all(np.isnan(out[halves.size:]))
    return out[: halves.size]


def to_f16(lib, floats: np.ndarray) -> np.ndarray:
    floats = np.ascontiguousarray(floats, dtype=np.float32)
    out = np.full(floats.size + 3, 0x7E5A, dtype=np.uint16)
    lib.mt_f32_to_f16_array(ptr(floats), ptr(out), floats.size)
    assert np.all(out[floats.size:] == 0x7E5A)
    return out[: floats.size]


def test_every_half_widens_exactly_and_rounds_back_to_itself(lib):
    got = to_f32(lib, ALL_HALVES).view(np.uint32)
    expected = ALL_HALVES.view(np.float16).astype(np.float32).view(np.uint32)
    # Bit exact with numpy, except that signalling NaNs come out quiet.
    assert np.array_equal(got, quieted_f32(expected))
    nan = np.isnan(ALL_HALVES.view(np.float16))
    assert np.array_equal(got[~nan], expected[~nan])
    back = to_f16(lib, got.view(np.float32))
    assert np.array_equal(back, quieted_f16(ALL_HALVES))


def edge_floats() -> np.ndarray:
    """Midpoints between all neighbouring halves (the ties) and values just either side,
    thresholds of overflow, subnormals and zero, infinities and NaNs."""
    finite = ALL_HALVES.view(np.float16)
    finite = np.unique(np.abs(finite[np.isfinite(finite)]).astype(np.float64))
    mids = (finite[:-1] + finite[1:]) / 2  # exact in fp32: one more bit than fp16
    mids32 = mids.astype(np.float32)
    assert np.array_equal(mids32.astype(np.float64), mids)
    below, above = np.nextafter(mids32, np.float32(0)), np.nextafter(mids32, np.float32(np.inf))
    special = np.array([0.0, 65504.0, 65519.996, 65520.0, 65535.0, 65536.0, 1e10, 3.4e38,
                        2.0**-24, 2.0**-25, 2.0**-26, 2.0**-25 * 1.0000001, 2.0**-25 * 0.9999999,
                        2.0**-14, 2.0**-14 * 0.99999994, 1e-30, 1e-40, 1e-45, np.inf],
                       dtype=np.float32)
    values = np.concatenate([mids32, below, above, special])
    return np.concatenate([values, -values])


def test_rounding_matches_numpy_on_ties_overflow_and_subnormals(lib):
    values = edge_floats()
    with np.errstate(over="ignore"):  # numpy warns when it rounds to infinity
        expected = values.astype(np.float16).view(np.uint16)
    assert np.array_equal(to_f16(lib, values), expected)


def test_rounding_matches_numpy_on_random_bit_patterns_and_values(lib):
    rng = np.random.default_rng(16)
    bits = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    values = np.concatenate([
        bits.view(np.float32),
        rng.standard_normal(1 << 18).astype(np.float32) * np.float32(2.0)**rng.integers(
            -30, 18, 1 << 18).astype(np.float32),
    ])
    got = to_f16(lib, values)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    nan = np.isnan(values)
    assert np.array_equal(got[~nan], expected[~nan])
    # NaN: sign and the top 9 payload bits kept, quiet bit set (numpy's payload, quieted).
    payload = (values[nan].view(np.uint32) >> 13) & 0x1FF
    sign = (values[nan].view(np.uint32) >> 16) & 0x8000
    assert np.array_equal(got[nan], (sign | 0x7E00 | payload).astype(np.uint16))


@pytest.mark.parametrize("offset", [0, 1])
def test_array_conversions_handle_every_length_and_alignment(lib, offset):
    rng = np.random.default_rng(offset)
    for n in range(0, 21):
        halves = h(rng.standard_normal(n + offset)).view(np.uint16)
        src = halves[offset:]  # a view starting at an odd half when offset is 1
        out = np.full(n + 2, np.nan, dtype=np.float32)
        lib.mt_f16_to_f32_array(ctypes.c_void_p(src.ctypes.data), ptr(out), n)
        assert np.array_equal(out[:n], src.view(np.float16).astype(np.float32))
        assert np.all(np.isnan(out[n:]))
        dst = np.full(n + offset + 2, 0x7E5A, dtype=np.uint16)
        lib.mt_f32_to_f16_array(ptr(out), ctypes.c_void_p(dst.ctypes.data + 2 * offset), n)
        assert np.array_equal(dst[offset:offset + n], src)
        assert np.all(dst[:offset] == 0x7E5A) and np.all(dst[offset + n:] == 0x7E5A)


def add_scaled(lib, w16, g, alpha, seed=None):
    w = h(w16).view(np.uint16).copy()
    g = np.ascontiguousarray(g, dtype=np.float32)
    rng = Rng(seed) if seed is not None else None
    lib.mt_f16_add_scaled(ptr(w), ptr(g), alpha, w.size, ref(rng) if rng else None)
    return w.view(np.float16), rng


def test_weight_update_rounds_to_nearest_even_once(lib):
    rng = np.random.default_rng(3)
    w, g = h(rng.standard_normal(4096)), rng.standard_normal(4096).astype(np.float32)
    got, _ = add_scaled(lib, w, g, -0.01)
    expected = (w.astype(np.float32) + np.float32(-0.01) * g).astype(np.float16)
    # fp32 fma or separate multiply and add: both within a half-spacing of the exact sum.
    assert_f16_within(got, f64(w) - 0.01 * f64(g), np.abs(f64(w)) + 0.01 * np.abs(g), 2,
                      "nearest-even update")
    assert np.mean(got == expected) > 0.999


def test_stochastic_update_picks_a_neighbour_and_is_unbiased(lib):
    w = h(np.full(20000, 1.0))
    # 0.3 of fp16's spacing at 1.0 (2**-10): nearest even never moves, stochastic moves 30%.
    step = np.full(20000, 0.3 * 2.0**-10, dtype=np.float32)
    nearest, _ = add_scaled(lib, w, step, 1.0)
    assert np.all(nearest == 1.0)
    got, rng = add_scaled(lib, w, step, 1.0, seed=12345)
    assert set(np.unique(got).tolist()) == {1.0, 1.0 + 2.0**-10}
    frac = np.mean(got > 1.0)
    # Binomial(20000, 0.3): standard deviation 0.0032; 5 sigma.
    assert abs(frac - 0.3) < 0.017, frac
    assert rng.state != 12345
    # Subnormal targets, and negative updates, are unbiased too.
    tiny = h(np.full(20000, 2.0**-20))
    down = np.full(20000, -0.7 * 2.0**-24, dtype=np.float32)
    got, _ = add_scaled(lib, tiny, down, 1.0, seed=7)
    mean = np.mean(f64(got))
    assert abs(mean - (2.0**-20 - 0.7 * 2.0**-24)) < 5 * np.sqrt(0.21 / 20000) * 2.0**-24


def test_stochastic_update_is_reproducible_and_seed_zero_works(lib):
    rng = np.random.default_rng(5)
    w, g = h(rng.standard_normal(1000)), rng.standard_normal(1000).astype(np.float32)
    a, ra = add_scaled(lib, w, g, 1e-3, seed=99)
    b, rb = add_scaled(lib, w, g, 1e-3, seed=99)
    assert np.array_equal(a.view(np.uint16), b.view(np.uint16)) and ra.state == rb.state
    c, rc = add_scaled(lib, w, g, 1e-3, seed=0)
    assert rc.state != 0
    assert_f16_within(c, f64(w) + 1e-3 * f64(g), np.abs(f64(w)) + 1e-3 * np.abs(g), 2,
                      "stochastic update", spacings=2)
    # Exactly representable results never move.
    same, _ = add_scaled(lib, w, np.zeros(1000, dtype=np.float32), 1.0, seed=1)
    assert np.array_equal(same.view(np.uint16), w.view(np.uint16))


# ---- Conv2d --------------------------------------------------------------------------------

# (batch, in_h, in_w, in_c, out_c, kernel (h, w), stride (h, w), padding (h, w), groups)
CONV_CASES = {
    "3x3_odd_channels": (1, 5, 7, 3, 5, (3, 3), (1, 1), (1, 1), 1),
    "3x3_stride2_pad1_batch3": (3, 7, 8, 5, 7, (3, 3), (2, 2), (1, 1), 1),
    "5x5_pad2_nonsquare": (1, 6, 9, 3, 4, (5, 5), (1, 1), (2, 2), 1),
    "3x2_kernel_mixed_stride_pad": (2, 6, 5, 5, 7, (3, 2), (2, 1), (1, 2), 1),
    "2x2_stride3": (1, 8, 7, 3, 5, (2, 2), (3, 3), (0, 1), 1),
    "groups2": (1, 5, 6, 6, 4, (3, 3), (1, 1), (1, 1), 2),
    "groups3_stride2_batch3": (3, 7, 5, 6, 9, (3, 3), (2, 2), (1, 1), 3),
    "channel_multiplier": (2, 5, 5, 3, 6, (3, 3), (1, 1), (1, 1), 3),
    "depthwise_3x3_7ch": (1, 6, 5, 7, 7, (3, 3), (1, 1), (1, 1), 7),
    "depthwise_stride2_batch3": (3, 9, 8, 5, 5, (3, 3), (2, 2), (1, 1), 5),
    "depthwise_5x5_pad2": (1, 7, 6, 9, 9, (5, 5), (1, 1), (2, 2), 9),
    "depthwise_3x1_wide": (2, 5, 11, 16, 16, (3, 1), (1, 2), (1, 0), 16),
    "depthwise_32ch_16x16_bands": (1, 16, 16, 32, 32, (3, 3), (1, 1), (1, 1), 32),
    "depthwise_wide_rows": (1, 6, 40, 64, 64, (3, 3), (1, 1), (1, 1), 64),
    "depthwise_stride2_bands": (2, 16, 15, 24, 24, (3, 3), (2, 2), (1, 1), 24),
    "depthwise_stride2_column_tiles": (1, 9, 40, 48, 48, (3, 3), (2, 2), (1, 1), 48),
    "depthwise_1x1_stride2": (2, 6, 7, 8, 8, (1, 1), (2, 2), (0, 0), 8),
    "depthwise_2x2_stride3_pad1": (1, 8, 10, 4, 4, (2, 2), (3, 3), (1, 1), 4),
    "pointwise_batch3": (3, 4, 5, 7, 5, (1, 1), (1, 1), (0, 0), 1),
    "1x1_stride2": (2, 5, 6, 3, 4, (1, 1), (2, 2), (0, 0), 1),
    "1x1_pad1": (1, 3, 4, 5, 3, (1, 1), (1, 1), (1, 1), 1),
    "conv1d_k3_stride2": (2, 1, 11, 3, 5, (1, 3), (1, 2), (0, 1), 1),
    "conv1d_k5_groups": (1, 1, 20, 4, 8, (1, 5), (1, 1), (0, 2), 2),
    "3x3_16ch_to_32_bench": (1, 16, 16, 16, 32, (3, 3), (1, 1), (1, 1), 1),
    "3x3_130ch_big_patch": (1, 5, 5, 130, 6, (3, 3), (1, 1), (1, 1), 1),
    "3x3_3ch_to_40_many_outputs": (1, 12, 12, 3, 40, (3, 3), (1, 1), (1, 1), 1),
    "3x3_40ch_to_80_channel_blocks": (1, 6, 6, 40, 80, (3, 3), (1, 1), (1, 1), 1),
    "3x3_stride2_160_outputs_tap_blocks": (2, 5, 5, 4, 160, (3, 3), (2, 2), (1, 1), 1),
}

CROPS = {"full": (0, 0), "cropped": (1, 1)}


def conv_case(case, crop=(0, 0)):
    n, hh, ww, c, o, (kh, kw), (sh, sw), (ph, pw), g = CONV_CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))
    oh_full, ow_full = (hh + 2 * ph - kh) // sh + 1, (ww + 2 * pw - kw) // sw + 1
    oh, ow = max(1, oh_full - crop[0]), max(1, ow_full - crop[1])
    d = {k: h(rng.standard_normal(s)) for k, s in (
        ("x", (n, hh, ww, c)), ("w", (o, kh, kw, c // g)), ("b", (o,)), ("dy", (n, oh, ow, o)),
        ("w0", (o, kh, kw, c // g)), ("b0", (o,)))}
    params = Conv2dParams(n, hh, ww, c, oh, ow, o, kh, kw, sh, sw, ph, pw, g)
    ref_args = {"stride": (sh, sw), "padding": (ph, pw), "groups": g}
    return params, d, ref_args, (oh_full, ow_full)


def full_dy(dy, full_hw):
    out = np.zeros((dy.shape[0], *full_hw, dy.shape[3]))
    out[:, : dy.shape[1], : dy.shape[2]] = dy
    return out


def conv_scratch(lib, params) -> Scratch:
    return Scratch(lib.mt_conv2d_f16_scratch_floats(ref(params)))


@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_f16_forward_matches_reference(lib, case, crop):
    params, d, ref_args, _ = conv_case(case, CROPS[crop])
    oh, ow = params.out_h, params.out_w
    for bias in (d["b"], None):
        y = Guarded16.empty((params.batch, oh, ow, params.out_c))
        scratch = conv_scratch(lib, params)
        lib.mt_conv2d_f16_forward(ref(params), ptr(d["x"]), ptr(d["w"]), ptr(bias), y.p, scratch.p)
        scratch.check()
        expected = conv2d_forward(d["x"], d["w"], bias, **ref_args)[:, :oh, :ow]
        abs_bias = None if bias is None else np.abs(f64(bias))
        magnitude = conv2d_forward(np.abs(f64(d["x"])), np.abs(f64(d["w"])), abs_bias,
                                   **ref_args)[:, :oh, :ow]
        # The patch's products plus the bias, in fp32.
        assert_f16_within(y.value(), expected, magnitude, d["w"][0].size + 2,
                          f"conv2d f16 forward {case}")


@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_f16_grad_input_matches_reference(lib, case, crop):
    params, d, ref_args, full_hw = conv_case(case, CROPS[crop])
    dx = Guarded16.empty(d["x"].shape)
    scratch = conv_scratch(lib, params)
    lib.mt_conv2d_f16_grad_input(ref(params), ptr(d["dy"]), ptr(d["w"]), dx.p, scratch.p)
    scratch.check()
    dy = full_dy(f64(d["dy"]), full_hw)
    expected = conv2d_backward(d["x"], d["w"], dy, **ref_args)[0]
    magnitude = conv2d_backward(d["x"], np.abs(f64(d["w"])), np.abs(dy), **ref_args)[0]
    # Each input pixel sums at most kernel_h * kernel_w * out_c / groups products.
    terms = params.kernel_h * params.kernel_w * (params.out_c // params.groups) + 2
    assert_f16_within(dx.value(), expected, magnitude, terms, f"conv2d f16 grad_input {case}")


def conv_grad_weight_reference(d, ref_args, full_hw):
    dy = full_dy(f64(d["dy"]), full_hw)
    _, dw, db = conv2d_backward(d["x"], d["w"], dy, **ref_args)
    _, mag_dw, mag_db = conv2d_backward(np.abs(f64(d["x"])), d["w"], np.abs(dy), **ref_args)
    return dw, db, mag_dw, mag_db


@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_f16_grad_weight_adds_alpha_times_reference_into_fp16(lib, case, crop):
    params, d, ref_args, full_hw = conv_case(case, CROPS[crop])
    alpha = -0.25
    ref_dw, ref_db, mag_dw, mag_db = conv_grad_weight_reference(d, ref_args, full_hw)
    # One sum over the output pixels, times alpha, plus the old value.
    terms = params.batch * params.out_h * params.out_w + 3
    for seed, spacings in ((None, 1), (2024, 2)):
        dw, db = Guarded16(d["w0"]), Guarded16(d["b0"])
        scratch = conv_scratch(lib, params)
        rng = Rng(seed) if seed is not None else None
        lib.mt_conv2d_f16_grad_weight(ref(params), ptr(d["x"]), ptr(d["dy"]), alpha, dw.p, db.p,
                                      scratch.p, ref(rng) if rng else None)
        scratch.check()
        w0, b0 = f64(d["w0"]), f64(d["b0"])
        what = f"conv2d f16 dweight {case} ({'stochastic' if seed else 'nearest'})"
        assert_f16_within(dw.value(), w0 + alpha * ref_dw, np.abs(w0) + abs(alpha) * mag_dw, terms,
                          what, spacings)
        assert_f16_within(db.value(), b0 + alpha * ref_db, np.abs(b0) + abs(alpha) * mag_db, terms,
                          what.replace("dweight", "dbias"), spacings)


@pytest.mark.parametrize("case", ["3x3_stride2_pad1_batch3", "groups3_stride2_batch3",
                                  "depthwise_stride2_batch3", "3x3_130ch_big_patch"])
def test_conv2d_f16_grad_weight_f32_adds_into_fp32_buffers(lib, case):
    params, d, ref_args, full_hw = conv_case(case)
    ref_dw, ref_db, mag_dw, mag_db = conv_grad_weight_reference(d, ref_args, full_hw)
    w0, b0 = f64(d["w0"]).astype(np.float32), f64(d["b0"]).astype(np.float32)
    dw, db = w0.copy(), b0.copy()
    scratch = conv_scratch(lib, params)
    lib.mt_conv2d_f16_grad_weight_f32(ref(params), ptr(d["x"]), ptr(d["dy"]), 0.5, ptr(dw), ptr(db),
                                      scratch.p)
    scratch.check()
    terms = params.batch * params.out_h * params.out_w + 3
    for got, base, g, mag in ((dw, w0, ref_dw, mag_dw), (db, b0, ref_db, mag_db)):
        err = np.abs(f64(got) - (base + 0.5 * g))
        assert np.all(err <= gamma(terms) * (np.abs(base) + 0.5 * mag) + 1e-30), case


def test_conv2d_f16_stochastic_grad_weight_is_reproducible(lib):
    params, d, _, _ = conv_case("3x3_odd_channels")
    results = []
    for seed in (1, 1, 2):
        dw = Guarded16(d["w0"])
        scratch = conv_scratch(lib, params)
        rng = Rng(seed)
        lib.mt_conv2d_f16_grad_weight(ref(params), ptr(d["x"]), ptr(d["dy"]), -1e-3, dw.p, None,
                                      scratch.p, ref(rng))
        results.append((dw.value().view(np.uint16), rng.state))
    assert np.array_equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
    assert not np.array_equal(results[0][0], results[2][0])


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_f16_scratch_stays_small(lib, case):
    params, *_ = conv_case(case)
    floats = lib.mt_conv2d_f16_scratch_floats(ref(params))
    k = params.kernel_h * params.kernel_w * params.in_c // params.groups
    row = params.in_w * params.in_c
    # About 16 KB; more only for patches or image rows beyond ~500 floats.
    assert 0 < floats <= max(4096, 10 * k, 5 * row + 2 * params.in_c * 10), floats
    if k <= 512 and row <= 512:
        assert floats <= 4096, floats


# The example CNNs' layers (batch, in_h, in_w, in_c, out_c; 3x3, padding 1).
SMALL_CONV_LAYERS = {
    "digits_conv1": (1, 8, 8, 1, 8), "digits_conv2": (1, 4, 4, 8, 16),
    "fashion_conv1": (1, 14, 14, 1, 8), "fashion_conv2": (1, 7, 7, 8, 16),
    "pair_conv1": (1, 12, 12, 8, 16), "pair_conv2": (1, 12, 12, 16, 8),
}


@pytest.mark.parametrize("layer", SMALL_CONV_LAYERS)
def test_conv2d_f16_scratch_of_small_layers_scales_with_the_layer(lib, layer):
    n, hw, _, c, o = SMALL_CONV_LAYERS[layer]
    params = Conv2dParams(n, hw, hw, c, hw, hw, o, 3, 3, 1, 1, 1, 1, 1)
    f16 = lib.mt_conv2d_f16_scratch_floats(ref(params))
    f32 = lib.mt_conv2d_f32_scratch_floats(ref(params))
    k = 9 * c
    tensors = hw * hw * (c + o) + o * k  # one sample's x and y, and the weights
    # Half the fp32 kernels' scratch or a quarter of the tensors, whichever is more, unless
    # the smallest tiles (4 pixels by 4 channels, one tap gathered) need more: a fixed 16 KB
    # would cost these layers more than fp16 saves.
    smallest = 8 * max(k, o) + 16
    assert f16 <= max(f32 // 2, tensors // 4, smallest), (f16, f32, tensors)


def test_conv2d_f16_big_layers_keep_the_full_tiles(lib):
    # The benchmark layer's plan (16 KB) is what its instruction count was measured with.
    params, *_ = conv_case("3x3_16ch_to_32_bench")
    assert lib.mt_conv2d_f16_scratch_floats(ref(params)) == 4096


# ---- Linear --------------------------------------------------------------------------------

LINEAR_CASES = [(1, 256, 128), (5, 256, 128), (1, 7, 5), (3, 9, 10), (3, 1, 1), (2, 33, 17),
                (2, 600, 20), (7, 20, 600), (9, 300, 70)]


@pytest.mark.parametrize("batch,inp,out", LINEAR_CASES)
def test_linear_f16_matches_reference(lib, batch, inp, out):
    rng = np.random.default_rng(batch * 1000 + inp * 10 + out)
    shapes = ((batch, inp), (out, inp), (out,), (batch, out))
    x, w, b, dy = (h(rng.standard_normal(s)) for s in shapes)
    p = ref(LinearParams(batch, inp, out))
    floats = lib.mt_linear_f16_scratch_floats(p)
    assert 0 < floats <= 4096

    for bias in (b, None):
        y, scratch = Guarded16.empty((batch, out)), Scratch(floats)
        lib.mt_linear_f16_forward(p, ptr(x), ptr(w), ptr(bias), y.p, scratch.p)
        scratch.check()
        magnitude = linear_forward(np.abs(f64(x)), np.abs(f64(w)),
                                   None if bias is None else np.abs(f64(bias)))
        assert_f16_within(y.value(), linear_forward(x, w, bias), magnitude, inp + 2,
                          "linear f16 forward")

    ref_dx, ref_dw, ref_db = linear_backward(x, w, dy)
    mag_dx, mag_dw, mag_db = linear_backward(np.abs(f64(x)), np.abs(f64(w)), np.abs(f64(dy)))
    dx, scratch = Guarded16.empty((batch, inp)), Scratch(floats)
    lib.mt_linear_f16_grad_input(p, ptr(dy), ptr(w), dx.p, scratch.p)
    scratch.check()
    assert_f16_within(dx.value(), ref_dx, mag_dx, out + 2, "linear f16 grad_input")

    alpha = -0.125
    w0, b0 = h(rng.standard_normal((out, inp))), h(rng.standard_normal(out))
    for seed, spacings in ((None, 1), (77, 2)):
        dw, db, scratch = Guarded16(w0), Guarded16(b0), Scratch(floats)
        r = Rng(seed) if seed is not None else None
        lib.mt_linear_f16_grad_weight(p, ptr(x), ptr(dy), alpha, dw.p, db.p, scratch.p,
                                      ref(r) if r else None)
        scratch.check()
        assert_f16_within(dw.value(), f64(w0) + alpha * ref_dw,
                          np.abs(f64(w0)) + abs(alpha) * mag_dw, batch + 3, "linear f16 dweight",
                          spacings)
        assert_f16_within(db.value(), f64(b0) + alpha * ref_db,
                          np.abs(f64(b0)) + abs(alpha) * mag_db, batch + 3, "linear f16 dbias",
                          spacings)

    dw32, db32 = f64(w0).astype(np.float32), f64(b0).astype(np.float32)
    scratch = Scratch(floats)
    lib.mt_linear_f16_grad_weight_f32(p, ptr(x), ptr(dy), alpha, ptr(dw32), ptr(db32), scratch.p)
    scratch.check()
    err = np.abs(f64(dw32) - (f64(w0) + alpha * ref_dw))
    assert np.all(err <= gamma(batch + 3) * (np.abs(f64(w0)) + abs(alpha) * mag_dw) + 1e-30)


@pytest.mark.parametrize("batch,inp,out", [(1, 64, 10), (1, 144, 10), (4, 64, 10), (4, 144, 10)])
def test_linear_f16_scratch_of_small_layers_is_at_most_a_quarter_of_the_tensors(lib, batch, inp,
                                                                                 out):
    # The fp32 kernel needs no scratch: a fixed 16 KB would dwarf these layers. The blocks
    # do not grow with the batch: one sample's x and y count.
    floats = lib.mt_linear_f16_scratch_floats(ref(LinearParams(batch, inp, out)))
    assert floats <= (inp + out + inp * out) // 4, floats


def test_linear_f16_big_layers_keep_the_full_blocks(lib):
    # dense_256_128's benchmark plan: 8 x 256 weight blocks, one batch row.
    assert lib.mt_linear_f16_scratch_floats(ref(LinearParams(1, 256, 128))) == 8 * 256 + 256 + 8


# ---- activations ---------------------------------------------------------------------------

def run_unary(lib, name, x16):
    y = np.zeros_like(x16.view(np.uint16))
    getattr(lib, name)(ptr(x16), ptr(y), x16.size)
    return y


def test_relu_and_relu6_f16_are_exact_on_every_half(lib):
    x = ALL_HALVES.view(np.float16)
    xf = x.astype(np.float32)
    with np.errstate(invalid="ignore"):
        relu = np.where(xf < 0, np.float16(0), x)
        relu6 = np.where(xf < 0, np.float16(0), np.where(xf > 6, np.float16(6), x))
    assert np.array_equal(run_unary(lib, "mt_relu_f16_forward", x), relu.view(np.uint16))
    assert np.array_equal(run_unary(lib, "mt_relu6_f16_forward", x), relu6.view(np.uint16))
    # In place, as the fp32 kernels allow.
    inplace = ALL_HALVES.copy()
    lib.mt_relu_f16_forward(ptr(inplace), ptr(inplace), inplace.size)
    assert np.array_equal(inplace, relu.view(np.uint16))

    dy = h(np.random.default_rng(0).standard_normal(x.size))
    for name, keep in (("mt_relu_f16_grad_input", xf > 0),
                       ("mt_relu6_f16_grad_input", (xf > 0) & (xf < 6))):
        dx = np.zeros(x.size, dtype=np.uint16)
        getattr(lib, name)(ptr(x), ptr(dy), ptr(dx), x.size)
        expected = np.where(keep, dy, np.float16(0)).view(np.uint16)
        assert np.array_equal(dx, expected), name


@pytest.mark.parametrize("rows,cols", [(1, 10), (3, 7), (4, 1), (2, 100)])
def test_softmax_f16_matches_reference(lib, rows, cols):
    rng = np.random.default_rng(rows * cols)
    x = h(rng.standard_normal((rows, cols)) * 4)
    y = Guarded16.empty((rows, cols))
    lib.mt_softmax_f16_forward(ptr(x), y.p, rows, cols)
    expected = softmax_forward(x)
    # exp (a few ulps in libm), the sum of cols terms and the scaling, in fp32.
    assert_f16_within(y.value(), expected, expected, cols + 8, "softmax f16 forward")

    yv, dy = y.value(), h(rng.standard_normal((rows, cols)))
    dx = Guarded16.empty((rows, cols))
    lib.mt_softmax_f16_grad_input(ptr(yv), ptr(dy), dx.p, rows, cols)
    abs_y, abs_dy = np.abs(f64(yv)), np.abs(f64(dy))
    magnitude = abs_y * (abs_dy + (abs_dy * abs_y).sum(-1, keepdims=True))
    assert_f16_within(dx.value(), softmax_backward(yv, dy), magnitude, cols + 3,
                      "softmax f16 backward")

    inplace = x.copy()
    lib.mt_softmax_f16_forward(ptr(inplace), ptr(inplace), rows, cols)
    assert np.array_equal(inplace.view(np.uint16), y.value().view(np.uint16))


def test_add_f16_rounds_the_fp32_sum_once(lib):
    rng = np.random.default_rng(1)
    a = h(rng.standard_normal(5000) * 2.0**rng.integers(-20, 15, 5000))
    b = h(rng.standard_normal(5000) * 2.0**rng.integers(-20, 15, 5000))
    y = np.zeros(5000, dtype=np.uint16)
    lib.mt_add_f16(ptr(a), ptr(b), ptr(y), 5000)
    expected = (a.astype(np.float32) + b.astype(np.float32)).astype(np.float16)
    assert np.array_equal(y, expected.view(np.uint16))


# ---- pooling -------------------------------------------------------------------------------

# (batch, h, w, c, kernel, stride, padding)
POOL_CASES = {
    "2x2_stride2": (2, 6, 8, 3, (2, 2), (2, 2), (0, 0)),
    "3x3_stride2_pad1_overlap": (1, 7, 6, 5, (3, 3), (2, 2), (1, 1)),
    "3x2_stride1_odd": (3, 5, 7, 20, (3, 2), (1, 1), (1, 0)),
    "conv1d_like": (2, 1, 12, 7, (1, 3), (1, 2), (0, 1)),
}


def pool_case(case):
    n, hh, ww, c, (kh, kw), (sh, sw), (ph, pw) = POOL_CASES[case]
    oh, ow = (hh + 2 * ph - kh) // sh + 1, (ww + 2 * pw - kw) // sw + 1
    rng = np.random.default_rng(sum(map(ord, case)))
    x = h(rng.standard_normal((n, hh, ww, c)))
    dy = h(rng.standard_normal((n, oh, ow, c)))
    p = PoolParams(n, hh, ww, c, oh, ow, kh, kw, sh, sw, ph, pw)
    return p, x, dy, dict(kernel=(kh, kw), stride=(sh, sw), padding=(ph, pw))


@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool2d_f16_matches_reference(lib, case):
    p, x, dy, args = pool_case(case)
    y = Guarded16.empty(dy.shape)
    lib.mt_maxpool2d_f16_forward(ref(p), ptr(x), y.p)
    # The maximum is one of the inputs: exact.
    assert np.array_equal(f64(y.value()), maxpool2d_forward(x, **args))
    dx = Guarded16.empty(x.shape)
    lib.mt_maxpool2d_f16_grad_input(ref(p), ptr(x), ptr(dy), dx.p)
    expected = maxpool2d_backward(x, dy, **args)
    # Non-overlapping windows: dx is one dy or 0, exact. Overlapping ones add in fp16: at
    # most (windows per pixel - 1) roundings of partial sums.
    kh, kw = args["kernel"]
    sh, sw = args["stride"]
    windows = -(-kh // sh) * -(-kw // sw)
    magnitude = maxpool2d_backward(x, np.abs(f64(dy)), **args)
    err = np.abs(f64(dx.value()) - expected)
    assert np.all(err <= (windows - 1) * U16 * magnitude), case


@pytest.mark.parametrize("case", POOL_CASES)
def test_avgpool2d_f16_matches_reference(lib, case):
    p, x, dy, args = pool_case(case)
    area = args["kernel"][0] * args["kernel"][1]
    y = Guarded16.empty(dy.shape)
    lib.mt_avgpool2d_f16_forward(ref(p), ptr(x), y.p)
    assert_f16_within(y.value(), avgpool2d_forward(x, **args),
                      avgpool2d_forward(np.abs(f64(x)), **args), area + 2, "avgpool f16 forward")
    dx = Guarded16.empty(x.shape)
    lib.mt_avgpool2d_f16_grad_input(ref(p), ptr(dy), dx.p)
    assert_f16_within(dx.value(), avgpool2d_backward(x.shape, dy, **args),
                      avgpool2d_backward(x.shape, np.abs(f64(dy)), **args), area + 2,
                      "avgpool f16 backward")


@pytest.mark.parametrize("batch,pixels,channels", [(1, 16, 40), (3, 5, 7), (2, 1, 17)])
def test_global_avgpool_f16_matches_reference(lib, batch, pixels, channels):
    rng = np.random.default_rng(pixels)
    x = h(rng.standard_normal((batch, pixels, channels)))
    y = Guarded16.empty((batch, channels))
    lib.mt_global_avgpool_f16_forward(ptr(x), y.p, batch, pixels, channels)
    assert_f16_within(y.value(), global_avgpool_forward(x[:, :, None, :]),
                      global_avgpool_forward(np.abs(f64(x))[:, :, None, :]), pixels + 2,
                      "global avgpool f16 forward")
    dy = h(rng.standard_normal((batch, channels)))
    dx = Guarded16.empty(x.shape)
    lib.mt_global_avgpool_f16_grad_input(ptr(dy), dx.p, batch, pixels, channels)
    expected = global_avgpool_backward((batch, pixels, 1, channels), dy)[:, :, 0, :]
    assert_f16_within(dx.value(), expected, np.abs(expected), 2, "global avgpool f16 backward")


# ---- batch norm ----------------------------------------------------------------------------

@pytest.mark.parametrize("rows,channels", [(48, 5), (7, 20), (256, 16)])
def test_batchnorm_f16_matches_reference(lib, rows, channels):
    rng = np.random.default_rng(rows + channels)
    x = h(rng.standard_normal((rows, channels)) * 3 + 1)
    dy = h(rng.standard_normal((rows, channels)))
    gamma_, beta = (rng.standard_normal(channels).astype(np.float32) for _ in range(2))
    rm, rv = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    p = ref(BatchNormParams(rows, channels, 1e-5, 0.1))
    y = Guarded16.empty(x.shape)
    mean, inv_std = np.zeros(channels, np.float32), np.zeros(channels, np.float32)
    lib.mt_batchnorm_f16_forward_train(p, ptr(x), ptr(gamma_), ptr(beta), y.p, ptr(mean),
                                       ptr(inv_std), ptr(rm), ptr(rv))
    ref_rm, ref_rv = np.zeros(channels), np.ones(channels)
    ref_y, cache = batchnorm2d_forward_train(x, gamma_, beta, ref_rm, ref_rv)
    # Statistics over `rows` values in fp32 (two passes), then a few operations per output:
    # fp32 error allowance 4 * rows ulps of the output's magnitude, then one fp16 rounding.
    mag_y = np.abs(f64(gamma_)) * np.abs(cache.xhat) + np.abs(f64(beta)) + np.abs(f64(gamma_))
    assert_f16_within(y.value(), ref_y, mag_y, 4 * rows, "batchnorm f16 forward_train")
    assert np.allclose(mean, f64(x).mean(0), rtol=4 * rows * U32, atol=1e-6)
    assert np.allclose(inv_std, cache.inv_std, rtol=8 * rows * U32)
    assert np.allclose(rm, ref_rm, rtol=1e-5, atol=1e-6) and np.allclose(rv, ref_rv, rtol=1e-5)

    y_eval = Guarded16.empty(x.shape)
    lib.mt_batchnorm_f16_forward_eval(p, ptr(x), ptr(gamma_), ptr(beta), ptr(rm), ptr(rv), y_eval.p)
    assert_f16_within(y_eval.value(), batchnorm2d_forward_eval(x, gamma_, beta, rm, rv),
                      np.abs(f64(gamma_)) * (np.abs(f64(x)) + np.abs(f64(rm))) / np.sqrt(f64(rv))
                      + np.abs(f64(beta)), 8, "batchnorm f16 forward_eval")

    dx = Guarded16.empty(x.shape)
    dgamma, dbeta = np.ones(channels, np.float32), np.ones(channels, np.float32)
    lib.mt_batchnorm_f16_backward(p, ptr(x), ptr(dy), ptr(gamma_), ptr(mean), ptr(inv_std), dx.p,
                                  -0.5, ptr(dgamma), ptr(dbeta))
    ref_dx, ref_dgamma, ref_dbeta = batchnorm2d_backward(dy, cache)
    # dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)): bound it by the size of
    # its terms, with an fp32 allowance of 8 * rows ulps (two row sums feed each output).
    scale = np.abs(f64(gamma_)) * cache.inv_std
    mag_dx = scale * (np.abs(f64(dy)) + np.abs(f64(dy)).mean(0)
                      + np.abs(cache.xhat) * np.abs(f64(dy) * cache.xhat).mean(0))
    assert_f16_within(dx.value(), ref_dx, mag_dx, 8 * rows, "batchnorm f16 backward dx")
    mag_dgamma = (np.abs(f64(dy)) * np.abs(cache.xhat)).sum(0)
    assert np.all(np.abs(dgamma - (1 - 0.5 * ref_dgamma)) <= gamma(8 * rows) * (1 + mag_dgamma))
    mag_dbeta = np.abs(f64(dy)).sum(0)
    assert np.all(np.abs(dbeta - (1 - 0.5 * ref_dbeta)) <= gamma(rows + 2) * (1 + mag_dbeta))


def test_batchnorm_f16_fold_scales_fp16_weights(lib):
    rng = np.random.default_rng(11)
    c, row_len = 6, 27
    w, b = h(rng.standard_normal((c, row_len))), h(rng.standard_normal(c))
    gamma_, beta, rm = (rng.standard_normal(c).astype(np.float32) for _ in range(3))
    rv = (rng.random(c) + 0.5).astype(np.float32)
    wk, bk = w.copy(), b.copy()
    lib.mt_batchnorm_f16_fold(ref(BatchNormParams(1, c, 1e-5, 0.1)), ptr(gamma_), ptr(beta),
                              ptr(rm), ptr(rv), ptr(wk), row_len, ptr(bk))
    s = f64(gamma_) / np.sqrt(f64(rv) + 1e-5)
    assert_f16_within(wk, f64(w) * s[:, None], np.abs(f64(w) * s[:, None]), 4, "fold weight")
    expected_b = (f64(b) - f64(rm)) * s + f64(beta)
    mag_b = (np.abs(f64(b)) + np.abs(f64(rm))) * np.abs(s) + np.abs(f64(beta))
    assert_f16_within(bk, expected_b, mag_b, 6, "fold bias")


# ---- optimizers ----------------------------------------------------------------------------

def sgd_reference(w, g, v, lr, momentum, wd):
    """torch.optim.SGD in float64 from the same starting values."""
    g = f64(g) + wd * f64(w)
    if momentum:
        v = momentum * f64(v) + g
        return f64(w) - lr * v, v
    return f64(w) - lr * g, None


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("velocity", ["v16", "v32"])
@pytest.mark.parametrize("fused", [True, False])
def test_sgd_f16_matches_reference(lib, momentum, velocity, fused):
    rng = np.random.default_rng(int(momentum * 10) + len(velocity) + fused)
    n, lr, wd = 3000, 0.05, 0.01
    w = h(rng.standard_normal(n))
    g = rng.standard_normal(n).astype(np.float32)
    v0 = rng.standard_normal(n) if momentum else np.zeros(n)
    vel = h(v0) if velocity == "v16" else v0.astype(np.float32)
    vel_p = ptr(vel) if momentum else None
    sp = ref(SgdParams(lr, momentum, wd))
    wk, vel_before = w.copy(), f64(vel).copy()
    if fused:
        getattr(lib, f"mt_sgd_f16_fused_begin_{velocity}")(sp, ptr(wk), vel_p, n, None)
        # The gradient pass: into v with alpha 1, or into w with alpha -lr.
        target, alpha = (vel, 1.0) if momentum else (wk, -lr)
        if target.dtype == np.float16:
            lib.mt_f16_add_scaled(ptr(target), ptr(g), alpha, n, None)
        else:
            target += np.float32(alpha) * g
        getattr(lib, f"mt_sgd_f16_fused_end_{velocity}")(sp, ptr(wk), vel_p, n, None)
    else:
        getattr(lib, f"mt_sgd_f16_step_{velocity}")(sp, ptr(wk), ptr(g), vel_p, n, None)
    exp_w, exp_v = sgd_reference(w, g, vel_before if momentum else None, lr, momentum, wd)
    w64, v64 = f64(w), vel_before
    # fp16 roundings on the way, each within U16 of the value rounded: w once at the end (and
    # once more after the weight-decay shrink when fused without momentum); an fp16 velocity
    # once (and after the begin step too when fused), carried into w times lr. Plus a few
    # fp32 operations on values of size `mag`.
    w_rounded = np.abs(exp_w) + (np.abs(w64) if fused and not momentum else 0)
    v_rounded = 0.0
    if momentum and velocity == "v16":
        v_rounded = np.abs(exp_v) + (np.abs(momentum * v64 + wd * w64) if fused else 0)
    mag = np.abs(w64) + lr * (np.abs(g) + wd * np.abs(w64) + momentum * np.abs(v64))
    err = np.abs(f64(wk) - exp_w)
    bound = U16 * w_rounded + 1.01 * lr * U16 * v_rounded + 8 * U32 * mag + TINY
    assert np.all(err <= bound), (velocity, fused, float(np.max(err - bound)))
    if momentum:
        mag_v = momentum * np.abs(v64) + np.abs(g) + wd * np.abs(w64)
        assert np.all(np.abs(f64(vel) - exp_v) <= 1.01 * U16 * v_rounded + 8 * U32 * mag_v + TINY)


def test_sgd_f16_weight_decay_needs_stochastic_rounding(lib):
    # lr * wd = 1e-5 of each weight per step: far under half an fp16 spacing (2**-11).
    n, steps = 4000, 50
    sp = ref(SgdParams(0.01, 0.0, 1e-3))
    w0 = h(np.random.default_rng(2).uniform(0.5, 1.0, n))
    nearest, stochastic, rng = w0.copy(), w0.copy(), Rng(4)
    for _ in range(steps):
        lib.mt_sgd_f16_fused_begin_v16(sp, ptr(nearest), None, n, None)
        lib.mt_sgd_f16_fused_begin_v16(sp, ptr(stochastic), None, n, ref(rng))
    assert np.array_equal(nearest.view(np.uint16), w0.view(np.uint16))
    expected = f64(w0).sum() * (1 - 1e-5) ** steps
    # Per element and step the rounding adds at most one spacing (<= 2**-11) of noise with
    # mean 0: the sum's standard deviation is below sqrt(n * steps) * 2**-12.
    assert abs(f64(stochastic).sum() - expected) < 5 * np.sqrt(n * steps) * 2.0**-12
    assert f64(stochastic).sum() < f64(w0).sum()


def test_adam_f16_matches_reference(lib):
    rng = np.random.default_rng(9)
    n = 2000
    w = h(rng.standard_normal(n))
    g = rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    wk = w.copy()
    params = AdamParams(1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    lib.mt_adam_f16_step(ref(params), ptr(wk), ptr(g), ptr(m), ptr(v), n, None)
    w64, m64, v64 = f64(w).copy(), np.zeros(n), np.zeros(n)
    # The betas as the kernel sees them (fp32): 1 - 0.999 differs by 1.3e-5 relative.
    adam_step(w64, g, m64, v64, 1, 1e-3, beta1=float(np.float32(0.9)),
              beta2=float(np.float32(0.999)))
    assert_f16_within(wk, w64, np.abs(f64(w)) + 1e-3, 16, "adam f16")
    assert np.allclose(m, m64, rtol=1e-6) and np.allclose(v, v64, rtol=1e-6)


# ---- the conversions on the emulated boards ------------------------------------------------

TARGET_CHECK = Path(__file__).with_name("f16_convert_target.c")
KERNEL_DIR = Path(__file__).resolve().parents[1] / "usermod" / "mcutrain" / "kernels"
TARGETS = {
    # name: (compiler, flags, link flags, qemu command, code origin, ram origin, entry)
    "qemu-m4f": ("arm-none-eabi-gcc",
                 ["-mthumb", "-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"], [],
                 ["qemu-system-arm", "-M", "mps2-an386"], 0x0, 0x20000000, "reset"),
    # The rv32 libgcc multilib is found only for a plain -march=rv32imac (as boards/qemu).
    "qemu-rv32": ("riscv64-unknown-elf-gcc", ["-march=rv32imac_zicsr", "-mabi=ilp32"],
                  ["-march=rv32imac", "-mabi=ilp32"],
                  ["qemu-system-riscv32", "-M", "virt", "-bios", "none"], 0x80000000, 0x80200000,
                  "_start"),
    "qemu-rv32f": ("riscv64-unknown-elf-gcc", ["-march=rv32imafc_zicsr_zfh", "-mabi=ilp32f"],
                   ["-march=rv32imafc", "-mabi=ilp32f"],
                   ["qemu-system-riscv32", "-M", "virt", "-bios", "none", "-cpu", "rv32,Zfh=true"],
                   0x80000000, 0x80200000, "_start"),
}
TARGET_CFLAGS = ["-std=gnu99", "-O2", "-Wall", "-Wextra", "-Werror", "-Wdouble-promotion",
                 "-Wfloat-conversion", "-ffreestanding", "-fno-tree-loop-distribute-patterns"]
# half.c once more as the portable reference, its functions renamed.
PORTABLE = ["-DMCUTRAIN_PORTABLE_KERNELS"] + [
    f"-D{name}=portable_{name[3:]}"
    for name in ("mt_f16_to_f32_array", "mt_f32_to_f16_array", "mt_f16_add_scaled",
                 "mt_f16_to_f32_operands", "mt_f32_to_f16_results")]


def target_hash(values: np.ndarray) -> int:
    """f16_convert_target.c's hash: sum of (v_i ^ (i * 0x9e3779b1)) * (2i + 1) mod 2**32."""
    mask = np.uint64(0xFFFFFFFF)
    i = np.arange(values.size, dtype=np.uint64)
    v = values.astype(np.uint64)
    mixed = (v ^ ((i * np.uint64(0x9E3779B1)) & mask)) * ((np.uint64(2) * i + np.uint64(1)) & mask)
    return int((mixed & mask).sum() & mask)


def narrowed(values: np.ndarray) -> np.ndarray:
    """numpy's float16 bits with the kernels' NaN rule (quiet, top payload bits, sign)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = values.astype(np.float16).view(np.uint16).copy()
    nan = np.isnan(values)
    bits = values[nan].view(np.uint32)
    out[nan] = (((bits >> 16) & 0x8000) | 0x7E00 | ((bits >> 13) & 0x1FF)).astype(np.uint16)
    return out


def expected_target_lines() -> dict[str, int]:
    widen = quieted_f32(ALL_HALVES.view(np.float16).astype(np.float32).view(np.uint32))
    s, seq = 1, np.empty(100000, dtype=np.uint32)
    for k in range(seq.size):  # xorshift32 from 1, as mt_xorshift32
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        seq[k] = s
    lo = ALL_HALVES[1:0x7C00].view(np.float16).astype(np.float32).view(np.uint32).astype(np.int64)
    hi = ALL_HALVES[2:0x7C01].view(np.float16).astype(np.float32).view(np.uint32).astype(np.int64)
    mid = lo + (hi - lo) // 2
    ties = np.concatenate([[0x33000000], np.stack([mid - 1, mid, mid + 1], axis=1).ravel()])
    return {
        "widen": target_hash(widen),
        "narrow": target_hash(narrowed(seq.view(np.float32))),
        "ties": target_hash(narrowed(ties.astype(np.uint32).view(np.float32))),
        "mismatches": 0,
    }


@pytest.mark.parametrize("target", TARGETS)
def test_conversions_on_emulated_board_match_numpy_and_the_portable_path(target, tmp_path):
    """On qemu-m4f the VCVTB/VCVTT path and on qemu-rv32f the Zfh FCVT path run and are
    compared with the portable one bit for bit; on qemu-rv32 the portable path runs. All
    report hashes the host recomputes."""
    cc, mcu, link, qemu, code, ram, entry = TARGETS[target]
    if not (shutil.which(cc) and shutil.which(qemu[0])):
        pytest.skip(f"{cc} or {qemu[0]} not installed")
    (tmp_path / "link.ld").write_text(f"""
MEMORY {{ CODE (rx) : ORIGIN = {code:#x}, LENGTH = 2M
         RAM (rwx) : ORIGIN = {ram:#x}, LENGTH = 4M }}
ENTRY({entry})
SECTIONS {{
    .text : {{ KEEP(*(.isr_vector)) KEEP(*(.text.start)) *(.text*) *(.rodata*) *(.srodata*) }}
        > CODE
    .bss (NOLOAD) : {{ *(.bss*) *(.sbss*) *(COMMON) }} > RAM
    /DISCARD/ : {{ *(.ARM.exidx*) *(.comment) }}
    stack_top = ORIGIN(RAM) + LENGTH(RAM);
}}
""")
    flags = [*mcu, *TARGET_CFLAGS, "-I", str(KERNEL_DIR)]
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=120)
    half_c, portable, elf = KERNEL_DIR / "half.c", tmp_path / "portable.o", tmp_path / "check.elf"
    check, half = tmp_path / "check.o", tmp_path / "half.o"
    # Compiled apart from the link: its plain -march (for the libgcc multilib) would drop Zfh.
    for cmd in ([cc, *flags, *PORTABLE, "-c", str(half_c), "-o", str(portable)],
                [cc, *flags, "-c", str(half_c), "-o", str(half)],
                [cc, *flags, "-c", str(TARGET_CHECK), "-o", str(check)],
                [cc, *flags, *link, "-nostdlib", "-T", str(tmp_path / "link.ld"), "-o", str(elf),
                 str(check), str(half), str(portable), "-lgcc"]):
        built = run(cmd)
        assert built.returncode == 0, built.stderr
    out = run([*qemu, "-nographic", "-monitor", "none", "-serial", "none",
               "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)])
    text = out.stdout + out.stderr  # QEMU writes semihosting output to stderr
    assert "done" in text, text
    got = dict((k, int(v, 16)) for k, v in (line.split() for line in text.splitlines()
                                              if len(line.split()) == 2))
    assert got.pop("hw") == (target in ("qemu-m4f", "qemu-rv32f"))
    assert got == expected_target_lines()
