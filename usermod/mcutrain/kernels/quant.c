// Scale / zero-point maths for the int8 kernels; the scheme is documented in quant.h.
#include <math.h>
#include <stdbool.h>
#include <string.h>
#include "quant.h"
#include "s8_common.h"

// The reference reproduces these float expressions operation by operation, so no
// multiply-add may be fused into an FMA (the M4F and RV32 "F" have one; numpy has not).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

// 1.5 * 2^23: adding and subtracting it rounds a float below 2^22 in magnitude to an
// integer in the current rounding mode (nearest even), with no libm call.
#define ROUND_MAGIC 12582912.0f

static int32_t saturate_to_int32(float x) {
    // Every float in [-2^31, 2^31) converts exactly; larger ones saturate.
    if (x >= 2147483648.0f) {
        return INT32_MAX;
    }
    if (x < -2147483648.0f) {
        return INT32_MIN;
    }
    if (x != x) {
        return 0;
    }
    return (int32_t)x;
}

int32_t mt_round_half_even(float x) {
    if (x > -4194304.0f && x < 4194304.0f) {
        return (int32_t)((x + ROUND_MAGIC) - ROUND_MAGIC);
    }
    // From 2^22 up every float is an integer or a half (only below 2^23): round halves.
    if (x > -8388608.0f && x < 8388608.0f) {
        int32_t t = (int32_t)x;    // truncated toward zero
        float frac = x - (float)t;
        if (frac == 0.5f) {
            return t + (t & 1);
        }
        if (frac == -0.5f) {
            return t - (t & 1);
        }
        return t;
    }
    return saturate_to_int32(x);
}

uint32_t mt_rng_next(mt_rng_t *rng) {
    uint32_t s = rng->state ? rng->state : 0x9e3779b9u;
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    rng->state = s;
    return s;
}

float mt_rng_uniform(mt_rng_t *rng) {
    return (float)(mt_rng_next(rng) >> 8) * (1.0f / 16777216.0f);
}

static int32_t floor_to_int32(float x) {
    if (x >= 2147483648.0f || x < -2147483648.0f || x != x) {
        return saturate_to_int32(x);
    }
    int32_t t = (int32_t)x;
    return (float)t > x ? t - 1 : t;
}

int32_t mt_round_stochastic(float x, mt_rng_t *rng) {
    if (!rng) {
        return mt_round_half_even(x);
    }
    return floor_to_int32(x + mt_rng_uniform(rng));
}

