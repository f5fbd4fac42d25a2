"""Integer reference of mcutrain's int8 fully quantized training (the C kernels quant.c,
conv2d_s8.c, linear_s8.c), bit for bit.

The scheme (documented in usermod/mcutrain/kernels/quant.h and conv2d_s8.h) after Deutel et
al. 2024, "On-Device Training of Fully Quantized Deep Neural Networks on Cortex-M
Microcontrollers" (arXiv 2407.10734):

- real = scale * (q - zero_point); activations int8 asymmetric, weights int8 symmetric with a
  scale per output channel, errors int8 symmetric, bias int32 in units of s_x * s_w[o];
- int32 accumulation, requantization by a Q31 multiplier and a shift with one exact rounding;
- the input gradient folds per-channel weight scale ratios into 2^rb-scaled integers;
- the update (rule in conv2d_s8.h) skips rows with no error, keeps a row's scale with a
  fixed-point step (a Q32 multiplier per row, rounding by 2^31 or by the 32 bits of the
  next xorshift32 state per weight) while the new weights fit it, and otherwise computes
  each weight in float from its integer gradient, standardized by a caller-given sigma,
  and requantizes the whole output channel at once with a new scale.

Integer sums are exact here (float64 holds them), and every float step is done in float32 in
the kernels' order, so results match the C code exactly; tests/test_kernels_s8.py checks it.
Layouts are the engine's (NHWC, OHWI; see functional.py). Float helpers quantize a float
model's weights and biases per channel and dequantize them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .functional import (
    IntPair,
    _pad_hw,
    _pair,
    _pool_args,
    _tap,
    _windows,
    conv2d_forward,
    conv2d_grad_input,
    conv2d_grad_weight,
    conv_output_size,
)

__all__ = [
    "ACT_MAX",
    "ACT_MIN",
    "SYM_MAX",
    "GradStats",
    "QParams",
    "RangeTracker",
    "Rng",
    "S8Quant",
    "AddS8",
    "S8Update",
    "batchnorm_s8_backward",
    "batchnorm_s8_forward",
    "batchnorm_s8_prepare",
    "softmax_s8_forward",
    "softmax_s8_grad_input",
    "add_s8",
    "add_s8_make",
    "avgpool2d_s8_cover",
    "avgpool2d_s8_forward",
    "avgpool2d_s8_grad_input",
    "div_round_half_even",
    "conv2d_s8_forward",
    "conv2d_s8_grad_input",
    "conv2d_s8_update",
    "dequantize",
    "dequantize_weights",
    "ema_observe",
    "grad_stats_rms",
    "linear_s8_forward",
    "linear_s8_grad_input",
    "linear_s8_update",
    "qparams_asymmetric",
    "qparams_symmetric",
    "quant_multiplier",
    "quantize",
    "quantize_bias",
    "quantize_weights",
    "requantize",
    "rescale_bias",
    "round_half_even",
    "round_stochastic",
]

ACT_MIN, ACT_MAX = -128, 127  # activations
SYM_MAX = 127  # weights and errors: [-127, 127]
RESCALE_TOP = np.float32(112.0)  # a rescaled row's largest |w| when scales are kept (rescale_below < 1)
MIN_SCALE = np.float32(1e-30)
# mt_qparams_asymmetric widens a range narrower than this (after including 0) upward to it.
MIN_RANGE = np.float32(2.0**-10)
# Every int32 bias saturates to [-BIAS_MAX, BIAS_MAX] (mt_bias_clamp_s32).
BIAS_MAX = 2**30

F32 = np.float32
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
IntArray = NDArray[np.int64]
# A float or a numpy float scalar: these functions compute in float32 whichever they get.
Real = float | np.floating[Any]


def _f32(x: ArrayLike) -> NDArray[np.float32]:
    return np.asarray(x, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# rounding


def round_half_even(x: ArrayLike) -> IntArray:
    """Nearest integer, ties to even, saturated to int32 (NaN gives 0): mt_round_half_even."""
    x = _f32(x)
    r = np.rint(x.astype(np.float64))  # float32 values are exact in float64
    r = np.where(np.isnan(r), 0.0, r)
    return np.clip(r, I32_MIN, I32_MAX).astype(np.int64)


class Rng:
    """The kernels' xorshift32 state (mt_rng_t) for stochastic rounding."""

    def __init__(self, state: int) -> None:
        self.state = int(state) & 0xFFFFFFFF

    def next(self) -> int:
        s = self.state or 0x9E3779B9
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.state = s
        return s

    def uniform(self, n: int) -> NDArray[np.float32]:
        """n draws of mt_rng_uniform: (state >> 8) * 2^-24, in [0, 1)."""
        out = np.empty(n, dtype=np.float32)
        for i in range(n):
            out[i] = F32(self.next() >> 8) * F32(2.0**-24)
        return out


def _floor_sat(x: NDArray[np.float32]) -> IntArray:
    r = np.floor(x.astype(np.float64))
    r = np.where(np.isnan(r), 0.0, r)
    return np.clip(r, I32_MIN, I32_MAX).astype(np.int64)


