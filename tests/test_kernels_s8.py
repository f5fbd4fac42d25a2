"""int8 fully quantized training kernels (host build) against the integer numpy reference.

Forward, input gradient and update are compared bit for bit with
mcutrain.reference.quantized, which mirrors the C integer and float32 steps; the int8
backward is also checked against the float64 reference within bounds derived from the
quantization scheme (quant.h, conv2d_s8.h). Buffers carry canaries to catch writes past
their end, and scratch is exactly what the kernels ask for.
"""

from __future__ import annotations

import ctypes
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from kernel_lib import ptr
from mcutrain.reference import conv2d_backward, conv2d_forward
from mcutrain.reference import quantized as Q

c_float, c_int32, c_uint32, vp = ctypes.c_float, ctypes.c_int32, ctypes.c_uint32, ctypes.c_void_p


class QParams(ctypes.Structure):
    _fields_ = [("scale", c_float), ("zero_point", c_int32)]


class Requant(ctypes.Structure):
    _fields_ = [("multiplier", c_int32), ("shift", c_int32)]


class Rng(ctypes.Structure):
    _fields_ = [("state", c_uint32)]


class Range(ctypes.Structure):
    _fields_ = [("min", c_float), ("max", c_float)]


class RangeTracker(ctypes.Structure):
    _fields_ = [("min", c_float), ("max", c_float), ("count", c_int32)]


class Ema(ctypes.Structure):
    _fields_ = [("value", c_float), ("count", c_int32)]


class GradStats(ctypes.Structure):
    _fields_ = [("sum", c_float), ("sum_sq", c_float), ("count", c_int32)]


class S8Quant(ctypes.Structure):
    _fields_ = [("x", QParams), ("y", QParams), ("dy_scale", c_float), ("dx_scale", c_float),
                ("act_min", c_int32), ("act_max", c_int32)]


class S8Update(ctypes.Structure):
    _fields_ = [("lr", c_float), ("weight_decay", c_float), ("sigma_w", c_float),
                ("sigma_b", c_float), ("eps", c_float), ("rescale_below", c_float),
                ("rng", ctypes.POINTER(Rng))]


class Conv2dParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in (
        "batch", "in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "kernel_h", "kernel_w",
        "stride_h", "stride_w", "pad_h", "pad_w", "groups")]


class LinearParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("batch", "in_features", "out_features")]


@pytest.fixture(scope="module")
def lib(kernels):
    k = kernels
    P = ctypes.POINTER
    k.mt_round_half_even.argtypes, k.mt_round_half_even.restype = [c_float], c_int32
    k.mt_round_stochastic.argtypes, k.mt_round_stochastic.restype = [c_float, P(Rng)], c_int32
    k.mt_quantize_s8.argtypes = [vp, vp, ctypes.c_size_t, QParams, ctypes.c_int, ctypes.c_int,
                                 P(Rng)]
    k.mt_dequantize_s8.argtypes = [vp, vp, ctypes.c_size_t, QParams]
    k.mt_quantize_weights_s8.argtypes = [vp, vp, vp, ctypes.c_int, ctypes.c_int]
    k.mt_quantize_bias_s32.argtypes = [vp, vp, ctypes.c_int, c_float, vp]
    k.mt_rescale_bias_s32.argtypes = [vp, ctypes.c_int, c_float, c_float]
    k.mt_qparams_asymmetric.argtypes = [c_float, c_float, P(QParams)]
    k.mt_qparams_symmetric.argtypes = [c_float, P(QParams)]
    k.mt_qparams_check.argtypes = [QParams]
    k.mt_quant_multiplier.argtypes = [c_float, P(Requant)]
    k.mt_requantize.argtypes, k.mt_requantize.restype = [c_int32, Requant], c_int32
    k.mt_range_observe.argtypes = [P(RangeTracker), c_float, c_float, c_float]
    k.mt_range_observe_widening.argtypes = [P(RangeTracker), c_float, c_float, c_float]
    k.mt_ema_observe.argtypes = [P(Ema), c_float, c_float]
    k.mt_grad_stats_rms.argtypes, k.mt_grad_stats_rms.restype = [P(GradStats), c_float], c_float
    k.mt_gemm_s8_nt_scratch_bytes.argtypes = [ctypes.c_int] * 3
    k.mt_gemm_s8_nt_scratch_bytes.restype = ctypes.c_size_t
    k.mt_gemm_s8_nt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, vp, ctypes.c_int,
                                c_int32, vp, ctypes.c_int, c_int32, vp, ctypes.c_int, vp]
    cp, lp, qp = P(Conv2dParams), P(LinearParams), P(S8Quant)
    k.mt_conv2d_s8_scratch_bytes.argtypes = [cp]
    k.mt_conv2d_s8_scratch_bytes.restype = ctypes.c_size_t
    k.mt_conv2d_s8_update_scratch_bytes.argtypes = [cp, ctypes.c_int]
    k.mt_conv2d_s8_update_scratch_bytes.restype = ctypes.c_size_t
    k.mt_conv2d_s8_forward.argtypes = [cp, qp, vp, vp, vp, vp, vp, P(Range), vp]
    k.mt_conv2d_s8_grad_input.argtypes = [cp, qp, vp, vp, vp, vp, P(c_float), vp]
    k.mt_conv2d_s8_update.argtypes = [cp, qp, P(S8Update), vp, vp, vp, vp, vp, vp,
                                      P(GradStats), P(GradStats), vp, ctypes.c_size_t]
    k.mt_linear_s8_scratch_bytes.argtypes = [lp]
    k.mt_linear_s8_scratch_bytes.restype = ctypes.c_size_t
    k.mt_linear_s8_forward.argtypes = [lp, qp, vp, vp, vp, vp, vp, P(Range), vp]
    k.mt_linear_s8_grad_input.argtypes = [lp, qp, vp, vp, vp, vp, P(c_float), vp]
    k.mt_linear_s8_update.argtypes = [lp, qp, P(S8Update), vp, vp, vp, vp, vp, vp,
                                      P(GradStats), P(GradStats), vp]
    return k


class Guarded:
    """A buffer followed by canary bytes, to catch writes past its end."""

    GUARD = 24
    CANARY = 0x5A

    def __init__(self, values: np.ndarray):
        values = np.ascontiguousarray(values)
        self.shape, self.dtype = values.shape, values.dtype
        self.nbytes = values.nbytes
        # 16-byte aligned, as the engine's heap blocks are.
        self.raw = np.full(self.nbytes + self.GUARD + 16, self.CANARY, dtype=np.uint8)
        off = (-self.raw.ctypes.data) % 16
        self.buf = self.raw[off: off + self.nbytes + self.GUARD]
        self.buf[: self.nbytes] = values.view(np.uint8).ravel()

    @classmethod
    def scratch(cls, nbytes: int) -> Guarded:
        return cls(np.full(max(int(nbytes), 1), 0xA5, dtype=np.uint8))

    @property
    def p(self):
        return ctypes.c_void_p(self.buf.ctypes.data)

    def value(self) -> np.ndarray:
        assert np.all(self.buf[self.nbytes:] == self.CANARY), "kernel wrote past a buffer"
        return self.buf[: self.nbytes].view(self.dtype).reshape(self.shape).copy()


def s8(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int8)


def quant(x_scale=0.05, x_zp=3, y_scale=0.2, y_zp=-7, dy_scale=0.01, dx_scale=0.02,
          act=(-128, 127)) -> tuple[S8Quant, Q.S8Quant]:
    c = S8Quant(QParams(x_scale, x_zp), QParams(y_scale, y_zp), dy_scale, dx_scale, *act)
    r = Q.S8Quant(float(np.float32(x_scale)), x_zp, float(np.float32(y_scale)), y_zp,
                  float(np.float32(dy_scale)), float(np.float32(dx_scale)), *act)
    return c, r


# ---- rounding, quantization, multipliers ---------------------------------------------------

ROUNDING_CASES = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.50000006, 126.5, 127.5,
                  -127.5, -128.5, 4194303.5, 4194304.5, 4194305.5, -4194305.5, 8388607.5,
                  8388608.0, 16777217.0, 2147483520.0, 2.2e9, -2147483648.0, -3e9, 1e-40,
                  0.0, -0.0, float("inf"), float("-inf"), float("nan")]