static int32_t clamp_int(int32_t v, int32_t lo, int32_t hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

void mt_quantize_s8(const float *x, int8_t *q, size_t n, mt_qparams_t qp, int qmin, int qmax,
    mt_rng_t *rng) {
    for (size_t i = 0; i < n; i++) {
        int32_t v = mt_round_stochastic(x[i] / qp.scale, rng);
        // v + zero_point cannot overflow once v is clamped to a range wider than int8.
        v = clamp_int(v, -65536, 65536) + qp.zero_point;
        q[i] = (int8_t)clamp_int(v, qmin, qmax);
    }
}

void mt_dequantize_s8(const int8_t *q, float *x, size_t n, mt_qparams_t qp) {
    for (size_t i = 0; i < n; i++) {
        x[i] = qp.scale * (float)((int32_t)q[i] - qp.zero_point);
    }
}

void mt_quantize_weights_s8(const float *w, int8_t *q, float *scale, int channels, int row_len) {
    for (int o = 0; o < channels; o++, w += row_len, q += row_len) {
        float m = 0.0f;
        for (int k = 0; k < row_len; k++) {
            float a = w[k] < 0.0f ? -w[k] : w[k];
            m = a > m ? a : m;
        }
        const float s = m > 0.0f ? m / 127.0f : 1.0f;
        scale[o] = s;
        const mt_qparams_t qp = { s, 0 };
        mt_quantize_s8(w, q, (size_t)row_len, qp, -MT_S8_SYM_MAX, MT_S8_SYM_MAX, NULL);
    }
}

int32_t mt_bias_clamp_s32(int32_t b) {
    return clamp_int(b, -MT_S8_BIAS_MAX, MT_S8_BIAS_MAX);
}

void mt_quantize_bias_s32(const float *b, int32_t *q, int channels, float x_scale,
    const float *w_scale) {
    for (int o = 0; o < channels; o++) {
        q[o] = mt_bias_clamp_s32(mt_round_half_even(b[o] / (x_scale * w_scale[o])));
    }
}

void mt_rescale_bias_s32(int32_t *b, int channels, float old_x_scale, float new_x_scale) {
    const float ratio = old_x_scale / new_x_scale;
    for (int o = 0; o < channels; o++) {
        b[o] = mt_bias_clamp_s32(mt_round_half_even((float)b[o] * ratio));
    }
}

float mt_bias_min_x_scale(const float *b, int channels, const float *w_scale) {
    float least = 0.0f;
    for (int o = 0; o < channels; o++) {
        const float a = b[o] < 0.0f ? -b[o] : b[o];
        const float s = (a / w_scale[o]) * (1.0f / (float)MT_S8_BIAS_MAX);
        if (s > least && s - s == 0.0f) {   // NaN and inf (a zero weight scale) are skipped
            least = s;
        }
    }
    return least;
}

static int is_finite(float x) {
    return x - x == 0.0f;   // false for NaN and infinities
}

void mt_qparams_raise_scale(mt_qparams_t *qp, float min, float least) {
    if (!(qp->scale < least) || !is_finite(least)) {
        return;
    }
    min = min < 0.0f ? min : 0.0f;
    qp->scale = least;
    qp->zero_point = clamp_int(MT_S8_ACT_MIN - mt_round_half_even(min / least), MT_S8_ACT_MIN,
        MT_S8_ACT_MAX);
}

int mt_qparams_check(mt_qparams_t qp) {
    if (!is_finite(qp.scale) || !(qp.scale >= MT_QUANT_MIN_SCALE)) {
        return -1;
    }
    return qp.zero_point < MT_S8_ACT_MIN || qp.zero_point > MT_S8_ACT_MAX ? -1 : 0;
}

int mt_qparams_asymmetric(float min, float max, mt_qparams_t *out) {
    if (!is_finite(min) || !is_finite(max)) {
        return -1;
    }
    min = min < 0.0f ? min : 0.0f;
    max = max > 0.0f ? max : 0.0f;
    if (max == min) {
        out->scale = 1.0f;
        out->zero_point = 0;
        return 0;
    }
    float scale = (max - min) / 255.0f;
    if (!(scale >= MT_QUANT_MIN_SCALE) || !is_finite(scale)) {
        return -1;
    }
    if (max - min < MT_QUANT_MIN_RANGE) {
        // A near-constant activation: keep the scale far from 0 (quant.h).
        max = min + MT_QUANT_MIN_RANGE;
        scale = (max - min) / 255.0f;
    }
    // min <= 0, so -min / scale is in [0, 255] up to rounding.
    out->scale = scale;
    out->zero_point = clamp_int(MT_S8_ACT_MIN - mt_round_half_even(min / scale), MT_S8_ACT_MIN,
        MT_S8_ACT_MAX);
    return 0;
}

int mt_qparams_symmetric(float absmax, mt_qparams_t *out) {
    if (!is_finite(absmax) || absmax < 0.0f) {
        return -1;
    }
    if (absmax == 0.0f) {
        out->scale = 1.0f;
        out->zero_point = 0;
        return 0;
    }
    const float scale = absmax / 127.0f;
    if (!(scale >= MT_QUANT_MIN_SCALE)) {
        return -1;
    }
    out->scale = scale;
    out->zero_point = 0;
    return 0;
}

int mt_quant_multiplier(float real, mt_requant_t *out) {
    out->multiplier = 0;
    out->shift = 0;
    if (!is_finite(real) || real < 0.0f) {
        return -1;
    }
    if (real == 0.0f) {
        return 0;
    }
    uint32_t bits;
    memcpy(&bits, &real, sizeof bits);
    int32_t exponent = (int32_t)(bits >> 23) & 0xff;
    uint32_t mantissa = bits & 0x7fffffu;
    if (exponent == 0) {
        // Subnormal: normalize (the value is far below 2^-62 anyway).
        exponent = 1;
        while (!(mantissa & 0x800000u)) {
            mantissa <<= 1;
            exponent--;
        }
    } else {
        mantissa |= 0x800000u;
    }
    // real = mantissa * 2^(exponent - 150) = (mantissa * 2^7 / 2^31) * 2^(exponent - 126).
    const int32_t shift = exponent - 126;
    if (shift > 30) {
        return -1;
    }
    if (shift < -31) {
        // 31 - shift > 62: every product rounds to 0.
        return 0;
    }
    out->multiplier = (int32_t)(mantissa << 7);
    out->shift = shift;
    return 0;
}

int32_t mt_requantize(int32_t acc, mt_requant_t m) {
    if (m.multiplier == 0) {
        return 0;
    }
    int32_t x = acc, right = 31 - m.shift;      // total right shift of the 64-bit product
    if (right < 32) {
        // M >= 0.5: scale acc up first (saturating), so that the product is shifted by 32.
        const int left = 32 - right;
        if (x > (INT32_MAX >> left)) {
            x = INT32_MAX;
        } else if (x < (INT32_MIN >> left)) {
            x = INT32_MIN;
        } else {
            x = (int32_t)((uint32_t)x << left);
        }
        right = 32;
    }
    // |x * multiplier| < 2^62, so adding 2^(right - 1) <= 2^61 cannot overflow.
    const int64_t t = (int64_t)x * m.multiplier + ((int64_t)1 << (right - 1));
    return (int32_t)(t >> right);
}

void mt_range_observe(mt_range_tracker_t *t, float lo, float hi, float momentum) {
    if (!isfinite(lo) || !isfinite(hi)) {
        return;  // one bad batch must not pin the range at (inf, inf) for good
    }
    if (t->count <= 0) {
        t->min = lo;
        t->max = hi;
        t->count = 1;
        return;
    }
    const float keep = 1.0f - momentum;
    t->min = momentum * t->min + keep * lo;
    t->max = momentum * t->max + keep * hi;
    if (t->count < INT32_MAX) {
        t->count++;
    }
}

void mt_range_observe_widening(mt_range_tracker_t *t, float lo, float hi, float momentum) {
    if (!isfinite(lo) || !isfinite(hi)) {
        return;
    }
    if (t->count > 0 && (lo < t->min || hi > t->max)) {
        // A wider range is taken at once: a range that lagged behind growing values would
        // clamp them, the loss would not see the growth the gradient keeps pushing, and the
        // weights could run away (bench/int8_stability.py).
        t->min = lo < t->min ? lo : t->min;
        t->max = hi > t->max ? hi : t->max;
        if (t->count < INT32_MAX) {
            t->count++;
        }
        return;
    }
    mt_range_observe(t, lo, hi, momentum);
}

void mt_ema_observe(mt_ema_t *e, float value, float momentum) {
    if (!isfinite(value)) {
        return;
    }
    if (e->count <= 0) {
        e->value = value;
        e->count = 1;
        return;
    }
    e->value = momentum * e->value + (1.0f - momentum) * value;
    if (e->count < INT32_MAX) {
        e->count++;
    }
}

float mt_grad_stats_rms(const mt_grad_stats_t *s, float unit) {
    if (s->count <= 0) {
        return 0.0f;
    }
    return unit * sqrtf(s->sum_sq / (float)s->count);
}

// ---- the update of one output channel ------------------------------------------------------

mt_s8_step_t mt_s8_step_make(const mt_s8_update_t *u, const mt_s8_quant_t *q) {
    mt_s8_step_t k;
    const float unit_w = q->dy_scale * q->x.scale;
    k.c_w = u->sigma_w > 0.0f ? (u->lr / (u->sigma_w + u->eps)) * unit_w : u->lr * unit_w;
    k.c_b = u->sigma_b > 0.0f ? (u->lr / (u->sigma_b + u->eps)) * q->dy_scale
        : u->lr * q->dy_scale;
    k.decay = 1.0f - u->lr * u->weight_decay;
    k.x_scale = q->x.scale;
    return k;
}

void mt_grad_stats_add(mt_grad_stats_t *s, const int32_t *acc, int n) {
    float sum = s->sum, sum_sq = s->sum_sq;
    for (int i = 0; i < n; i++) {
        const float a = (float)acc[i];
        sum += a;
        sum_sq += a * a;
    }
    s->sum = sum;
    s->sum_sq = sum_sq;
    s->count += n;
}

// mt_round_half_even. On single-precision FPUs VCVTR rounds in the FPSCR's mode, nearest even
// out of reset (MicroPython never changes it), and saturates like it: one instruction.
static inline int32_t round_sat(float x) {
#if defined(__ARM_FP) && (__ARM_FP & 4) && defined(__thumb2__) && !defined(MCUTRAIN_PORTABLE_KERNELS)
    float t;
    int32_t r;
    __asm__ ("vcvtr.s32.f32 %0, %1" : "=t" (t) : "t" (x));
    memcpy(&r, &t, sizeof r);
    return r;
#else
    return mt_round_half_even(x);
#endif
}

// mt_rng_uniform's value of the state s: (s >> 8) * 2^-24, exact (24 bits), as one VCVT to
// float with 24 fraction bits on single-precision FPUs.
static inline float uniform24(uint32_t s) {
#if defined(__ARM_FP) && (__ARM_FP & 4) && defined(__thumb2__) && !defined(MCUTRAIN_PORTABLE_KERNELS)
    const uint32_t q = s >> 8;
    float f;
    memcpy(&f, &q, sizeof f);
    __asm__ ("vcvt.f32.u32 %0, %0, #24" : "+t" (f));
    return f;
#else
    return (float)(s >> 8) * (1.0f / 16777216.0f);
#endif
}

// The next xorshift32 state (mt_rng_next with the state in a register).
static inline uint32_t xorshift32(uint32_t s) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    return s;
}