def round_stochastic(x: ArrayLike, rng: Rng | None) -> IntArray:
    """floor(x + u) with one draw per element in order (rng None: nearest even)."""
    x = _f32(x)
    if rng is None:
        return round_half_even(x)
    u = rng.uniform(x.size).reshape(x.shape)
    return _floor_sat(x + u)


# ---------------------------------------------------------------------------------------------
# quantize / dequantize


class QParams(NamedTuple):
    scale: float
    zero_point: int


def quantize(
    x: ArrayLike, scale: float, zero_point: int = 0, qmin: int = ACT_MIN, qmax: int = ACT_MAX,
    rng: Rng | None = None,
) -> NDArray[np.int8]:
    """clamp(round(x / scale) + zero_point, qmin, qmax): mt_quantize_s8."""
    v = round_stochastic(_f32(x) / F32(scale), rng)
    v = np.clip(v, -65536, 65536) + int(zero_point)
    return np.clip(v, qmin, qmax).astype(np.int8)


def dequantize(q: ArrayLike, scale: ArrayLike, zero_point: int = 0) -> NDArray[np.float32]:
    """scale * (q - zero_point) in float32; scale may be per channel (broadcast on axis 0)."""
    q = np.asarray(q)
    s = _f32(scale)
    if s.ndim == 1:
        s = s.reshape((-1,) + (1,) * (q.ndim - 1))
    return (s * (q.astype(np.int64) - int(zero_point)).astype(np.float32)).astype(np.float32)


def quantize_weights(w: ArrayLike) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """Per output channel (axis 0), symmetric: (q, scale) with scale = max|w| / 127 (1 for an
    all-zero channel): mt_quantize_weights_s8."""
    w = _f32(w)
    rows = w.reshape(w.shape[0], -1)
    m = np.max(np.abs(rows), axis=1) if rows.shape[1] else np.zeros(w.shape[0], np.float32)
    scale = np.where(m > 0, m / F32(127.0), F32(1.0)).astype(np.float32)
    q = np.stack([quantize(r, s, 0, -SYM_MAX, SYM_MAX) for r, s in zip(rows, scale)])
    return q.reshape(w.shape), scale


def dequantize_weights(q: ArrayLike, scale: ArrayLike) -> NDArray[np.float32]:
    """Float weights from int8 ones and their per-channel scales."""
    return dequantize(q, _f32(scale), 0)


def quantize_bias(b: ArrayLike, x_scale: float, w_scale: ArrayLike) -> IntArray:
    """round(b / (x_scale * w_scale[o])), saturated to +-2^30: mt_quantize_bias_s32."""
    return np.clip(round_half_even(_f32(b) / (F32(x_scale) * _f32(w_scale))), -BIAS_MAX, BIAS_MAX)


def rescale_bias(b: ArrayLike, old_x_scale: float, new_x_scale: float) -> IntArray:
    """mt_rescale_bias_s32: round(b * (old / new)), saturated to +-2^30."""
    ratio = F32(old_x_scale) / F32(new_x_scale)
    return np.clip(round_half_even(np.asarray(b, dtype=np.int64).astype(np.float32) * ratio), -BIAS_MAX, BIAS_MAX)


def _finite(x: Real) -> bool:
    return bool(np.isfinite(x))


def qparams_asymmetric(lo: Real, hi: Real) -> QParams:
    """Asymmetric int8 parameters covering [lo, hi] and 0: mt_qparams_asymmetric."""
    lo, hi = F32(lo), F32(hi)
    if not (_finite(lo) and _finite(hi)):
        raise ValueError(f"range ({lo}, {hi}) is not finite")
    lo, hi = min(lo, F32(0)), max(hi, F32(0))
    if hi == lo:
        return QParams(1.0, 0)
    scale = (hi - lo) / F32(255.0)
    if not scale >= MIN_SCALE or not _finite(scale):
        raise ValueError(f"range ({lo}, {hi}) is too small")
    if hi - lo < MIN_RANGE:
        hi = lo + MIN_RANGE  # a near-constant activation: keep the scale far from 0
        scale = (hi - lo) / F32(255.0)
    zp = int(np.clip(ACT_MIN - int(round_half_even(lo / scale)), ACT_MIN, ACT_MAX))
    return QParams(float(scale), zp)


def qparams_symmetric(absmax: Real) -> QParams:
    """Symmetric parameters for |x| <= absmax: mt_qparams_symmetric."""
    a = F32(absmax)
    if not _finite(a) or a < 0:
        raise ValueError(f"absmax {absmax} is not a finite non-negative number")
    if a == 0:
        return QParams(1.0, 0)
    scale = a / F32(127.0)
    if not scale >= MIN_SCALE:
        raise ValueError(f"absmax {absmax} is too small")
    return QParams(float(scale), 0)


# ---------------------------------------------------------------------------------------------
# fixed-point requantization