def test_round_half_even_ties_go_to_even_and_saturate(lib):
    for v in ROUNDING_CASES:
        got = lib.mt_round_half_even(v)
        assert got == int(Q.round_half_even(v)), v
    assert [lib.mt_round_half_even(v) for v in (0.5, 1.5, 2.5, -2.5, 4194304.5)] == \
        [0, 2, 2, -2, 4194304]
    assert lib.mt_round_half_even(3e9) == 2**31 - 1
    assert lib.mt_round_half_even(-3e9) == -(2**31)
    assert lib.mt_round_half_even(float("nan")) == 0


def test_quantize_saturates_at_int8_limits_and_matches_reference(lib):
    x = np.float32([0.0, 1.0, -1.0, 0.025, 0.075, -0.025, 6.5, -6.5, 100.0, -100.0, 6.35, -6.45])
    for zp, lo, hi in ((0, -127, 127), (5, -128, 127), (-128, -128, 127)):
        q = Guarded(np.zeros(x.size, np.int8))
        lib.mt_quantize_s8(ptr(x), q.p, x.size, QParams(0.05, zp), lo, hi, None)
        got = q.value()
        np.testing.assert_array_equal(got, Q.quantize(x, 0.05, zp, lo, hi))
        assert got.max() == hi and got.min() == lo
    back = np.zeros(x.size, np.float32)
    lib.mt_dequantize_s8(ptr(s8(np.arange(-6, 6))), ptr(back), 12, QParams(0.25, 2))
    np.testing.assert_array_equal(back, Q.dequantize(np.arange(-6, 6), 0.25, 2))


def test_stochastic_rounding_follows_the_reference_rng_and_is_unbiased(lib):
    rng = np.random.default_rng(0)
    x = np.float32(rng.uniform(-3, 3, 4000))
    q = np.zeros(x.size, np.int8)
    state = Rng(12345)
    lib.mt_quantize_s8(ptr(x), ptr(q), x.size, QParams(0.5, 0), -127, 127, ctypes.byref(state))
    ref_rng = Q.Rng(12345)
    np.testing.assert_array_equal(q, Q.quantize(x, 0.5, 0, -127, 127, ref_rng))
    assert state.state == ref_rng.state
    # Unbiased: the mean error of 4000 draws is within 5 standard errors (each error is a
    # Bernoulli variable with variance <= 1/4, in units of the 0.5 step).
    err = q * 0.5 - x.astype(np.float64)
    assert abs(err.mean()) < 5 * 0.5 * 0.5 / math.sqrt(x.size)
    # A value that is already an integer never moves.
    state = Rng(7)
    assert all(lib.mt_round_stochastic(3.0, ctypes.byref(state)) == 3 for _ in range(50))


def test_quant_multiplier_is_exact_and_rejects_bad_values(lib):
    rng = np.random.default_rng(1)
    reals = np.float32(np.concatenate([10.0 ** rng.uniform(-12, 9, 300),
                                       [1.0, 0.5, 2.0**-31, 2.0**29, 1.0737417e9, 1e-20]]))
    for r in reals:
        m = Requant()
        assert lib.mt_quant_multiplier(float(r), ctypes.byref(m)) == 0
        assert (m.multiplier, m.shift) == Q.quant_multiplier(float(r))
        if m.multiplier:
            assert 2**30 <= m.multiplier < 2**31
            assert Fraction(m.multiplier) * Fraction(2) ** (m.shift - 31) == Fraction(float(r))
    for bad in (-1.0, float("nan"), float("inf"), 2.0**30, 2.0**31, 1e12):
        assert lib.mt_quant_multiplier(bad, ctypes.byref(Requant())) == -1
    m = Requant()
    assert lib.mt_quant_multiplier(0.0, ctypes.byref(m)) == 0 and m.multiplier == 0
    assert lib.mt_quant_multiplier(1e-30, ctypes.byref(m)) == 0 and m.multiplier == 0


def exact_round_half_up(acc: int, m: int, shift: int) -> int:
    v = Fraction(acc) * m * Fraction(2) ** (shift - 31)
    return math.floor(v + Fraction(1, 2))


def test_requantize_is_exactly_rounded_for_huge_small_and_negative_cases(lib):
    rng = np.random.default_rng(2)
    accs = [0, 1, -1, 2, -2, 3, -3, 127, -128, 2**31 - 1, -(2**31), 2**20 + 1, -(2**20) - 1]
    accs += [int(v) for v in rng.integers(-(2**31), 2**31, 60)]
    accs += [int(v) for v in rng.integers(-5000, 5000, 60)]
    reals = [1e-9, 2.0**-40, 3.7e-5, 0.00390625, 0.0123, 0.5, 0.75, 0.9999999, 1.0, 1.5, 3.25,
             1000.0, 65536.5, 2.0**29, 1.0737417e9]
    for real in reals:
        m, s = Q.quant_multiplier(real)
        ref = Q.requantize(accs, m, s)
        for a, r in zip(accs, ref):
            got = lib.mt_requantize(a, Requant(m, s))
            assert got == r, (a, real)
            # Exact single rounding, ties toward +inf, unless acc << shift saturated (M >= 1).
            if s < 0 or abs(a) <= (2**31 - 1) >> (s + 1):
                assert got == exact_round_half_up(a, m, s), (a, real)
    # Ties: x.5 goes up, -x.5 goes up too.
    m, s = Q.quant_multiplier(0.5)
    assert [lib.mt_requantize(a, Requant(m, s)) for a in (1, 3, -1, -3)] == [1, 2, 0, -1]
    assert lib.mt_requantize(12345, Requant(0, 0)) == 0


def test_qparams_make_zero_exact_and_reject_bad_ranges(lib):
    for lo, hi in ((-1.0, 1.0), (0.0, 6.0), (-0.3, 0.0), (0.5, 2.0), (-3.0, -1.0),
                   (-0.0001, 12.7), (0.0, 0.0), (-1e-3, 1e-3)):
        qp = QParams()
        assert lib.mt_qparams_asymmetric(lo, hi, ctypes.byref(qp)) == 0
        ref = Q.qparams_asymmetric(lo, hi)
        assert (qp.scale, qp.zero_point) == (np.float32(ref.scale), ref.zero_point)
        assert -128 <= qp.zero_point <= 127
        assert lib.mt_qparams_check(qp) == 0
        # Real 0 is the zero point exactly.
        assert Q.dequantize([qp.zero_point], qp.scale, qp.zero_point)[0] == 0.0
    for bad in ((float("nan"), 1.0), (0.0, float("inf")), (-1e-35, 1e-35)):
        assert lib.mt_qparams_asymmetric(*bad, ctypes.byref(QParams())) == -1
    qp = QParams()
    assert lib.mt_qparams_symmetric(2.54, ctypes.byref(qp)) == 0
    assert (qp.scale, qp.zero_point) == (np.float32(np.float32(2.54) / np.float32(127)), 0)
    for bad in (-1.0, float("nan"), float("inf")):
        assert lib.mt_qparams_symmetric(bad, ctypes.byref(QParams())) == -1
    for bad in (QParams(0.0, 0), QParams(float("nan"), 0), QParams(1.0, 128), QParams(1.0, -129),
                QParams(float("inf"), 0), QParams(-1.0, 0)):
        assert lib.mt_qparams_check(bad) == -1


def test_range_tracker_takes_first_observation_then_moving_average(lib):
    t = RangeTracker(0.0, 0.0, 0)
    ref = Q.RangeTracker(momentum=0.9)
    ema = Ema(0.0, 0)
    ev, ec = None, 0
    for lo, hi in ((-1.0, 2.0), (-3.0, 1.0), (0.5, 0.7), (-0.25, 9.0)):
        lib.mt_range_observe(ctypes.byref(t), lo, hi, 0.9)
        ref.observe(lo, hi)
        assert (t.min, t.max, t.count) == (np.float32(ref.min), np.float32(ref.max), ref.count)
        lib.mt_ema_observe(ctypes.byref(ema), hi, 0.8)
        ev, ec = Q.ema_observe(ev, ec, hi, 0.8)
        assert (ema.value, ema.count) == (np.float32(ev), ec)
    first = RangeTracker(0.0, 0.0, 0)
    lib.mt_range_observe(ctypes.byref(first), -2.0, 3.0, 0.99)
    assert (first.min, first.max) == (-2.0, 3.0)