// floor((r + g * nm) / 2^32) with nm = -m: the fixed-point step (r = 2^31 rounds to
// nearest), as the high word of g * nm plus the carry out of its low word + r (MUL, MULH
// and three more on RV32).
static inline int32_t fixed_step(int32_t g, int32_t nm, uint32_t r) {
    const int64_t p = (int64_t)g * nm;
    const uint32_t lo = (uint32_t)p;
    return (int32_t)(p >> 32) + (int32_t)(lo + r < lo);
}

#if !MT_S8_DSP
// The portable fixed-point step of one weight: w += step, keeping the low byte; returns
// whether the sum stayed within [-127, 127].
static inline uint32_t fixed_add(int8_t *w, int32_t step) {
    const int32_t r = *w + step;
    *w = (int8_t)r;
    return (uint32_t)(r + MT_S8_SYM_MAX) <= 2u * MT_S8_SYM_MAX;
}

// fixed_step with r = 2^31: floor((2^31 + p) / 2^32) = high word + top bit of the low word.
static inline int32_t nearest_step(int32_t g, int32_t nm) {
    const int64_t p = (int64_t)g * nm;
    return (int32_t)(p >> 32) + (int32_t)((uint32_t)p >> 31);
}
#endif

// w[i] += fixed_step(acc[i], m, r_i) in place, r_i = 2^31 (nearest) or the next 32 bits of
// *state (stochastic, state != NULL); w[i] keeps the low byte of the sum, so that the pass
// can be undone exactly. Returns nonzero if a sum left [-127, 127].
__attribute__((noinline)) static int fixed_pass(int n, const int32_t *acc, int8_t *w, int32_t m, uint32_t *state) {
#if MT_S8_DSP
    // Per weight: SMMLSR (nearest) or three EORs, MOV and SMLAL (stochastic), then the range
    // check as two QADDs, which saturate, setting the sticky Q flag, exactly when r > 127
    // (r + 2^31 - 128 overflows) or r < -127 (r - 2^31 + 127 does), for any int32 r.
    const int32_t above = INT32_MAX - MT_S8_SYM_MAX, below = INT32_MIN + MT_S8_SYM_MAX;
    uint32_t apsr = 0;
    __asm__ volatile ("msr APSR_nzcvq, %0" : : "r" (apsr) : "cc");
    if (state) {
        uint32_t s = *state;
        const int32_t negm = -m;
        const int32_t *a = acc;
        int8_t *p = w, *end4 = w + (n & ~3);
        for (; p != end4; a += 4, p += 4) {
            #pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                s = xorshift32(s);
                uint32_t lo = s;
                int32_t hi = p[j], t;
                __asm__ ("smlal %0, %1, %2, %3" : "+r" (lo), "+r" (hi) : "r" (a[j]), "r" (negm));
                p[j] = (int8_t)hi;
                __asm__ volatile ("qadd %0, %1, %2" : "=r" (t) : "r" (hi), "r" (above));
                __asm__ volatile ("qadd %0, %1, %2" : "=r" (t) : "r" (hi), "r" (below));
            }
        }
        for (int i = n & ~3; i < n; i++) {
            s = xorshift32(s);
            uint32_t lo = s;
            int32_t hi = w[i], t;
            __asm__ ("smlal %0, %1, %2, %3" : "+r" (lo), "+r" (hi) : "r" (acc[i]), "r" (negm));
            w[i] = (int8_t)hi;
            __asm__ volatile ("qadd %0, %1, %2" : "=r" (t) : "r" (hi), "r" (above));
            __asm__ volatile ("qadd %0, %1, %2" : "=r" (t) : "r" (hi), "r" (below));
        }
        *state = s;
    } else {
        // Four weights a round at fixed offsets: two pointer adds, a compare and a branch
        // per four (7 instructions a weight; 11 stochastic).
        const int32_t *a = acc;
        int8_t *p = w, *end4 = w + (n & ~3);
        for (; p != end4; a += 4, p += 4) {
            #pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                int32_t r, t;
                __asm__ ("smmlsr %0, %1, %2, %3" : "=r" (r) : "r" (a[j]), "r" (m), "r" ((int32_t)p[j]));
                p[j] = (int8_t)r;
                __asm__ volatile ("qadd %0, %1, %2" : "=r" (t) : "r" (r), "r" (above));
                __asm__ volatile ("qadd %0, %1, %2" : "=r" (t) : "r" (r), "r" (below));
            }
        }
        for (int i = n & ~3; i < n; i++) {
            int32_t r, t;
            __asm__ ("smmlsr %0, %1, %2, %3" : "=r" (r) : "r" (acc[i]), "r" (m), "r" ((int32_t)w[i]));
            w[i] = (int8_t)r;
            __asm__ volatile ("qadd %0, %1, %2" : "=r" (t) : "r" (r), "r" (above));
            __asm__ volatile ("qadd %0, %1, %2" : "=r" (t) : "r" (r), "r" (below));
        }
    }
    __asm__ volatile ("mrs %0, APSR" : "=r" (apsr));
    return (int)(apsr & (1u << 27));