def quant_multiplier(real: Real) -> tuple[int, int]:
    """(multiplier, shift) with real == multiplier * 2^(shift - 31) exactly (a float32's
    mantissa shifted into Q31): mt_quant_multiplier. Raises for negative, NaN, inf, >= 2^30."""
    r = F32(real)
    if not _finite(r) or r < 0:
        raise ValueError(f"multiplier {real} must be finite and >= 0")
    if r == 0:
        return 0, 0
    bits = int(np.array(r, dtype=np.float32).view(np.uint32))
    exponent, mantissa = (bits >> 23) & 0xFF, bits & 0x7FFFFF
    if exponent == 0:
        exponent = 1
        while not mantissa & 0x800000:
            mantissa <<= 1
            exponent -= 1
    else:
        mantissa |= 0x800000
    shift = exponent - 126
    if shift > 30:
        raise ValueError(f"multiplier {real} is not below 2^30")
    if shift < -31:
        return 0, 0
    return mantissa << 7, shift


def requantize(acc: ArrayLike, multiplier: int, shift: int) -> IntArray:
    """round(acc * multiplier * 2^(shift - 31)), ties toward +inf: mt_requantize."""
    x = np.asarray(acc, dtype=np.int64)
    if multiplier == 0:
        return np.zeros_like(x)
    right = 31 - shift
    if right < 32:
        left = 32 - right
        x = np.where(x > I32_MAX >> left, I32_MAX,
                     np.where(x < I32_MIN >> left, I32_MIN, x << left))
        right = 32
    t = x * int(multiplier) + (1 << (right - 1))
    return t >> right


def _requantize_real(acc: ArrayLike, real: float) -> IntArray:
    return requantize(acc, *quant_multiplier(real))


# ---------------------------------------------------------------------------------------------
# range tracking and gradient statistics


@dataclass
class RangeTracker:
    """mt_range_tracker_t: EMA of min and max; the first observation is taken as is."""

    momentum: float = 0.9
    min: float = 0.0
    max: float = 0.0
    count: int = 0

    def observe(self, lo: float, hi: float) -> None:
        if self.count <= 0:
            self.min, self.max = float(F32(lo)), float(F32(hi))
        else:
            m, keep = F32(self.momentum), F32(1.0) - F32(self.momentum)
            self.min = float(m * F32(self.min) + keep * F32(lo))
            self.max = float(m * F32(self.max) + keep * F32(hi))
        self.count += 1

    def observe_widening(self, lo: float, hi: float) -> None:
        """mt_range_observe_widening (a layer's outputs): a range wider at either end is taken
        at once, the other end kept; a narrower one goes into the moving average."""
        lo32, hi32 = F32(lo), F32(hi)
        if self.count > 0 and (lo32 < F32(self.min) or hi32 > F32(self.max)):
            self.min = float(min(lo32, F32(self.min)))
            self.max = float(max(hi32, F32(self.max)))
            self.count += 1
        else:
            self.observe(lo, hi)


def ema_observe(value: float | None, count: int, x: float, momentum: float) -> tuple[float, int]:
    """mt_ema_observe: (new value, new count)."""
    if count <= 0 or value is None:
        return float(F32(x)), 1
    m = F32(momentum)
    return float(m * F32(value) + (F32(1.0) - m) * F32(x)), count + 1


@dataclass
class GradStats:
    """mt_grad_stats_t: float32 running sums of accumulators, in order."""

    sum: float = 0.0
    sum_sq: float = 0.0
    count: int = 0

    def add(self, acc: ArrayLike) -> None:
        a = np.asarray(acc, dtype=np.int64).ravel().astype(np.float32)
        if a.size == 0:
            return
        s = np.cumsum(np.concatenate([[F32(self.sum)], a]), dtype=np.float32)[-1]
        ss = np.cumsum(np.concatenate([[F32(self.sum_sq)], a * a]), dtype=np.float32)[-1]
        self.sum, self.sum_sq, self.count = float(s), float(ss), self.count + a.size


def grad_stats_rms(stats: GradStats, unit: float) -> float:
    """mt_grad_stats_rms: unit * sqrt(sum_sq / count)."""
    if stats.count <= 0:
        return 0.0
    return float(F32(unit) * np.sqrt(F32(stats.sum_sq) / F32(stats.count)))


# ---------------------------------------------------------------------------------------------
# layers


@dataclass
class S8Quant:
    """mt_s8_quant_t: a layer's input, output and error quantization, and its fused clamp."""

    x_scale: float
    x_zero_point: int
    y_scale: float = 1.0
    y_zero_point: int = 0
    dy_scale: float = 1.0
    dx_scale: float = 1.0
    act_min: int = ACT_MIN
    act_max: int = ACT_MAX


@dataclass
class S8Update:
    """mt_s8_update_t; rng: a Rng for stochastic rounding (advanced in place) or None."""

    lr: float
    weight_decay: float = 0.0
    sigma_w: float = 0.0
    sigma_b: float = 0.0
    eps: float = 1e-8
    rescale_below: float = 1.0
    rng: Rng | None = field(default=None)


def _fold_range(acc_min: IntArray, acc_max: IntArray, x_scale: float,
                w_scale: NDArray[np.float32]) -> tuple[float, float]:
    unit = F32(x_scale) * w_scale
    lo = acc_min.astype(np.float32) * unit
    hi = acc_max.astype(np.float32) * unit
    return float(lo.min()), float(hi.max())