def test_output_range_widens_at_once_and_narrows_by_the_moving_average(lib):
    # A layer's output range (layer_s8.c): growing values must not be clamped for the ten
    # steps a moving average would take to follow them (bench/int8_stability.py).
    t = RangeTracker(0.0, 0.0, 0)
    ref = Q.RangeTracker(momentum=0.9)
    steps = ((-1.0, 2.0), (-0.5, 1.0), (-3.0, 1.5), (-0.2, 0.4), (-0.1, 9.0), (float("nan"), 1.0), (-0.3, 0.5))
    for lo, hi in steps:
        lib.mt_range_observe_widening(ctypes.byref(t), lo, hi, 0.9)
        if np.isfinite(lo):
            ref.observe_widening(lo, hi)
        assert (t.min, t.max, t.count) == (np.float32(ref.min), np.float32(ref.max), ref.count)
    wide = RangeTracker(0.0, 0.0, 0)
    for lo, hi in ((-1.0, 1.0), (-1.0, 4.0)):
        lib.mt_range_observe_widening(ctypes.byref(wide), lo, hi, 0.9)
    assert (wide.min, wide.max) == (-1.0, 4.0)  # the moving average would say 1.3


def test_weight_and_bias_helpers_match_reference(lib):
    rng = np.random.default_rng(3)
    w = np.float32(rng.standard_normal((5, 7)))
    w[2] = 0.0
    q, s = np.zeros((5, 7), np.int8), np.zeros(5, np.float32)
    lib.mt_quantize_weights_s8(ptr(w), ptr(q), ptr(s), 5, 7)
    rq, rs = Q.quantize_weights(w)
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(s, rs)
    assert np.all(np.abs(q[[0, 1, 3, 4]]).max(axis=1) == 127) and s[2] == 1.0
    b = np.float32(rng.standard_normal(5))
    bq = np.zeros(5, np.int32)
    lib.mt_quantize_bias_s32(ptr(b), ptr(bq), 5, 0.03, ptr(s))
    np.testing.assert_array_equal(bq, Q.quantize_bias(b, 0.03, s))
    lib.mt_rescale_bias_s32(ptr(bq), 5, 0.03, 0.045)
    np.testing.assert_array_equal(bq, Q.rescale_bias(Q.quantize_bias(b, 0.03, s), 0.03, 0.045))


# ---- GEMM ----------------------------------------------------------------------------------

def test_gemm_s8_matches_numpy_for_every_small_shape(lib):
    rng = np.random.default_rng(4)
    for m, n, k in itertools.product(range(1, 8), range(1, 8), (1, 2, 3, 4, 5, 7, 8, 9, 17)):
        a = s8(rng.integers(-128, 128, (m, k + 2)))
        b = s8(rng.integers(-128, 128, (n, k + 1)))
        c = Guarded(np.zeros((m, n + 1), np.int32))
        scratch = Guarded.scratch(lib.mt_gemm_s8_nt_scratch_bytes(m, n, k))
        lib.mt_gemm_s8_nt(m, n, k, ptr(a), k + 2, 7, ptr(b), k + 1, -3, c.p, n + 1, scratch.p)
        scratch.value()
        got = c.value()
        ref = (a[:, :k].astype(np.int64) - 7) @ (b[:, :k].astype(np.int64) + 3).T
        np.testing.assert_array_equal(got[:, :n], ref, err_msg=f"m={m} n={n} k={k}")
        assert np.all(got[:, n] == 0), "wrote outside C's columns"


def test_gemm_s16_3x2_multi_matches_numpy_for_rows_of_blocks(lib):
    # A row of 3x2 blocks in one call: 3 rows of A against nb 2-row blocks of B, each block's
    # sums starting from its init pair (the conv forward's biases).
    lib.mt_pack_s8_rows.argtypes = [vp, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int32,
                                    ctypes.c_int, ctypes.c_int, vp]
    lib.mt_gemm_s16_3x2_multi.argtypes = [ctypes.c_int, vp, vp, ctypes.c_int, vp, vp]
    rng = np.random.default_rng(9)
    for k, nb in itertools.product((1, 7, 8, 24, 40, 72, 136), (1, 2, 5)):
        kp = (k + 7) // 8 * 8
        a = s8(rng.integers(-128, 128, (3, k)))
        b = s8(rng.integers(-128, 128, (2 * nb, k)))
        pa = np.zeros(3 * kp, np.int16)
        pb = np.zeros(2 * nb * kp, np.int16)
        lib.mt_pack_s8_rows(ptr(a), k, 3, k, 5, 3, kp, ptr(pa))
        lib.mt_pack_s8_rows(ptr(b), k, 2 * nb, k, -2, 2, kp, ptr(pb))
        init = rng.integers(-5000, 5000, 2 * nb).astype(np.int32)
        out = Guarded(np.zeros(6 * nb, np.int32))
        lib.mt_gemm_s16_3x2_multi(kp, ptr(pa), ptr(pb), nb, ptr(init), out.p)
        ref = (a.astype(np.int64) - 5) @ (b.astype(np.int64) + 2).T   # 3 x 2nb
        want = np.stack([ref[:, 2 * j:2 * j + 2] + init[2 * j:2 * j + 2] for j in range(nb)])
        np.testing.assert_array_equal(out.value().reshape(nb, 3, 2), want, err_msg=f"k={k} nb={nb}")