#else
    uint32_t good = 1;
    const int32_t nm = -m;
    if (state) {
        uint32_t s = *state;
        for (int i = 0; i < n; i++) {
            s = xorshift32(s);
            good &= fixed_add(&w[i], fixed_step(acc[i], nm, s));
        }
        *state = s;
    } else {
        for (int i = 0; i < n; i++) {
            good &= fixed_add(&w[i], nearest_step(acc[i], nm));
        }
    }
    return !good;
#endif
}

// fixed_pass for a row of rank 1: the accumulators are d * xz[i] and m here is d * m, the
// same 64-bit products (linear_s8.c at batch 1). With |xz| <= 255 a sum r is within
// [-256, 256], so on the Cortex-M4 one SMLABB checks its range: r * r + (2^31 - 1 - 127^2)
// overflows, setting the sticky Q flag, exactly when |r| > 127.
__attribute__((noinline)) static int fixed_pass_rank1(int n, const int16_t *xz, int8_t *w,
    int32_t m, uint32_t *state) {
#if MT_S8_DSP
    const int32_t sq = INT32_MAX - MT_S8_SYM_MAX * MT_S8_SYM_MAX;
    uint32_t apsr = 0;
    __asm__ volatile ("msr APSR_nzcvq, %0" : : "r" (apsr) : "cc");
    int8_t *p = w;
    if (state) {
        uint32_t s = *state, t;
        int32_t g, h;
        const int32_t negm = -m;
        // Four weights a round, 35 instructions: the next state's first EOR reads a state
        // before SMLAL consumes it as the low word, so only the round's last state is copied.
        // p points at the round's last weight (one post-increment moves it on).
        int8_t *q = w + 3, *end4 = w + (n & ~3) + 3;
        for (; q != end4; ) {
            __asm__ volatile (
                "eor %[s], %[s], %[s], lsl #13\n\t"
                "eor %[s], %[s], %[s], lsr #17\n\t"
                "eor %[s], %[s], %[s], lsl #5\n\t"
                "ldrsh %[g], [%[x]], #2\n\t"
                "ldrsb %[h], [%[q], #-3]\n\t"
                "eor %[t], %[s], %[s], lsl #13\n\t"
                "smlal %[s], %[h], %[g], %[nm]\n\t"
                "strb %[h], [%[q], #-3]\n\t"
                "smlabb %[g], %[h], %[h], %[sq]\n\t"
                "eor %[t], %[t], %[t], lsr #17\n\t"
                "eor %[s], %[t], %[t], lsl #5\n\t"
                "ldrsh %[g], [%[x]], #2\n\t"
                "ldrsb %[h], [%[q], #-2]\n\t"
                "eor %[t], %[s], %[s], lsl #13\n\t"
                "smlal %[s], %[h], %[g], %[nm]\n\t"
                "strb %[h], [%[q], #-2]\n\t"
                "smlabb %[g], %[h], %[h], %[sq]\n\t"
                "eor %[t], %[t], %[t], lsr #17\n\t"
                "eor %[s], %[t], %[t], lsl #5\n\t"
                "ldrsh %[g], [%[x]], #2\n\t"
                "ldrsb %[h], [%[q], #-1]\n\t"
                "eor %[t], %[s], %[s], lsl #13\n\t"
                "smlal %[s], %[h], %[g], %[nm]\n\t"
                "strb %[h], [%[q], #-1]\n\t"
                "smlabb %[g], %[h], %[h], %[sq]\n\t"
                "eor %[t], %[t], %[t], lsr #17\n\t"
                "eor %[s], %[t], %[t], lsl #5\n\t"
                "ldrsh %[g], [%[x]], #2\n\t"
                "ldrsb %[h], [%[q]]\n\t"
                "mov %[t], %[s]\n\t"
                "smlal %[t], %[h], %[g], %[nm]\n\t"
                "strb %[h], [%[q]], #4\n\t"
                "smlabb %[g], %[h], %[h], %[sq]\n\t"
                : [s] "+r" (s), [t] "=&r" (t), [g] "=&r" (g), [h] "=&r" (h), [x] "+r" (xz),
                  [q] "+r" (q)
                : [nm] "r" (negm), [sq] "r" (sq)
                : "memory");
        }
        p = q - 3;
        for (int i = 0; i < (n & 3); i++) {
            s = xorshift32(s);
            uint32_t lo = s;
            int32_t hi = p[i];
            __asm__ ("smlal %0, %1, %2, %3" : "+r" (lo), "+r" (hi) : "r" ((int32_t)xz[i]), "r" (negm));
            p[i] = (int8_t)hi;
            __asm__ volatile ("smlabb %0, %1, %1, %2" : "=r" (g) : "r" (hi), "r" (sq));
        }
        *state = s;
    } else {
        // Per weight LDRSH, LDRSB, SMMLSR, STRB and SMLABB.
        int8_t *end4 = w + (n & ~3);
        for (; p != end4; p += 4, xz += 4) {
            #pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                int32_t r, t;
                __asm__ ("smmlsr %0, %1, %2, %3" : "=r" (r) : "r" ((int32_t)xz[j]), "r" (m), "r" ((int32_t)p[j]));
                p[j] = (int8_t)r;
                __asm__ volatile ("smlabb %0, %1, %1, %2" : "=r" (t) : "r" (r), "r" (sq));
            }
        }
        for (int i = 0; i < (n & 3); i++) {
            int32_t r, t;
            __asm__ ("smmlsr %0, %1, %2, %3" : "=r" (r) : "r" ((int32_t)xz[i]), "r" (m), "r" ((int32_t)p[i]));
            p[i] = (int8_t)r;
            __asm__ volatile ("smlabb %0, %1, %1, %2" : "=r" (t) : "r" (r), "r" (sq));
        }
    }
    __asm__ volatile ("mrs %0, APSR" : "=r" (apsr));
    return (int)(apsr & (1u << 27));