def _forward_out(acc: IntArray, q: S8Quant, w_scale: NDArray[np.float32]) -> NDArray[np.int8]:
    """y from int64 accumulators (..., O) with per-channel multipliers."""
    out = np.empty(acc.shape, dtype=np.int64)
    for o in range(acc.shape[-1]):
        real = (F32(q.x_scale) * w_scale[o]) / F32(q.y_scale)
        out[..., o] = _requantize_real(acc[..., o], real) + q.y_zero_point
    return np.clip(out, q.act_min, q.act_max).astype(np.int8)


def _wrap32(a: NDArray[np.float64]) -> IntArray:
    """Exact float64 integer sums as int64, wrapped to int32 as the kernels' sums are."""
    i = np.rint(a).astype(np.int64)
    return ((i + 2**31) % 2**32) - 2**31


def _conv_args(stride: IntPair, padding: IntPair) -> tuple[tuple[int, int], tuple[int, int]]:
    return _pair(stride, "stride"), _pair(padding, "padding")


def conv2d_s8_forward(
    x: ArrayLike, w: ArrayLike, w_scale: ArrayLike, bias: ArrayLike | None, q: S8Quant,
    stride: IntPair = 1, padding: IntPair = 0, groups: int = 1,
    out_hw: tuple[int, int] | None = None,
) -> tuple[NDArray[np.int8], tuple[float, float]]:
    """(y_q, (min, max) real pre-activation range) of mt_conv2d_s8_forward. x (N, H, W, C)
    int8, w (O, KH, KW, C/groups) int8, bias int32 or None; out_hw crops the output."""
    xc = np.asarray(x, dtype=np.int64) - q.x_zero_point
    b = None if bias is None else np.asarray(bias, dtype=np.int64)
    sums = conv2d_forward(xc, np.asarray(w, dtype=np.int64), b, stride, padding, groups)
    if out_hw is not None:
        sums = sums[:, : out_hw[0], : out_hw[1]]
    acc = _wrap32(sums)
    ws = _f32(w_scale)
    flat = acc.reshape(-1, acc.shape[-1])
    rng = (0.0, 0.0)
    if flat.size:
        rng = _fold_range(flat.min(axis=0), flat.max(axis=0), q.x_scale, ws)
    return _forward_out(acc, q, ws), rng


def _grad_input_fold(terms: int, w_scale: NDArray[np.float32], dy_scale: float,
                     dx_scale: float) -> tuple[IntArray, int, int, float]:
    """(r, multiplier, shift, unit) as mt_s8_grad_input_fold."""
    smax = F32(w_scale.max()) if w_scale.size else F32(0)
    smax = max(smax, F32(0))
    rb = 8
    while rb > 0 and 127 * 127 * (1 << rb) * terms >= 2**31:
        rb -= 1
    two_rb = F32(1 << rb)
    if smax > 0:
        r = round_half_even(two_rb * (w_scale / smax))
    else:
        r = np.zeros(w_scale.shape, dtype=np.int64)
    unit = float((F32(dy_scale) * smax) * (F32(1.0) / two_rb))
    m, s = quant_multiplier((F32(dy_scale) * smax) / F32(dx_scale) * (F32(1.0) / two_rb))
    return r, m, s, unit