def test_gemm_s16_3x2_kernels_wrap_like_smlad_on_extreme_int16_panels(lib):
    # Raw panels of any int16 values (-32768 included: (-32768)^2 = 2^30 is the largest product):
    # every sum wraps modulo 2^32 as SMLAD's do, in all three entry points.
    i32 = ctypes.c_int
    lib.mt_gemm_s16_3x2.argtypes = [i32, vp, vp, vp]
    lib.mt_gemm_s16_3x2_rows.argtypes = [i32, vp, vp, vp, i32]
    lib.mt_gemm_s16_3x2_rows_multi.argtypes = [i32, vp, vp, vp, i32, i32]
    rng = np.random.default_rng(11)
    for kp in (8, 16, 64, 520):
        a = rng.integers(-32768, 32768, (2, 3, kp)).astype(np.int16)
        a[0, 0, :] = -32768
        b = rng.integers(-32768, 32768, (2, kp)).astype(np.int16)
        b[0, :] = -32768
        # Panel layout: word j of row r at j * R + r, the pair (2j, 2j + 1) in one word.
        pa = [np.ascontiguousarray(ai.reshape(3, kp // 2, 2).transpose(1, 0, 2)).reshape(-1) for ai in a]
        pb = np.ascontiguousarray(b.reshape(2, kp // 2, 2).transpose(1, 0, 2)).reshape(-1)
        init = rng.integers(-2**31, 2**31, (2, 3, 2)).astype(np.int64)
        want = [(init[t] + ai.astype(np.int64) @ b.astype(np.int64).T + 2**31) % 2**32 - 2**31
                for t, ai in enumerate(a)]
        acc = init[0].astype(np.int32).reshape(-1).copy()
        lib.mt_gemm_s16_3x2(kp, ptr(pa[0]), ptr(pb), ptr(acc))
        np.testing.assert_array_equal(acc.reshape(3, 2), want[0], err_msg=f"3x2 kp={kp}")
        ld = 5   # rows of acc 5 apart; the words between must stay
        rows = np.full((6, ld), 77, np.int32)
        rows[:3, :2], rows[3:, :2] = init[0], init[1]
        both = np.concatenate(pa)
        lib.mt_gemm_s16_3x2_rows_multi(kp, ptr(both), ptr(pb), ptr(rows), ld, 2)
        np.testing.assert_array_equal(rows[:3, :2], want[0], err_msg=f"rows_multi kp={kp}")
        np.testing.assert_array_equal(rows[3:, :2], want[1], err_msg=f"rows_multi kp={kp}")
        assert np.all(rows[:, 2:] == 77)
        one = np.full((3, ld), 77, np.int32)
        one[:, :2] = init[1]
        lib.mt_gemm_s16_3x2_rows(kp, ptr(pa[1]), ptr(pb), ptr(one), ld)
        np.testing.assert_array_equal(one[:, :2], want[1], err_msg=f"rows kp={kp}")


# ---- Conv2d --------------------------------------------------------------------------------

# (batch, in_h, in_w, in_c, out_c, kernel (h, w), stride (h, w), padding (h, w), groups)
CONV_CASES = {
    "3x3_odd_channels": (1, 5, 7, 3, 5, (3, 3), (1, 1), (1, 1), 1),
    "3x3_stride2_pad1_batch3": (3, 7, 8, 4, 6, (3, 3), (2, 2), (1, 1), 1),
    "5x5_pad2_channels7": (1, 6, 6, 7, 4, (5, 5), (1, 1), (2, 2), 1),
    "3x2_kernel_mixed_stride_pad": (2, 6, 5, 5, 7, (3, 2), (2, 1), (1, 2), 1),
    "2x4_kernel": (1, 7, 6, 4, 3, (2, 4), (1, 1), (1, 2), 1),
    "groups2": (1, 5, 6, 6, 4, (3, 3), (1, 1), (1, 1), 2),
    "groups3_stride2_batch3": (3, 7, 5, 6, 9, (3, 3), (2, 2), (1, 1), 3),
    "channel_multiplier": (2, 5, 5, 3, 6, (3, 3), (1, 1), (1, 1), 3),
    "odd_group_channels": (1, 5, 5, 10, 4, (3, 3), (1, 1), (1, 1), 2),
    "depthwise_3x3": (1, 6, 5, 7, 7, (3, 3), (1, 1), (1, 1), 7),
    "depthwise_stride2_batch3": (3, 9, 8, 5, 5, (3, 3), (2, 2), (1, 1), 5),
    "depthwise_5x5_pad2": (1, 7, 6, 9, 9, (5, 5), (1, 1), (2, 2), 9),
    "pointwise_batch3": (3, 4, 5, 7, 5, (1, 1), (1, 1), (0, 0), 1),
    "pointwise_16ch": (1, 6, 6, 16, 24, (1, 1), (1, 1), (0, 0), 1),
    "1x1_stride2": (2, 5, 6, 3, 4, (1, 1), (2, 2), (0, 0), 1),
    "1x1_pad1": (1, 3, 4, 5, 3, (1, 1), (1, 1), (1, 1), 1),
    "conv1d_k3": (2, 1, 11, 3, 5, (1, 3), (1, 2), (0, 1), 1),
    "conv1d_k5_groups": (1, 1, 20, 4, 8, (1, 5), (1, 1), (0, 2), 2),
    "3x3_16ch_to_32": (1, 16, 16, 16, 32, (3, 3), (1, 1), (1, 1), 1),
    "wide_rows_many_tiles": (2, 3, 40, 4, 5, (3, 3), (1, 2), (1, 1), 1),
    # Weights large against the image: panels are packed a block of channels at a time.
    "tiny_image_blocked": (1, 4, 4, 8, 16, (3, 3), (1, 1), (1, 1), 1),
    "blocked_odd_groups": (2, 2, 3, 6, 10, (3, 3), (1, 1), (1, 1), 2),
    "1x1_image_wide": (2, 1, 1, 12, 20, (3, 3), (1, 1), (1, 1), 1),
    # The update pairs adjacent output pixels across row ends and weights across taps.
    "cin1_kws_like_stride2": (1, 13, 10, 1, 6, (5, 4), (2, 2), (2, 1), 1),
    "cin1_rows1_batch5": (5, 3, 1, 1, 4, (3, 3), (1, 1), (1, 1), 1),
    "cin2_rows3_batch2": (2, 4, 3, 2, 5, (3, 3), (1, 1), (1, 1), 1),
    "cin3_rows9_batch4": (4, 2, 9, 3, 4, (1, 1), (1, 1), (0, 0), 1),
    "cin3_rows7_stride2": (3, 5, 11, 3, 7, (2, 3), (1, 2), (0, 2), 1),
    "pointwise_rows5_batch4": (4, 5, 5, 8, 8, (1, 1), (1, 1), (0, 0), 1),
    "cin1_tiles_end_mid_row": (3, 9, 7, 1, 5, (3, 3), (1, 1), (1, 1), 1),
    # The forward packs a kernel row at a time (kernel_w * in_c a multiple of 4), staging
    # the rows the image's edge cuts.
    "cin2_k2x2_pad_by_rows": (2, 5, 6, 2, 5, (2, 2), (1, 1), (1, 1), 1),
    "cin1_k3x8_stride3_by_rows": (1, 6, 17, 1, 3, (3, 8), (2, 3), (1, 3), 1),
}
CROPS = {"full": (0, 0), "cropped": (1, 1)}


def conv_case(case, crop=(0, 0), seed_extra=0):
    n, h, w, c, o, (kh, kw), (sh, sw), (ph, pw), g = CONV_CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)) + seed_extra)
    oh_full, ow_full = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    oh, ow = max(1, oh_full - crop[0]), max(1, ow_full - crop[1])
    d = {
        "x": s8(rng.integers(-128, 128, (n, h, w, c))),
        "w": s8(rng.integers(-127, 128, (o, kh, kw, c // g))),
        "w_scale": np.float32(rng.uniform(0.002, 0.02, o)),
        "b": rng.integers(-3000, 3000, o).astype(np.int32),
        "dy": s8(rng.integers(-127, 128, (n, oh, ow, o))),
    }
    # Sparse errors, as after a ReLU.
    d["dy"][rng.random(d["dy"].shape) < 0.3] = 0
    params = Conv2dParams(n, h, w, c, oh, ow, o, kh, kw, sh, sw, ph, pw, g)
    args = {"stride": (sh, sw), "padding": (ph, pw), "groups": g}
    return params, d, args


def conv_scratch(lib, params):
    return Guarded.scratch(lib.mt_conv2d_s8_scratch_bytes(ctypes.byref(params)))


@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_s8_forward_matches_integer_reference_bit_for_bit(lib, case, crop):
    params, d, args = conv_case(case, CROPS[crop])
    out_hw = (params.out_h, params.out_w)
    for bias, act in ((d["b"], (-128, 127)), (None, (-7, 127)), (d["b"], (-7, 23))):
        # An output scale from the real range, so that most outputs are inside int8.
        _, (lo, hi) = Q.conv2d_s8_forward(d["x"], d["w"], d["w_scale"], bias, quant()[1],
                                          out_hw=out_hw, **args)
        qc, qr = quant(y_scale=max(-lo, hi) / 110, act=act)
        y = Guarded(np.zeros((params.batch, params.out_h, params.out_w, params.out_c), np.int8))
        scratch = conv_scratch(lib, params)
        rng = Range()
        assert lib.mt_conv2d_s8_forward(ctypes.byref(params), ctypes.byref(qc), ptr(d["x"]),
                                        ptr(d["w"]), ptr(d["w_scale"]), ptr(bias), y.p,
                                        ctypes.byref(rng), scratch.p) == 0
        scratch.value()
        ref, ref_range = Q.conv2d_s8_forward(d["x"], d["w"], d["w_scale"], bias, qr,
                                             out_hw=out_hw, **args)
        np.testing.assert_array_equal(y.value(), ref, err_msg=f"{case} bias={bias is not None}")
        assert (rng.min, rng.max) == (np.float32(ref_range[0]), np.float32(ref_range[1]))


@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_s8_grad_input_matches_integer_reference_bit_for_bit(lib, case, crop):
    params, d, args = conv_case(case, CROPS[crop])
    _, absmax0 = Q.conv2d_s8_grad_input(d["x"].shape, d["w"], d["w_scale"], d["dy"], quant()[1],
                                        **args)
    qc, qr = quant(dx_scale=absmax0 / 110)
    dx = Guarded(np.zeros(d["x"].shape, np.int8))
    scratch = conv_scratch(lib, params)
    absmax = c_float()
    assert lib.mt_conv2d_s8_grad_input(ctypes.byref(params), ctypes.byref(qc), ptr(d["dy"]),
                                       ptr(d["w"]), ptr(d["w_scale"]), dx.p, ctypes.byref(absmax),
                                       scratch.p) == 0
    scratch.value()
    ref, ref_absmax = Q.conv2d_s8_grad_input(d["x"].shape, d["w"], d["w_scale"], d["dy"], qr,
                                             **args)
    np.testing.assert_array_equal(dx.value(), ref, err_msg=case)
    assert absmax.value == np.float32(ref_absmax)


def run_conv_update(lib, params, d, qc, upd, mask=None, scratch_bytes=None, stats_only=False,
                    rng_state=None):
    w = Guarded(d["w"])
    ws = Guarded(d["w_scale"])
    b = Guarded(d["b"])
    nbytes = scratch_bytes or lib.mt_conv2d_s8_scratch_bytes(ctypes.byref(params))
    scratch = Guarded.scratch(nbytes)
    w_stats, b_stats = GradStats(), GradStats()
    state = Rng(rng_state) if rng_state is not None else None
    if state is not None:
        upd.rng = ctypes.pointer(state)
    m = None if mask is None else np.ascontiguousarray(mask, dtype=np.uint8)
    assert lib.mt_conv2d_s8_update(ctypes.byref(params), ctypes.byref(qc),
                                   None if stats_only else ctypes.byref(upd), ptr(d["x"]),
                                   ptr(d["dy"]), w.p, ws.p, b.p, ptr(m), ctypes.byref(w_stats),
                                   ctypes.byref(b_stats), scratch.p, nbytes) == 0
    scratch.value()
    return w.value(), ws.value(), b.value(), w_stats, b_stats, state


def assert_update_matches(got, ref, what):
    w, ws, b, w_stats, b_stats, _ = got
    np.testing.assert_array_equal(w, ref.w, err_msg=what)
    np.testing.assert_array_equal(ws, ref.w_scale, err_msg=what)
    np.testing.assert_array_equal(b, ref.bias, err_msg=what)
    for c_stats, r_stats in ((w_stats, ref.w_stats), (b_stats, ref.b_stats)):
        assert (c_stats.sum, c_stats.sum_sq, c_stats.count) == (
            np.float32(r_stats.sum), np.float32(r_stats.sum_sq), r_stats.count), what


UPDATES = {
    "plain_sgd": dict(lr=0.05),
    "plain_sgd_small_steps": dict(lr=0.0005),
    "standardized_decay": dict(lr=0.01, weight_decay=0.1, sigma_w=0.003, sigma_b=0.2, eps=1e-6),
    "hysteresis": dict(lr=0.002, sigma_w=0.01, sigma_b=0.5, rescale_below=0.5),
    # Kept scales: the fixed-point pass, with rows that overflow it rescaled.
    "kept_scale": dict(lr=0.05, rescale_below=0.5),
    "kept_scale_small_steps": dict(lr=0.0005, rescale_below=0.5),
}


@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_s8_update_matches_reference_bit_for_bit(lib, case, crop):
    params, d, args = conv_case(case, CROPS[crop])
    qc, qr = quant()
    for name, kw in UPDATES.items():
        got = run_conv_update(lib, params, d, qc, S8Update(**{"eps": 1e-8, "rescale_below": 1.0,
                                                                **kw}))
        ref = Q.conv2d_s8_update(d["x"], d["dy"], d["w"], d["w_scale"], d["b"], qr,
                                 Q.S8Update(**kw), **args)
        assert_update_matches(got, ref, f"{case} {name}")


@pytest.mark.parametrize("case", ["3x3_odd_channels", "groups3_stride2_batch3",
                                  "depthwise_stride2_batch3", "conv1d_k5_groups"])
@pytest.mark.parametrize("rescale_below", [1.0, 0.5])
def test_conv2d_s8_update_with_stochastic_rounding_and_a_mask(lib, case, rescale_below):
    params, d, args = conv_case(case)
    qc, qr = quant()
    rng = np.random.default_rng(5)
    mask = rng.random(params.out_c) < 0.5
    mask[0] = True
    kw = dict(lr=0.02, sigma_w=0.004, sigma_b=0.3, rescale_below=rescale_below)
    got = run_conv_update(lib, params, d, qc, S8Update(eps=1e-8, **kw),
                          mask=mask, rng_state=99)
    ref_rng = Q.Rng(99)
    ref = Q.conv2d_s8_update(d["x"], d["dy"], d["w"], d["w_scale"], d["b"], qr,
                             Q.S8Update(rng=ref_rng, **kw), mask=mask, **args)
    assert_update_matches(got, ref, case)
    assert got[5].state == ref_rng.state
    # Unselected channels keep their weights, scale and bias exactly.
    keep = ~mask
    np.testing.assert_array_equal(got[0][keep], d["w"][keep])
    np.testing.assert_array_equal(got[1][keep], d["w_scale"][keep])
    np.testing.assert_array_equal(got[2][keep], d["b"][keep])


@pytest.mark.parametrize("case", ["3x3_16ch_to_32", "3x3_stride2_pad1_batch3", "groups2",
                                  "cin1_kws_like_stride2", "cin3_rows7_stride2",
                                  "cin1_tiles_end_mid_row"])
def test_conv2d_s8_update_results_do_not_depend_on_scratch_size(lib, case):
    params, d, _ = conv_case(case)
    qc, _ = quant()
    upd = S8Update(lr=0.01, sigma_w=0.005, sigma_b=0.1, eps=1e-8, rescale_below=1.0)
    small = lib.mt_conv2d_s8_update_scratch_bytes(ctypes.byref(params), 3)
    big = lib.mt_conv2d_s8_update_scratch_bytes(ctypes.byref(params), params.out_c)
    results = [run_conv_update(lib, params, d, qc, upd, scratch_bytes=n) for n in (small, big)]
    for a, b in zip(results[0][:3], results[1][:3]):
        np.testing.assert_array_equal(a, b)


def test_conv2d_s8_statistics_only_call_writes_nothing(lib):
    params, d, args = conv_case("3x3_odd_channels")
    qc, qr = quant()
    w, ws, b, w_stats, b_stats, _ = run_conv_update(lib, params, d, qc, S8Update(),
                                                    stats_only=True)
    np.testing.assert_array_equal(w, d["w"])
    np.testing.assert_array_equal(ws, d["w_scale"])
    np.testing.assert_array_equal(b, d["b"])
    ref = Q.conv2d_s8_update(d["x"], d["dy"], d["w"], d["w_scale"], d["b"], qr, None, **args)
    assert (w_stats.sum_sq, w_stats.count) == (np.float32(ref.w_stats.sum_sq), ref.w_stats.count)
    assert w_stats.count == d["w"].size and b_stats.count == params.out_c
    # The standardized step uses this RMS: sigma = unit * sqrt(sum_sq / count).
    unit = np.float32(qr.dy_scale) * np.float32(qr.x_scale)
    assert lib.mt_grad_stats_rms(ctypes.byref(w_stats), unit) == np.float32(
        Q.grad_stats_rms(ref.w_stats, float(unit)))


def test_conv2d_s8_rejects_unrepresentable_multipliers(lib):
    params, d, _ = conv_case("3x3_odd_channels")
    qc, _ = quant(y_scale=1e-30)   # s_x * s_w / s_y >= 2^30
    y = Guarded(np.zeros((params.batch, params.out_h, params.out_w, params.out_c), np.int8))
    assert lib.mt_conv2d_s8_forward(ctypes.byref(params), ctypes.byref(qc), ptr(d["x"]),
                                    ptr(d["w"]), ptr(d["w_scale"]), None, y.p, None,
                                    conv_scratch(lib, params).p) == -1
    assert np.all(y.value() == 0), "wrote outputs despite the error"


# Output scales that make M = s_x * s_w / s_y (= 2e-4 / s_y) take every requantization path:
# M >= 0.5 (a left shift), M in [0.25, 0.5) (no right shift), right shifts up to 23 (the M4
# fast path) and beyond, and M below 2^-62 (multiplier 0).
EDGE_Y_SCALES = {"M_1": 2e-4, "M_two_thirds": 3e-4, "M_0.4": 5e-4, "M_2^-24": 3000.0,
                 "M_2^-27": 3e4, "M_zero": 3e30}


@pytest.mark.parametrize("y_scale", EDGE_Y_SCALES)
@pytest.mark.parametrize("case", ["3x3_odd_channels", "3x3_16ch_to_32", "depthwise_3x3"])
def test_conv2d_s8_forward_bit_exact_for_extreme_multipliers(lib, case, y_scale):
    params, d, args = conv_case(case)
    d["w_scale"][:] = np.float32(0.004)
    qc, qr = quant(x_scale=0.05, y_scale=EDGE_Y_SCALES[y_scale], act=(-20, 100))
    y = Guarded(np.zeros((params.batch, params.out_h, params.out_w, params.out_c), np.int8))
    rng = Range()
    assert lib.mt_conv2d_s8_forward(ctypes.byref(params), ctypes.byref(qc), ptr(d["x"]),
                                    ptr(d["w"]), ptr(d["w_scale"]), ptr(d["b"]), y.p,
                                    ctypes.byref(rng), conv_scratch(lib, params).p) == 0
    ref, ref_range = Q.conv2d_s8_forward(d["x"], d["w"], d["w_scale"], d["b"], qr, **args)
    np.testing.assert_array_equal(y.value(), ref)
    assert (rng.min, rng.max) == (np.float32(ref_range[0]), np.float32(ref_range[1]))


# M = s_dy * max s_w / (256 s_dx) = 7.8e-7 / s_dx here: left shift, no right shift, right
# shifts 8, 14 and 26, and 0.
@pytest.mark.parametrize("dx_scale", [1e-6, 2e-6, 0.0004, 0.02, 100.0, 1e30])
def test_conv2d_s8_grad_input_bit_exact_for_extreme_multipliers(lib, dx_scale):
    params, d, args = conv_case("3x3_16ch_to_32")
    d["w_scale"][:] = np.float32(0.02)
    qc, qr = quant(dx_scale=dx_scale)
    dx = Guarded(np.zeros(d["x"].shape, np.int8))
    absmax = c_float()
    assert lib.mt_conv2d_s8_grad_input(ctypes.byref(params), ctypes.byref(qc), ptr(d["dy"]),
                                       ptr(d["w"]), ptr(d["w_scale"]), dx.p, ctypes.byref(absmax),
                                       conv_scratch(lib, params).p) == 0
    ref, ref_absmax = Q.conv2d_s8_grad_input(d["x"].shape, d["w"], d["w_scale"], d["dy"], qr,
                                             **args)
    np.testing.assert_array_equal(dx.value(), ref)
    assert absmax.value == np.float32(ref_absmax)


def test_conv2d_s8_update_rejects_too_small_scratch(lib):
    params, d, _ = conv_case("3x3_odd_channels")
    qc, _ = quant()
    nbytes = lib.mt_conv2d_s8_update_scratch_bytes(ctypes.byref(params), 3) - 8
    w = Guarded(d["w"])
    scratch = Guarded.scratch(nbytes)
    assert lib.mt_conv2d_s8_update(ctypes.byref(params), ctypes.byref(qc),
                                   ctypes.byref(S8Update(lr=0.1)), ptr(d["x"]), ptr(d["dy"]), w.p,
                                   ptr(d["w_scale"].copy()), None, None, None, None, scratch.p,
                                   nbytes) == -1
    scratch.value()
    np.testing.assert_array_equal(w.value(), d["w"])


# ---- Linear --------------------------------------------------------------------------------

@pytest.mark.parametrize("batch,inp,out", [(1, 256, 128), (1, 7, 5), (3, 9, 10), (3, 1, 1),
                                           (2, 33, 17), (5, 16, 3)])
def test_linear_s8_matches_integer_reference_bit_for_bit(lib, batch, inp, out):
    rng = np.random.default_rng(batch * 1000 + inp * 10 + out)
    x = s8(rng.integers(-128, 128, (batch, inp)))
    w = s8(rng.integers(-127, 128, (out, inp)))
    ws = np.float32(rng.uniform(0.002, 0.02, out))
    b = rng.integers(-3000, 3000, out).astype(np.int32)
    dy = s8(rng.integers(-127, 128, (batch, out)))
    dy[rng.random(dy.shape) < 0.3] = 0
    p = ctypes.byref(LinearParams(batch, inp, out))
    qc, qr = quant(act=(-7, 127))
    nbytes = lib.mt_linear_s8_scratch_bytes(p)

    y, scratch, yr = Guarded(np.zeros((batch, out), np.int8)), Guarded.scratch(nbytes), Range()
    assert lib.mt_linear_s8_forward(p, ctypes.byref(qc), ptr(x), ptr(w), ptr(ws), ptr(b), y.p,
                                    ctypes.byref(yr), scratch.p) == 0
    ref_y, ref_range = Q.linear_s8_forward(x, w, ws, b, qr)
    np.testing.assert_array_equal(y.value(), ref_y)
    assert (yr.min, yr.max) == (np.float32(ref_range[0]), np.float32(ref_range[1]))

    dx, absmax = Guarded(np.zeros((batch, inp), np.int8)), c_float()
    assert lib.mt_linear_s8_grad_input(p, ctypes.byref(qc), ptr(dy), ptr(w), ptr(ws), dx.p,
                                       ctypes.byref(absmax), scratch.p) == 0
    ref_dx, ref_absmax = Q.linear_s8_grad_input(w, ws, dy, qr)
    np.testing.assert_array_equal(dx.value(), ref_dx)
    assert absmax.value == np.float32(ref_absmax)

    kw = dict(lr=0.01, weight_decay=0.05, sigma_w=0.003, sigma_b=0.2)
    mask = np.ascontiguousarray(rng.random(out) < 0.7, dtype=np.uint8)
    for m in (None, mask):
        wg, wsg, bg = Guarded(w), Guarded(ws), Guarded(b)
        w_stats, b_stats = GradStats(), GradStats()
        state = Rng(5)
        upd = S8Update(eps=1e-8, rescale_below=1.0, rng=ctypes.pointer(state), **kw)
        assert lib.mt_linear_s8_update(p, ctypes.byref(qc), ctypes.byref(upd), ptr(x), ptr(dy),
                                       wg.p, wsg.p, bg.p, ptr(m), ctypes.byref(w_stats),
                                       ctypes.byref(b_stats), scratch.p) == 0
        ref_rng = Q.Rng(5)
        ref = Q.linear_s8_update(x, dy, w, ws, b, qr, Q.S8Update(rng=ref_rng, **kw), mask=m)
        assert_update_matches((wg.value(), wsg.value(), bg.value(), w_stats, b_stats, None),
                              ref, f"linear update mask={m is not None}")
        assert state.state == ref_rng.state
    scratch.value()


LINEAR_ODD = [(b, i, o) for b in (1, 2, 3, 4, 5) for i, o in ((1, 1), (3, 17), (17, 3), (800, 12))] + [
    (1, 800, 1), (2, 17, 17), (4, 256, 5)]


@pytest.mark.parametrize("batch,inp,out", LINEAR_ODD)
def test_linear_s8_gradients_match_the_reference_for_odd_sizes_and_extreme_zero_points(lib, batch, inp, out):
    # Sizes off the four-value words and the row pairs, zero points at both ends with inputs
    # and errors at the int8 limits, rows and samples with zero error; dx scales that take the
    # requantization's usual path, a left shift, and a right shift past the fast path's.
    rng = np.random.default_rng(batch * 100003 + inp * 17 + out)
    p = ctypes.byref(LinearParams(batch, inp, out))
    nbytes = lib.mt_linear_s8_scratch_bytes(p)
    for x_zp, dx_scale in ((-128, 0.02), (127, 1e-7), (0, 3e3)):
        x = s8(rng.choice(np.array([-128, -127, 0, 1, 126, 127]), (batch, inp)))
        mix = rng.random(x.shape) < 0.5
        x[mix] = rng.integers(-128, 128, x.shape)[mix]
        w = s8(rng.choice(np.array([-127, -1, 0, 1, 127]), (out, inp)))
        ws = np.float32(rng.uniform(0.002, 0.02, out))
        b = rng.integers(-3000, 3000, out).astype(np.int32)
        dy = s8(rng.choice(np.array([-128, -127, 0, 0, 5, 127]), (batch, out)))
        qc, qr = quant(x_zp=x_zp, dx_scale=dx_scale)
        scratch = Guarded.scratch(nbytes)
        dx, absmax = Guarded(np.zeros((batch, inp), np.int8)), c_float()
        assert lib.mt_linear_s8_grad_input(p, ctypes.byref(qc), ptr(dy), ptr(w), ptr(ws), dx.p,
                                           ctypes.byref(absmax), scratch.p) == 0
        ref_dx, ref_absmax = Q.linear_s8_grad_input(w, ws, dy, qr)
        np.testing.assert_array_equal(dx.value(), ref_dx)
        assert absmax.value == np.float32(ref_absmax)
        # Statistics only (u NULL), then the update.
        w_stats, b_stats = GradStats(), GradStats()
        assert lib.mt_linear_s8_update(p, ctypes.byref(qc), None, ptr(x), ptr(dy), ptr(w), ptr(ws),
                                       ptr(b), None, ctypes.byref(w_stats), ctypes.byref(b_stats),
                                       scratch.p) == 0
        ref = Q.linear_s8_update(x, dy, w, ws, b, qr, None)
        for c_stats, r_stats in ((w_stats, ref.w_stats), (b_stats, ref.b_stats)):
            assert (c_stats.sum, c_stats.sum_sq, c_stats.count) == (
                np.float32(r_stats.sum), np.float32(r_stats.sum_sq), r_stats.count)
        wg, wsg, bg = Guarded(w), Guarded(ws), Guarded(b)
        w_stats, b_stats = GradStats(), GradStats()
        state = Rng(9)
        kw = dict(lr=0.01, weight_decay=0.05, sigma_w=0.003, sigma_b=0.2)
        upd = S8Update(eps=1e-8, rescale_below=1.0, rng=ctypes.pointer(state), **kw)
        assert lib.mt_linear_s8_update(p, ctypes.byref(qc), ctypes.byref(upd), ptr(x), ptr(dy), wg.p,
                                       wsg.p, bg.p, None, ctypes.byref(w_stats), ctypes.byref(b_stats),
                                       scratch.p) == 0
        ref_rng = Q.Rng(9)
        ref = Q.linear_s8_update(x, dy, w, ws, b, qr, Q.S8Update(rng=ref_rng, **kw))
        assert_update_matches((wg.value(), wsg.value(), bg.value(), w_stats, b_stats, None), ref,
                              f"linear update zp={x_zp}")
        assert state.state == ref_rng.state
        scratch.value()


def update_paths_case():
    """A Linear case whose rows take every path of the update (conv2d_s8.h): 0 zero error
    (skipped), 1 small steps (kept scale, fixed point), 2 a weight at 127 pushed up (the kept
    scale overflows: rescaled), 3 small weights (below rescale_below: rescaled), 4 a step of
    over half a quantum per accumulator unit (float rule), 5 and 6 random."""
    rng = np.random.default_rng(16)
    batch, inp, out = 2, 40, 7
    x = s8(rng.integers(-128, 128, (batch, inp)))
    x[:, 0] = 127
    w = s8(rng.integers(-100, 101, (out, inp)))
    w[1, 5] = 100
    w[2, 0] = 127
    w[3] = rng.integers(-30, 31, inp)
    ws = np.full(out, 0.01, np.float32)
    ws[4] = 1e-5
    ws[5:] = rng.uniform(0.002, 0.02, 2)
    b = rng.integers(-3000, 3000, out).astype(np.int32)
    b[0] = 2**30 - 5  # large biases stay exact at a kept scale
    dy = s8(rng.integers(-127, 128, (batch, out)))
    dy[:, 0] = 0
    dy[:, 1] = (1, -1)
    dy[:, 2] = (-20, -20)
    dy[:, 3] = (2, 1)
    return x, w, ws, b, dy


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("standardize", [False, True], ids=["plain", "standardized"])
def test_linear_s8_update_takes_every_path_bit_for_bit(lib, stochastic, standardize):
    x, w, ws, b, dy = update_paths_case()
    batch, out, inp = x.shape[0], w.shape[0], w.shape[1]
    p = ctypes.byref(LinearParams(batch, inp, out))
    qc, qr = quant(act=(-128, 127))
    kw = dict(lr=0.05, rescale_below=0.5)
    if standardize:
        kw.update(sigma_w=0.02, sigma_b=0.3)
    scratch = Guarded.scratch(lib.mt_linear_s8_scratch_bytes(p))
    wg, wsg, bg = Guarded(w), Guarded(ws), Guarded(b)
    w_stats, b_stats = GradStats(), GradStats()
    state = Rng(0x12345) if stochastic else None
    upd = S8Update(eps=1e-8, rng=ctypes.pointer(state) if stochastic else None, **kw)
    assert lib.mt_linear_s8_update(p, ctypes.byref(qc), ctypes.byref(upd), ptr(x), ptr(dy),
                                   wg.p, wsg.p, bg.p, None, ctypes.byref(w_stats),
                                   ctypes.byref(b_stats), scratch.p) == 0
    ref_rng = Q.Rng(0x12345) if stochastic else None
    ref = Q.linear_s8_update(x, dy, w, ws, b, qr, Q.S8Update(rng=ref_rng, **kw))
    got_w, got_ws, got_b = wg.value(), wsg.value(), bg.value()
    assert_update_matches((got_w, got_ws, got_b, w_stats, b_stats, None), ref, "update paths")
    if stochastic:
        assert state.state == ref_rng.state
    scratch.value()
    # Each row took the path it was built for.
    np.testing.assert_array_equal(got_w[0], w[0])
    assert (got_ws[0], got_b[0]) == (ws[0], b[0])
    assert got_ws[1] == ws[1] and not np.array_equal(got_w[1], w[1])
    assert got_ws[2] > ws[2] and np.abs(got_w[2]).max() == 112
    assert got_ws[3] < ws[3] and np.abs(got_w[3]).max() == 112
    assert got_ws[4] > ws[4]


@pytest.mark.parametrize("rescale_below", [0.5, 1.0])
def test_linear_s8_update_skips_zero_rows_without_draws(lib, rescale_below):
    # A zero error draws nothing: the same rng state after any number of zero rows, and the
    # next rows' weights do not depend on them.
    x, w, ws, b, dy = update_paths_case()
    dy[:] = 0
    p = ctypes.byref(LinearParams(x.shape[0], w.shape[1], w.shape[0]))
    qc, _ = quant()
    scratch = Guarded.scratch(lib.mt_linear_s8_scratch_bytes(p))
    wg, wsg, bg = Guarded(w), Guarded(ws), Guarded(b)
    state = Rng(77)
    upd = S8Update(lr=0.05, eps=1e-8, rescale_below=rescale_below, rng=ctypes.pointer(state))
    assert lib.mt_linear_s8_update(p, ctypes.byref(qc), ctypes.byref(upd), ptr(x), ptr(dy),
                                   wg.p, wsg.p, bg.p, None, None, None, scratch.p) == 0
    assert state.state == 77
    np.testing.assert_array_equal(wg.value(), w)
    np.testing.assert_array_equal(wsg.value(), ws)
    np.testing.assert_array_equal(bg.value(), b)


@pytest.mark.parametrize("inp,out", [(1, 5), (3, 17), (17, 3), (33, 12), (256, 40)])
@pytest.mark.parametrize("x_zp", [-128, 0, 127])
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_linear_s8_batch1_update_matches_reference_bit_for_bit(lib, inp, out, x_zp, stochastic,
                                                               weight_decay):
    # Batch 1 without statistics: the rank-1 path (gradient rows from x - zp, no int32 row),
    # rows with zero error skipped without draws, rows rescaled after an overflow or below
    # rescale_below, and dy * m past int32 (scales of 1e-4: the row is built) all in one call.
    rng = np.random.default_rng(inp * 131 + out * 7 + x_zp + 1000 * stochastic)
    x = s8(rng.integers(-128, 128, (1, inp)))
    x[0, rng.random(inp) < 0.2] = x_zp
    w = s8(rng.integers(-127, 128, (out, inp)))
    w[rng.random(out) < 0.2] //= 4
    ws = np.float32(rng.choice(np.array([1e-4, 0.004, 0.01, 0.02]), out))
    b = rng.integers(-3000, 3000, out).astype(np.int32)
    dy = s8(rng.choice(np.array([-128, -127, -3, -1, 0, 0, 0, 1, 2, 127]), (1, out)))
    p = ctypes.byref(LinearParams(1, inp, out))
    qc, qr = quant(x_zp=x_zp)
    kw = dict(lr=0.05, weight_decay=weight_decay, rescale_below=0.5)
    scratch = Guarded.scratch(lib.mt_linear_s8_scratch_bytes(p))
    wg, wsg, bg = Guarded(w), Guarded(ws), Guarded(b)
    state = Rng(0xBEEF) if stochastic else None
    upd = S8Update(eps=1e-8, rng=ctypes.pointer(state) if stochastic else None, **kw)
    assert lib.mt_linear_s8_update(p, ctypes.byref(qc), ctypes.byref(upd), ptr(x), ptr(dy),
                                   wg.p, wsg.p, bg.p, None, None, None, scratch.p) == 0
    ref_rng = Q.Rng(0xBEEF) if stochastic else None
    ref = Q.linear_s8_update(x, dy, w, ws, b, qr, Q.S8Update(rng=ref_rng, **kw))
    np.testing.assert_array_equal(wg.value(), ref.w)
    np.testing.assert_array_equal(wsg.value(), ref.w_scale)
    np.testing.assert_array_equal(bg.value(), ref.bias)
    if stochastic:
        assert state.state == ref_rng.state
    scratch.value()


def test_fixed_point_update_is_within_half_a_quantum_of_the_exact_step(lib):
    # At a kept scale the new weight is round(w - g * m / 2^32) with m = round(2^32 * c / s):
    # off from the exact w - g * c / s by at most half a quantum plus |g| * 2^-33 (m's
    # rounding) and float32's rounding of c / s (relative 2^-24 of the step).
    x, w, ws, b, dy = update_paths_case()
    p = ctypes.byref(LinearParams(x.shape[0], w.shape[1], w.shape[0]))
    qc, qr = quant()
    scratch = Guarded.scratch(lib.mt_linear_s8_scratch_bytes(p))
    wg, wsg, bg = Guarded(w), Guarded(ws), Guarded(b)
    lr = 0.05
    upd = S8Update(lr=lr, eps=1e-8, rescale_below=0.5)
    assert lib.mt_linear_s8_update(p, ctypes.byref(qc), ctypes.byref(upd), ptr(x), ptr(dy),
                                   wg.p, wsg.p, bg.p, None, None, None, scratch.p) == 0
    g = dy.astype(np.int64).T @ (x.astype(np.int64) - qr.x_zero_point)
    c = float(np.float32(lr) * (np.float32(qr.dy_scale) * np.float32(qr.x_scale)))
    exact = w[1] - g[1] * c / float(ws[1])
    step = np.abs(g[1] * c / float(ws[1]))
    assert wg.value()[1].tolist() != w[1].tolist()
    assert np.all(np.abs(wg.value()[1] - exact) <= 0.5 + np.abs(g[1]) * 2.0**-33 + step * 2.0**-23)


# ---- int8 backward against the float reference ----------------------------------------------

def quantize_case(case, seed):
    """Float data, its int8 quantization, and the float64 reference on the dequantized values
    (so only the kernels' own rounding remains)."""
    n, h, w, c, o, (kh, kw), (sh, sw), (ph, pw), g = CONV_CASES[case]
    rng = np.random.default_rng(seed)
    args = {"stride": (sh, sw), "padding": (ph, pw), "groups": g}
    xf = rng.standard_normal((n, h, w, c)) * 0.8 + 0.3
    wf = rng.standard_normal((o, kh, kw, c // g)) * np.float32(rng.uniform(0.2, 2.0, (o, 1, 1, 1)))
    xq_p = Q.qparams_asymmetric(float(xf.min()), float(xf.max()))
    xq = Q.quantize(xf, xq_p.scale, xq_p.zero_point)
    wq, ws = Q.quantize_weights(wf)
    yf = conv2d_forward(Q.dequantize(xq, xq_p.scale, xq_p.zero_point),
                        Q.dequantize_weights(wq, ws), None, **args)
    dyf = rng.standard_normal(yf.shape) * (rng.random(yf.shape) < 0.7)
    dy_p = Q.qparams_symmetric(float(np.abs(dyf).max()))
    dyq = Q.quantize(dyf, dy_p.scale, 0, -127, 127)
    x_deq = Q.dequantize(xq, xq_p.scale, xq_p.zero_point).astype(np.float64)
    w_deq = Q.dequantize_weights(wq, ws).astype(np.float64)
    dy_deq = Q.dequantize(dyq, dy_p.scale).astype(np.float64)
    params = Conv2dParams(n, h, w, c, yf.shape[1], yf.shape[2], o, kh, kw, sh, sw, ph, pw, g)
    return params, args, (xq, xq_p, wq, ws, dyq, dy_p), (x_deq, w_deq, dy_deq)


@pytest.mark.parametrize("case", ["3x3_odd_channels", "3x3_stride2_pad1_batch3", "groups2",
                                  "depthwise_3x3", "pointwise_16ch", "conv1d_k3",
                                  "3x3_16ch_to_32"])
def test_conv2d_s8_backward_within_documented_bounds_of_float_reference(lib, case):
    params, args, (xq, xq_p, wq, ws, dyq, dy_p), (x_deq, w_deq, dy_deq) = quantize_case(case, 11)
    ref_dx, ref_dw, ref_db = conv2d_backward(x_deq, w_deq, dy_deq, **args)
    # dx: scale chosen from the true range so nothing saturates.
    dx_scale = float(np.float32(np.abs(ref_dx).max() * 1.05 / 127))
    qc = S8Quant(QParams(xq_p.scale, xq_p.zero_point), QParams(1.0, 0), dy_p.scale, dx_scale,
                 -128, 127)
    dx = np.zeros(xq.shape, np.int8)
    scratch = conv_scratch(lib, params)
    absmax = c_float()
    assert lib.mt_conv2d_s8_grad_input(ctypes.byref(params), ctypes.byref(qc), ptr(dyq),
                                       ptr(wq), ptr(ws), ptr(dx), ctypes.byref(absmax),
                                       scratch.p) == 0
    got_dx = Q.dequantize(dx, dx_scale).astype(np.float64)
    # Bound: half a dx step for the output rounding, plus the weight-scale fold: each term
    # off by at most s_dy * max(s_w) * 2^-(rb+1) |dy_q w_q| with rb = 8 here (depthwise: 0),
    # plus float32 rounding of the scales (a few ulps, relative).
    depthwise = params.groups == params.in_c == params.out_c
    mag = conv2d_backward(x_deq, np.abs(wq).astype(np.float64), np.abs(dyq).astype(np.float64),
                          **args)[0]
    fold = 0.0 if depthwise else float(dy_p.scale) * float(ws.max()) * 2.0**-9
    bound = 0.5 * dx_scale + fold * mag + 1e-6 * np.abs(ref_dx) + 1e-12
    err = np.abs(got_dx - ref_dx)
    assert np.all(err <= bound), f"{case}: dx error {err.max():.3g} > bound"
    # The absmax is the accumulators' (exact) times the folded unit: the fold's 2^-9 again.
    rel = 1e-6 if depthwise else 2.0**-8
    assert absmax.value == pytest.approx(np.abs(ref_dx).max(), rel=rel)

    # Weight gradient and update, plain SGD (no standardization): the gradient itself is exact
    # (integer sums), so the only error is the final rounding to the new per-channel scale
    # (half a step) and float32 rounding (relative 1e-6).
    lr = 0.01
    qc.dy_scale = dy_p.scale
    upd = S8Update(lr=lr, eps=1e-8, rescale_below=1.0)
    d = {"x": xq, "dy": dyq, "w": wq, "w_scale": ws, "b": np.zeros(params.out_c, np.int32)}
    w_new, ws_new, b_new, *_ = run_conv_update(lib, params, d, qc, upd)
    expect = w_deq - lr * ref_dw
    got = Q.dequantize_weights(w_new, ws_new).astype(np.float64)
    step = ws_new.reshape(-1, 1, 1, 1).astype(np.float64)
    assert np.all(np.abs(got - expect) <= 0.5 * step + 1e-6 * np.abs(expect) + 1e-12), case
    # The new scale spans the updated channel exactly.
    np.testing.assert_allclose(ws_new * 127, np.abs(expect).reshape(params.out_c, -1).max(axis=1),
                               rtol=1e-5)
    # Bias (in units of s_x * s_w): -lr * sum(dy) in real units, to half a bias step.
    got_b = b_new.astype(np.float64) * xq_p.scale * ws_new
    bias_step = xq_p.scale * ws_new
    assert np.all(np.abs(got_b + lr * ref_db) <= 0.5 * bias_step + 1e-6 * np.abs(lr * ref_db))