#else
    uint32_t good = 1;
    const int32_t nm = -m;
    if (state) {
        uint32_t s = *state;
        for (int i = 0; i < n; i++) {
            s = xorshift32(s);
            good &= fixed_add(&w[i], fixed_step(xz[i], nm, s));
        }
        *state = s;
    } else {
        for (int i = 0; i < n; i++) {
            good &= fixed_add(&w[i], nearest_step(xz[i], nm));
        }
    }
    return !good;
#endif
}

// A fixed-point pass to take back (fixed_pass's -m and starting rng state, NULL: nearest).
typedef struct {
    int32_t nm;
    const uint32_t *state;
} fixed_undo_t;

// The float rule (conv2d_s8.h), for rows the fixed-point pass does not cover: weight decay,
// a step of half a quantum or more per accumulator unit, or a kept scale that does not hold
// the new weights (undo not NULL: w holds that pass's bytes, which the first loop takes
// back; the scale then always becomes max |v| / top). The first loop leaves each v (a
// float) in place of its accumulator, the second requantizes it.
static void update_row_float(const mt_s8_update_t *u, const mt_s8_step_t *k, int n,
    int32_t *acc, int8_t *w, float *w_scale, int32_t *bias, int32_t bias_acc,
    const fixed_undo_t *undo, float top) {
    const float s_old = *w_scale, a = s_old * k->decay, c = k->c_w;
    float mx = 0.0f;
    if (undo && undo->state) {
        // The pass's fields in registers (stores to acc could alias them).
        const int32_t nm = undo->nm;
        uint32_t s = *undo->state;
        for (int i = 0; i < n; i++) {
            s = xorshift32(s);
            const int32_t g = acc[i];
            const int8_t wi = (int8_t)(uint8_t)((uint32_t)(uint8_t)w[i] - (uint32_t)fixed_step(g, nm, s));
            const float v = a * (float)wi - c * (float)g;
            const float m = fabsf(v);
            mx = m > mx ? m : mx;
            memcpy(&acc[i], &v, sizeof v);
        }
    } else if (undo) {
        const int32_t nm = undo->nm;
        for (int i = 0; i < n; i++) {
            const int32_t g = acc[i];
            const int8_t wi = (int8_t)(uint8_t)((uint32_t)(uint8_t)w[i] - (uint32_t)fixed_step(g, nm, 0x80000000u));
            const float v = a * (float)wi - c * (float)g;
            const float m = fabsf(v);
            mx = m > mx ? m : mx;
            memcpy(&acc[i], &v, sizeof v);
        }
    } else {
        for (int i = 0; i < n; i++) {
            const float v = a * (float)w[i] - c * (float)acc[i];
            const float m = fabsf(v);
            mx = m > mx ? m : mx;
            memcpy(&acc[i], &v, sizeof v);
        }
    }
    const float hi = 127.0f * s_old;
    float s_new = s_old;
    if ((undo || mx > hi || mx < u->rescale_below * hi) && mx > 0.0f) {
        s_new = mx / top;
    }
    const float inv = 1.0f / s_new;
    // |v * inv| <= 127 up to rounding (more if a kept scale overflowed): round (saturating
    // to int32), then clamp.
    if (u->rng) {
        // mt_round_stochastic inlined, with the state in a register: floor(v * inv + u) for
        // |v * inv| <= 128 or so (the scale rule above bounds it), where truncation plus one
        // compare is the floor.
        uint32_t s = u->rng->state ? u->rng->state : 0x9e3779b9u;
        for (int i = 0; i < n; i++) {
            float v;
            memcpy(&v, &acc[i], sizeof v);
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            const float t = v * inv + uniform24(s);
            // |t| > 1024 or NaN from the bits: one integer compare for three float ones.
            uint32_t tb;
            memcpy(&tb, &t, sizeof tb);
            int32_t r = (tb << 1) > (0x44800000u << 1) ? floor_to_int32(t) : (int32_t)t;
            r -= (float)r > t;
            w[i] = (int8_t)mt_s8_max(mt_s8_ssat8(r), -MT_S8_SYM_MAX);
        }
        u->rng->state = s;
    } else {
        for (int i = 0; i < n; i++) {
            float v;
            memcpy(&v, &acc[i], sizeof v);
            w[i] = (int8_t)mt_s8_max(mt_s8_ssat8(round_sat(v * inv)), -MT_S8_SYM_MAX);
        }
    }
    *w_scale = s_new;
    if (bias) {
        const float b = (k->x_scale * s_old) * (float)*bias - k->c_b * (float)bias_acc;
        *bias = mt_bias_clamp_s32(mt_round_half_even(b / (k->x_scale * s_new)));
    }
}