def conv2d_s8_grad_input(
    x_shape: Sequence[int], w: ArrayLike, w_scale: ArrayLike, dy: ArrayLike, q: S8Quant,
    stride: IntPair = 1, padding: IntPair = 0, groups: int = 1,
) -> tuple[NDArray[np.int8], float]:
    """(dx_q, real absmax of dx before saturation) of mt_conv2d_s8_grad_input. dy may be
    cropped (smaller than the full output): it is zero-extended."""
    w = np.asarray(w, dtype=np.int64)
    ws = _f32(w_scale)
    dy = np.asarray(dy, dtype=np.int64)
    n, h, wd, c = (int(s) for s in x_shape)
    out_c, kh, kw, _ = w.shape
    st, pad = _conv_args(stride, padding)
    full = (conv_output_size(h, kh, st[0], pad[0]), conv_output_size(wd, kw, st[1], pad[1]))
    dyf = np.zeros((n, *full, out_c), dtype=np.int64)
    dyf[:, : dy.shape[1], : dy.shape[2]] = dy
    taps = kh * kw
    if groups == c and out_c == c:
        acc = _wrap32(conv2d_grad_input(x_shape, w, dyf, stride, padding, groups))
        dx = np.empty(acc.shape, dtype=np.int64)
        absmax = F32(0)
        for ch in range(c):
            real = (F32(q.dy_scale) * ws[ch]) / F32(q.dx_scale)
            dx[..., ch] = _requantize_real(acc[..., ch], real)
            unit = F32(q.dy_scale) * ws[ch]
            a = acc[..., ch]
            absmax = cast(np.float32, max(absmax, -(F32(a.min()) * unit), F32(a.max()) * unit))
        return np.clip(dx, -SYM_MAX, SYM_MAX).astype(np.int8), float(absmax)
    r, m, s, unit = _grad_input_fold(taps * (out_c // groups), ws, q.dy_scale, q.dx_scale)
    wr = w * r.reshape(-1, 1, 1, 1)
    acc = _wrap32(conv2d_grad_input(x_shape, wr, dyf, stride, padding, groups))
    dx8 = np.clip(requantize(acc, m, s), -SYM_MAX, SYM_MAX).astype(np.int8)
    amin, amax = min(int(acc.min()), 0), max(int(acc.max()), 0)
    magnitude = F32(max(-amin, amax))  # = max(-F32(amin), F32(amax)): rounding is odd and monotonic
    return dx8, float(magnitude * F32(unit))


def _least_max(rescale_below: float) -> int:
    """The smallest integer >= rescale_below * 127, in [0, 127] (the kept scale's floor), or
    128 for rescale_below >= 1 (left to the float rule)."""
    t = F32(rescale_below) * F32(127.0)
    if not t > 0:
        return 0
    if not t < 127:
        return 128
    return int(np.ceil(np.float64(t)))


def _fixed_row(w: NDArray[np.int8], g: IntArray, m: int, rng: Rng | None) -> IntArray:
    """The fixed-point update at a kept scale: w + floor((r - g * m) / 2^32), unclamped, with
    r = 2^31 (nearest) or the next xorshift32 state, all 32 bits, per weight in order."""
    if rng is None:
        r = np.full(g.shape, 2**31, dtype=object)
    else:
        r = np.array([rng.next() for _ in range(g.size)], dtype=object)
    num = r - g.astype(object) * m
    return w.astype(np.int64) + np.array([int(x) >> 32 for x in num], dtype=np.int64)


def _update_rows(
    acc: IntArray, bsum: IntArray, w: NDArray[np.int8], w_scale: NDArray[np.float32],
    bias: IntArray | None, q: S8Quant, u: S8Update | None, channels: Sequence[int],
) -> tuple[NDArray[np.int8], NDArray[np.float32], IntArray | None, GradStats, GradStats]:
    """The update of the selected channels from their accumulators acc (O, K) and bias sums,
    rows in order: skip, fixed point at the kept scale, or the float rule (conv2d_s8.h)."""
    w = w.copy()
    ws = w_scale.copy()
    b = None if bias is None else bias.copy()
    w_stats, b_stats = GradStats(), GradStats()
    if u is not None:
        unit_w = F32(q.dy_scale) * F32(q.x_scale)
        lr, eps = F32(u.lr), F32(u.eps)
        c_w = (lr / (F32(u.sigma_w) + eps)) * unit_w if u.sigma_w > 0 else lr * unit_w
        c_b = ((lr / (F32(u.sigma_b) + eps)) * F32(q.dy_scale) if u.sigma_b > 0
               else lr * F32(q.dy_scale))
        decay = F32(1.0) - lr * F32(u.weight_decay)
    for o in channels:
        a_row = acc[o]
        w_stats.add(a_row)
        b_stats.add([bsum[o]])
        if u is None:
            continue
        s_old = ws[o]
        if decay == F32(1.0) and bsum[o] == 0 and not np.any(a_row):
            continue  # nothing moves: no draws, no rescale
        force = False
        least = _least_max(u.rescale_below)
        if decay == F32(1.0) and least <= SYM_MAX:
            kf = (c_w / s_old) * F32(2.0**32)
            if -(2.0**31) < kf < 2.0**31:
                m = int(round_half_even(kf))
                state0 = u.rng.state if u.rng is not None else 0
                r = _fixed_row(w[o], a_row, m, u.rng)
                if np.all(np.abs(r) <= SYM_MAX) and (least == 0 or np.any(np.abs(r) >= least)):
                    w[o] = r.astype(np.int8)
                    if b is not None:
                        step = (c_b * F32(bsum[o])) / (F32(q.x_scale) * s_old)
                        b[o] = int(np.clip(int(b[o]) - int(round_half_even(step)), -BIAS_MAX, BIAS_MAX))
                    continue
                if u.rng is not None:
                    u.rng.state = state0  # the float rule reuses the row's draws
                force = True
        a = s_old * decay
        v = a * w[o].astype(np.float32) - c_w * a_row.astype(np.float32)
        mx = F32(np.max(np.abs(v))) if v.size else F32(0)
        hi = F32(127.0) * s_old
        s_new = s_old
        if (force or mx > hi or mx < F32(u.rescale_below) * hi) and mx > 0:
            s_new = mx / (RESCALE_TOP if least <= SYM_MAX else F32(127.0))
        inv = F32(1.0) / s_new
        w[o] = np.clip(round_stochastic(v * inv, u.rng), -SYM_MAX, SYM_MAX).astype(np.int8)
        ws[o] = s_new
        if b is not None:
            bv = (F32(q.x_scale) * s_old) * F32(b[o]) - c_b * F32(bsum[o])
            b[o] = int(np.clip(round_half_even(bv / (F32(q.x_scale) * s_new)), -BIAS_MAX, BIAS_MAX))
    return w, ws, b, w_stats, b_stats


class UpdateResult(NamedTuple):
    w: NDArray[np.int8]
    w_scale: NDArray[np.float32]
    bias: IntArray | None
    w_stats: GradStats
    b_stats: GradStats


def conv2d_s8_update(
    x: ArrayLike, dy: ArrayLike, w: ArrayLike, w_scale: ArrayLike, bias: ArrayLike | None,
    q: S8Quant, u: S8Update | None, stride: IntPair = 1, padding: IntPair = 0, groups: int = 1,
    mask: ArrayLike | None = None,
) -> UpdateResult:
    """mt_conv2d_s8_update: new (w, w_scale, bias) and this step's gradient statistics; u
    None computes only the statistics. dy may be cropped (zero-extended)."""
    x = np.asarray(x, dtype=np.int64)
    w8 = np.asarray(w, dtype=np.int8)
    out_c, kh, kw, _ = w8.shape
    st, pad = _conv_args(stride, padding)
    n, h, wd, _ = x.shape
    full = (conv_output_size(h, kh, st[0], pad[0]), conv_output_size(wd, kw, st[1], pad[1]))
    dy = np.asarray(dy, dtype=np.int64)
    dyf = np.zeros((n, *full, out_c), dtype=np.int64)
    dyf[:, : dy.shape[1], : dy.shape[2]] = dy
    dw, db = conv2d_grad_weight(x - q.x_zero_point, w8.shape, dyf, stride, padding, groups)
    acc = _wrap32(dw).reshape(out_c, -1)
    bsum = _wrap32(db)
    channels = [o for o in range(out_c) if mask is None or np.asarray(mask)[o]]
    b = None if bias is None else np.asarray(bias, dtype=np.int64)
    wn, ws, bn, s_w, s_b = _update_rows(acc, bsum, w8.reshape(out_c, -1), _f32(w_scale).copy(),
                                        b, q, u, channels)
    return UpdateResult(wn.reshape(w8.shape), ws, bn, s_w, s_b)


def linear_s8_forward(
    x: ArrayLike, w: ArrayLike, w_scale: ArrayLike, bias: ArrayLike | None, q: S8Quant,
) -> tuple[NDArray[np.int8], tuple[float, float]]:
    """mt_linear_s8_forward: x (B, in), w (out, in)."""
    x = np.asarray(x)
    w = np.asarray(w)
    y, r = conv2d_s8_forward(x[:, None, None, :], w[:, None, None, :], w_scale, bias, q)
    return y[:, 0, 0], r


def linear_s8_grad_input(
    w: ArrayLike, w_scale: ArrayLike, dy: ArrayLike, q: S8Quant,
) -> tuple[NDArray[np.int8], float]:
    """mt_linear_s8_grad_input: dy (B, out) -> dx (B, in)."""
    w = np.asarray(w, dtype=np.int64)
    dy = np.asarray(dy, dtype=np.int64)
    r, m, s, unit = _grad_input_fold(w.shape[0], _f32(w_scale), q.dy_scale, q.dx_scale)
    acc = _wrap32((dy * r).astype(np.float64) @ w.astype(np.float64))
    dx = np.clip(requantize(acc, m, s), -SYM_MAX, SYM_MAX).astype(np.int8)
    amin, amax = min(int(acc.min()), 0), max(int(acc.max()), 0)
    return dx, float(max(-F32(amin), F32(amax)) * F32(unit))


def linear_s8_update(
    x: ArrayLike, dy: ArrayLike, w: ArrayLike, w_scale: ArrayLike, bias: ArrayLike | None,
    q: S8Quant, u: S8Update | None, mask: ArrayLike | None = None,
) -> UpdateResult:
    """mt_linear_s8_update."""
    x = np.asarray(x)
    dy = np.asarray(dy)
    w = np.asarray(w)
    r = conv2d_s8_update(x[:, None, None, :], dy[:, None, None, :], w[:, None, None, :], w_scale,
                         bias, q, u, mask=mask)
    return r._replace(w=r.w[:, 0, 0])


# ---------------------------------------------------------------------------------------------
# parameterless layers (pool_s8.c)


def div_round_half_even(n: ArrayLike, d: int) -> IntArray:
    """round(n / d), ties to even, exactly in integers (d > 0)."""
    n = np.asarray(n, dtype=np.int64)
    q, r = np.divmod(n, d)  # floor division: 0 <= r < d
    up = (2 * r > d) | ((2 * r == d) & (q % 2 == 1))
    return q + up


def avgpool2d_s8_forward(
    x: ArrayLike, zero_point: int, kernel: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
) -> NDArray[np.int8]:
    """mt_avgpool2d_s8_forward: zp + round_half_even(sum of (x - zp) over the window / area),
    padding counting as real zeros (count_include_pad=True); same scale and zero point."""
    x = np.asarray(x, dtype=np.int64) - int(zero_point)
    p = _pool_args("avgpool2d", x.shape, kernel, stride, padding)
    sums = _windows(_pad_hw(x, p.padding, 0), p.kernel, p.stride).sum(axis=(4, 5))
    y = int(zero_point) + div_round_half_even(sums, p.kernel[0] * p.kernel[1])
    return np.clip(y, ACT_MIN, ACT_MAX).astype(np.int8)


def avgpool2d_s8_cover(
    x_shape: Sequence[int], kernel: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
) -> int:
    """mt_avgpool2d_s8_cover: the most windows covering one input pixel."""
    p = _pool_args("avgpool2d", tuple(x_shape), kernel, stride, padding)
    ch = min(-(-p.kernel[0] // p.stride[0]), p.out_h)
    cw = min(-(-p.kernel[1] // p.stride[1]), p.out_w)
    return ch * cw


def avgpool2d_s8_grad_input(
    x_shape: Sequence[int], dy: ArrayLike, dy_scale: float, kernel: IntPair, stride: IntPair | None = None,
    padding: IntPair = 0,
) -> tuple[NDArray[np.int8], float]:
    """mt_avgpool2d_s8_grad_input and the binding's scale: (dx, dx_scale) with dx the sum of the
    covering windows' dy divided by cover (rounded half to even) and dx_scale = dy_scale * cover
    / area in float32."""
    dy = np.asarray(dy, dtype=np.int64)
    shape = tuple(int(s) for s in x_shape)
    p = _pool_args("avgpool2d", shape, kernel, stride, padding, dy)
    (kh, kw), (sh, sw), (ph, pw) = p.kernel, p.stride, p.padding
    n, h, w, c = shape
    dxp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            dxp[:, _tap(i, sh, p.out_h), _tap(j, sw, p.out_w), :] += dy
    sums = dxp[:, ph : ph + h, pw : pw + w, :]
    cover = avgpool2d_s8_cover(shape, kernel, stride, padding)
    dx = div_round_half_even(sums, cover).astype(np.int8)
    scale = F32(dy_scale) * F32(cover) / F32(kh * kw)
    return dx, float(scale)


# ---------------------------------------------------------------------------------------------
# the sum of two differently quantized tensors (add_s8.c)

ADD_MAX_SPREAD = 22


class AddS8(NamedTuple):
    """mt_add_s8_t."""

    m_a: int
    m_b: int
    sh_a: int
    sh_b: int
    right: int
    unit: float


def add_s8_make(a_scale: float, b_scale: float, y_scale: float) -> AddS8:
    """mt_add_s8_make: M_a = s_a / s_y and M_b = s_b / s_y (float32) as Q31 multipliers brought
    to a common exponent (at most 22 apart)."""
    ma, sa = quant_multiplier(F32(a_scale) / F32(y_scale))
    mb, sb = quant_multiplier(F32(b_scale) / F32(y_scale))
    shifts = [s for m, s in ((ma, sa), (mb, sb)) if m]
    hi, lo = (max(shifts), min(shifts)) if shifts else (30, 30)
    e = max(lo, hi - ADD_MAX_SPREAD)
    right = 31 - e
    unit = F32(y_scale) * F32(2.0**-right)
    return AddS8(ma, mb, sa - e if ma else 0, sb - e if mb else 0, right, float(unit))


def _add_term(q: IntArray, m: int, sh: int) -> IntArray:
    p = q * int(m)
    if sh >= 0:
        return p << sh
    r = min(-sh, 62)
    return (p + (1 << (r - 1))) >> r


def add_s8(
    k: AddS8, a: ArrayLike, zp_a: int, b: ArrayLike, zp_b: int, zp_y: int = 0, qmin: int = ACT_MIN,
    qmax: int = ACT_MAX,
) -> tuple[NDArray[np.int8], tuple[float, float]]:
    """mt_add_s8: (y, (min, max)) with y = clamp(zp_y + round(sum * 2^-right)) (ties up), the sum
    of both terms at the common exponent, and the real range of the sums."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    total = _add_term(a - int(zp_a), k.m_a, k.sh_a) + _add_term(b - int(zp_b), k.m_b, k.sh_b)
    r = (total + (1 << (k.right - 1))) >> k.right
    y = np.clip(np.clip(r, -512, 512) + int(zp_y), qmin, qmax).astype(np.int8)
    if total.size == 0:
        return y, (0.0, 0.0)
    ends = np.array([total.min(), total.max()], dtype=np.int64).astype(np.float32) * F32(k.unit)
    return y, (float(ends[0]), float(ends[1]))


# ---------------------------------------------------------------------------------------------
# softmax (softmax_s8.c): output scale 1/256, zero point -128

SOFTMAX_SCALE, SOFTMAX_ZERO_POINT = 1.0 / 256.0, -128


def softmax_s8_forward(x: ArrayLike, x_scale: float) -> NDArray[np.int8]:
    """round_half_even(256 softmax(s_x x)) - 128 over the last axis, in float64: the exactly
    rounded result. The device computes it in float32 with its C library's expf, so it may be
    one unit off where 256 p lies within about 1e-4 of a rounding tie (softmax_s8.h)."""
    z = np.asarray(x, dtype=np.float64) * float(F32(x_scale))
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    return np.clip(np.rint(256.0 * p) + SOFTMAX_ZERO_POINT, ACT_MIN, ACT_MAX).astype(np.int8)


def softmax_s8_grad_input(y: ArrayLike, dy: ArrayLike, dy_scale: float) -> tuple[NDArray[np.int8], float]:
    """The device's int8 softmax input gradient from its own output y, with a first observation
    of the error's range: (dx, dx_scale) (mt_softmax_s8_grad_input and the binding)."""
    u = np.asarray(y, dtype=np.int64) - SOFTMAX_ZERO_POINT
    d = np.asarray(dy, dtype=np.int64)
    acc = u * (256 * d - (u * d).sum(axis=-1, keepdims=True))
    unit = F32(dy_scale) * F32(1.0 / 65536.0)
    absmax = F32(np.abs(acc).max() if acc.size else 0) * unit
    qp = qparams_symmetric(float(absmax))
    m, shift = quant_multiplier(unit / F32(qp.scale))
    dx = np.clip(requantize(acc, m, shift), -SYM_MAX, SYM_MAX).astype(np.int8)
    return dx, qp.scale


# ---------------------------------------------------------------------------------------------
# batch normalization (batchnorm_s8.c): float32 per channel, the kernels' operations in order


class BatchNormS8Stats(NamedTuple):
    mean_q: NDArray[np.float32]       # the mean in units of s_x (offsets from the zero point)
    inv_std: NDArray[np.float32]
    running_mean: NDArray[np.float32]
    running_var: NDArray[np.float32]
    y_range: tuple[float, float]


def _rows(x: ArrayLike, zero_point: int) -> IntArray:
    x = np.asarray(x, dtype=np.int64)
    return x.reshape(-1, x.shape[-1]) - int(zero_point)


def batchnorm_s8_prepare(
    x: ArrayLike, x_scale: float, zero_point: int, gamma: ArrayLike, beta: ArrayLike, training: bool,
    running_mean: ArrayLike, running_var: ArrayLike, eps: float = 1e-5, momentum: float = 0.1,
) -> BatchNormS8Stats:
    """mt_batchnorm_s8_prepare: statistics (and updated running ones) and the output range."""
    v = _rows(x, zero_point)
    rows = v.shape[0]
    xs, n, m, one = F32(x_scale), F32(rows), F32(momentum), F32(1.0)
    gamma, beta = _f32(gamma), _f32(beta)
    rm, rv = _f32(running_mean).copy(), _f32(running_var).copy()
    if training:
        s1, s2 = v.sum(axis=0), (v * v).sum(axis=0)
        mean_q = s1.astype(np.float32) / n
        var = ((rows * s2 - s1 * s1).astype(np.float32) / (n * n)) * (xs * xs)
        rm = (one - m) * rm + m * (mean_q * xs)
        if rows > 1:
            rv = (one - m) * rv + m * (var * (n / F32(rows - 1)))
        inv_std = one / np.sqrt(var + F32(eps))
    else:
        mean_q = rm / xs
        inv_std = one / np.sqrt(rv + F32(eps))
    a = (gamma * inv_std) * xs
    lo = a * (v.min(axis=0).astype(np.float32) - mean_q) + beta
    hi = a * (v.max(axis=0).astype(np.float32) - mean_q) + beta
    y_range = (float(np.minimum(lo, hi).min()), float(np.maximum(lo, hi).max()))
    return BatchNormS8Stats(mean_q.astype(np.float32), inv_std.astype(np.float32), rm, rv, y_range)


def batchnorm_s8_forward(
    x: ArrayLike, x_scale: float, zero_point: int, gamma: ArrayLike, beta: ArrayLike, st: BatchNormS8Stats,
    y_scale: float, y_zero_point: int,
) -> NDArray[np.int8]:
    """mt_batchnorm_s8_forward."""
    shape = np.shape(x)
    v = _rows(x, zero_point).astype(np.float32)
    ka = ((_f32(gamma) * st.inv_std) * F32(x_scale)) / F32(y_scale)
    kb = _f32(beta) / F32(y_scale)
    t = np.clip(ka * (v - st.mean_q) + kb, F32(-65536), F32(65536))  # as the kernel saturates
    y = np.clip(round_half_even(t) + int(y_zero_point), ACT_MIN, ACT_MAX)
    return y.astype(np.int8).reshape(shape)


def batchnorm_s8_backward(
    x: ArrayLike, x_scale: float, zero_point: int, dy: ArrayLike, dy_scale: float, gamma: ArrayLike,
    st: BatchNormS8Stats, dx_scale: float | None,
) -> tuple[NDArray[np.int8] | None, float, NDArray[np.float32], NDArray[np.float32]]:
    """mt_batchnorm_s8_backward: (dx or None if dx_scale is None, the largest real |dx|, dgamma,
    dbeta)."""
    shape = np.shape(x)
    v = _rows(x, zero_point)
    d = np.asarray(dy, dtype=np.int64).reshape(v.shape)
    n, dys = F32(v.shape[0]), F32(dy_scale)
    sd, sdv = d.sum(axis=0), (d * v).sum(axis=0)
    k = F32(x_scale) * st.inv_std
    g = k * (sdv.astype(np.float32) - st.mean_q * sd.astype(np.float32))
    mg, mdy = g / n, sd.astype(np.float32) / n
    pk = (_f32(gamma) * st.inv_std) * dys
    dgamma, dbeta = dys * g, dys * sd.astype(np.float32)
    inner = (d.astype(np.float32) - mdy) - (k * (v.astype(np.float32) - st.mean_q)) * mg
    absmax = float((np.abs(pk) * np.abs(inner).max(axis=0)).max()) if inner.size else 0.0
    dx = None
    if dx_scale is not None:
        dx = np.clip(round_half_even((pk / F32(dx_scale)) * inner), -SYM_MAX, SYM_MAX).astype(np.int8).reshape(shape)
    return dx, absmax, dgamma.astype(np.float32), dbeta.astype(np.float32)