// Whether some |w[i]| >= least (a large weight usually comes within a few).
static int reaches(int n, const int8_t *w, int32_t least) {
    for (int i = 0; i < n; i++) {
        if (w[i] >= least || w[i] <= -least) {
            return 1;
        }
    }
    return 0;
}

static int all_zero(int n, const int32_t *acc) {
    int i = 0;
#if MT_S8_DSP
    // Eight words a round in two LDMs and seven ORRs (1.5 instructions a word; a zero row
    // is read to its end, a nonzero one usually stops in the first round).
    const int32_t *p = acc;
    for (; i + 8 <= n; i += 8) {
        register uint32_t a __asm__ ("r4"), b __asm__ ("r5"), c __asm__ ("r6"), d __asm__ ("r8");
        uint32_t e, f;
        __asm__ ("ldmia %4!, {%0, %1, %2, %3}" : "=r" (a), "=r" (b), "=r" (c), "=r" (d), "+r" (p)
            : : "memory");
        e = a | b | c | d;
        __asm__ ("ldmia %4!, {%0, %1, %2, %3}" : "=r" (a), "=r" (b), "=r" (c), "=r" (d), "+r" (p)
            : : "memory");
        f = e | a | b | c | d;
        if (f) {
            return 0;
        }
    }
#endif
    for (; i + 4 <= n; i += 4) {
        if (acc[i] | acc[i + 1] | acc[i + 2] | acc[i + 3]) {
            return 0;
        }
    }
    for (; i < n; i++) {
        if (acc[i]) {
            return 0;
        }
    }
    return 1;
}

// The smallest integer >= rescale_below * 127, in [0, 127], or 128 for rescale_below >= 1
// (the float rule then decides on the exact max, as "rescale every row" wants).
static int32_t least_max(float rescale_below) {
    const float t = rescale_below * 127.0f;
    if (!(t > 0.0f)) {
        return 0;
    }
    if (!(t < 127.0f)) {
        return 128;
    }
    const int32_t l = (int32_t)t;
    return (float)l < t ? l + 1 : l;
}

// The kept scale's bias step (rule 2 in conv2d_s8.h).
static void fixed_bias(const mt_s8_step_t *k, float s_old, int32_t *bias, int32_t bias_acc) {
    const float step = (k->c_b * (float)bias_acc) / (k->x_scale * s_old);
    const int64_t b = (int64_t)*bias - round_sat(step);
    *bias = b > MT_S8_BIAS_MAX ? MT_S8_BIAS_MAX
        : b < -MT_S8_BIAS_MAX ? -MT_S8_BIAS_MAX : (int32_t)b;
}

// m = round(2^32 * c_w / s_old), a weight's step in quanta per accumulator unit (Q32), when
// rule 2 may apply (conv2d_s8.h); 0 otherwise.
static int fixed_m(const mt_s8_step_t *k, float s_old, int32_t least, int32_t *m) {
    if (k->decay == 1.0f && least <= MT_S8_SYM_MAX) {
        const float kf = (k->c_w / s_old) * 4294967296.0f;
        if (kf > -2147483648.0f && kf < 2147483648.0f) {
            *m = round_sat(kf);
            return 1;
        }
    }
    return 0;
}

static uint32_t rng_start(const mt_s8_update_t *u) {
    return u->rng ? (u->rng->state ? u->rng->state : 0x9e3779b9u) : 0;
}

void mt_s8_update_row(const mt_s8_update_t *u, const mt_s8_step_t *k, int n, int32_t *acc,
    int8_t *w, float *w_scale, int32_t *bias, int32_t bias_acc, mt_grad_stats_t *stats) {
    if (stats) {
        mt_grad_stats_add(stats, acc, n);
    }
    const float s_old = *w_scale;
    if (k->decay == 1.0f && bias_acc == 0 && all_zero(n, acc)) {
        return;     // nothing moves: no draws, no rescale (conv2d_s8.h)
    }
    const int32_t least = least_max(u->rescale_below);
    int32_t m;
    if (fixed_m(k, s_old, least, &m)) {
        const uint32_t state0 = rng_start(u);
        uint32_t state = state0;
        if (!fixed_pass(n, acc, w, m, u->rng ? &state : NULL)
            && (least == 0 || reaches(n, w, least))) {
            if (u->rng) {
                u->rng->state = state;
            }
            if (bias) {
                fixed_bias(k, s_old, bias, bias_acc);
            }
            return;
        }
        // The kept scale does not hold the new weights: rescale from the float values,
        // with the same draws.
        const fixed_undo_t undo = { -m, u->rng ? &state0 : NULL };
        update_row_float(u, k, n, acc, w, w_scale, bias, bias_acc, &undo, MT_S8_RESCALE_TOP);
        return;
    }
    update_row_float(u, k, n, acc, w, w_scale, bias, bias_acc, NULL,
        least <= MT_S8_SYM_MAX ? MT_S8_RESCALE_TOP : 127.0f);
}

void mt_s8_update_row_rank1(const mt_s8_update_t *u, const mt_s8_step_t *k, int n,
    const int16_t *xz, int32_t d, int32_t *acc, int8_t *w, float *w_scale, int32_t *bias,
    int32_t bias_acc) {
    const float s_old = *w_scale;
    const int32_t least = least_max(u->rescale_below);
    int32_t m;
    // acc[i] * m = xz[i] * (d * m) exactly while d * m fits (and so does its negation).
    if (d != 0 && fixed_m(k, s_old, least, &m)) {
        const int64_t dm = (int64_t)d * m;
        if (dm >= -INT32_MAX && dm <= INT32_MAX) {
            const uint32_t state0 = rng_start(u);
            uint32_t state = state0;
            if (!fixed_pass_rank1(n, xz, w, (int32_t)dm, u->rng ? &state : NULL)
                && (least == 0 || reaches(n, w, least))) {
                if (u->rng) {
                    u->rng->state = state;
                }
                if (bias) {
                    fixed_bias(k, s_old, bias, bias_acc);
                }
                return;
            }
            for (int i = 0; i < n; i++) {
                acc[i] = d * xz[i];
            }
            const fixed_undo_t undo = { -m, u->rng ? &state0 : NULL };
            update_row_float(u, k, n, acc, w, w_scale, bias, bias_acc, &undo, MT_S8_RESCALE_TOP);
            return;
        }
    }
    for (int i = 0; i < n; i++) {
        acc[i] = d * xz[i];
    }
    mt_s8_update_row(u, k, n, acc, w, w_scale, bias, bias_acc, NULL);
}

void mt_s8_requantize_rows(const float *v, int8_t *w, float *scale, int rows, int row_len, float rescale_below,
    mt_rng_t *rng) {
    for (int o = 0; o < rows; o++, v += row_len, w += row_len) {
        float mx = 0.0f;
        for (int i = 0; i < row_len; i++) {
            const float m = fabsf(v[i]);
            mx = m > mx ? m : mx;
        }
        const float hi = 127.0f * scale[o];
        if ((mx > hi || mx < rescale_below * hi) && mx > 0.0f) {
            scale[o] = mx / 127.0f;
        }
        const float inv = 1.0f / scale[o];
        for (int i = 0; i < row_len; i++) {
            w[i] = (int8_t)mt_s8_clamp(mt_round_stochastic(v[i] * inv, rng), -MT_S8_SYM_MAX, MT_S8_SYM_MAX);
        }
    }
}

int mt_s8_rq_from_real(float real, mt_s8_rq_t *rq) {
    mt_requant_t m;
    if (mt_quant_multiplier(real, &m)) {
        return -1;
    }
    *rq = mt_s8_rq_make(m);
    return 0;
}

void mt_s8_fold_range(int channels, const int32_t *mm, int stride, float x_scale,
    const float *w_scale, mt_range_t *out) {
    float lo = 0.0f, hi = 0.0f;
    int first = 1;
    for (int o = 0; o < channels; o++) {
        const int32_t *m = mm + o * stride;
        if (m[0] > m[1]) {
            continue;   // no outputs
        }
        const float unit = x_scale * w_scale[o];
        const float a = (float)m[0] * unit, b = (float)m[1] * unit;
        if (first || a < lo) {
            lo = a;
        }
        if (first || b > hi) {
            hi = b;
        }
        first = 0;
    }
    out->min = lo;
    out->max = hi;
}

int mt_s8_grad_input_fold(int terms, int channels, const float *w_scale, float dy_scale,
    float dx_scale, int32_t *r, mt_s8_rq_t *rq, float *unit) {
    float smax = 0.0f;
    for (int o = 0; o < channels; o++) {
        smax = w_scale[o] > smax ? w_scale[o] : smax;
    }
    int rb = 8;
    while (rb > 0 && (int64_t)127 * 127 * ((int64_t)1 << rb) * terms >= ((int64_t)1 << 31)) {
        rb--;
    }
    const float two_rb = (float)(1 << rb);
    for (int o = 0; o < channels; o++) {
        r[o] = smax > 0.0f ? mt_round_half_even(two_rb * (w_scale[o] / smax)) : 0;
    }
    *unit = (dy_scale * smax) * (1.0f / two_rb);
    return mt_s8_rq_from_real((dy_scale * smax) / dx_scale * (1.0f / two_rb), rq);
}
