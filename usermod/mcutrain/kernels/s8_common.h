// Internal helpers shared by the int8 kernels (gemm_s8.c, conv2d_s8.c, linear_s8.c): the
// DSP switch, byte/halfword packing, and requantization with precomputed constants.
#ifndef MCUTRAIN_KERNELS_S8_COMMON_H
#define MCUTRAIN_KERNELS_S8_COMMON_H

#include <stdint.h>
#include <string.h>
#include "quant.h"

// Cortex-M4/M7/M33 (any core with the DSP extension) take the SIMD paths; defining
// MCUTRAIN_PORTABLE_KERNELS builds the portable C everywhere (to compare the two on a board).
#if defined(__ARM_FEATURE_DSP) && !defined(MCUTRAIN_PORTABLE_KERNELS)
#define MT_S8_DSP 1
#include <arm_acle.h>
#else
#define MT_S8_DSP 0
#endif

// (v, v) as two int16 halves.
static inline uint32_t mt_s8_pair(int32_t v) {
    return ((uint32_t)v & 0xffffu) * 0x10001u;
}

// Two int16 values as one word, lo in the low half (the little-endian int16 pair).
static inline int32_t mt_s8_words(int16_t lo, int16_t hi) {
    return (int32_t)(((uint32_t)(uint16_t)lo) | ((uint32_t)(uint16_t)hi << 16));
}

// Unaligned loads (single LDR/LDRH on Cortex-M3 and up).
static inline uint32_t mt_s8_load32(const int8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint32_t mt_s8_load16(const int8_t *p) {
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint32_t mt_s8_ror8(uint32_t v) {
    return (v >> 8) | (v << 24);
}

#if MT_S8_DSP
// Single instructions GCC does not form from C (it splits the rotation and the halfword packs).
// sxtab16(a, b ror 8): (a.lo + sext(b.byte1), a.hi + sext(b.byte3)).
static inline uint32_t mt_s8_sxtab16_ror8(uint32_t a, uint32_t b) {
    uint32_t r;
    __asm__ ("sxtab16 %0, %1, %2, ror #8" : "=r" (r) : "r" (a), "r" (b));
    return r;
}

// (lo.lo, hi.lo): lo's bottom half, hi's bottom half on top.
static inline uint32_t mt_s8_pkhbt(uint32_t lo, uint32_t hi) {
    uint32_t r;
    __asm__ ("pkhbt %0, %1, %2, lsl #16" : "=r" (r) : "r" (lo), "r" (hi));
    return r;
}

// (lo.hi, hi.hi): lo's top half at the bottom, hi's top half on top.
static inline uint32_t mt_s8_pkhtb(uint32_t hi, uint32_t lo) {
    uint32_t r;
    __asm__ ("pkhtb %0, %1, %2, asr #16" : "=r" (r) : "r" (hi), "r" (lo));
    return r;
}
#endif

static inline int32_t mt_s8_min(int32_t a, int32_t b) {
#if MT_S8_DSP
    // GCC tends to branch here; an IT block is 3 instructions.
    __asm__ ("cmp %0, %1\n\tit gt\n\tmovgt %0, %1" : "+r" (a) : "r" (b) : "cc");
    return a;
#else
    return a < b ? a : b;
#endif
}

static inline int32_t mt_s8_max(int32_t a, int32_t b) {
#if MT_S8_DSP
    __asm__ ("cmp %0, %1\n\tit lt\n\tmovlt %0, %1" : "+r" (a) : "r" (b) : "cc");
    return a;
#else
    return a > b ? a : b;
#endif
}

// Saturation to [-128, 127] (SSAT on DSP cores).
static inline int32_t mt_s8_ssat8(int32_t v) {
#if MT_S8_DSP
    return __ssat(v, 8);
#else
    return v < -128 ? -128 : v > 127 ? 127 : v;
#endif
}

static inline int32_t mt_s8_clamp(int32_t v, int32_t lo, int32_t hi) {
    return mt_s8_min(mt_s8_max(v, lo), hi);
}

// mt_requantize() with its case analysis done once: result = ((x * m + round) >> 32) >> right
// with x = acc << left (saturating); one SMLAL and one ASR on Cortex-M4 when left is 0.
typedef struct {
    int64_t round;
    int32_t m;
    int32_t left;
    int32_t right;
} mt_s8_rq_t;

static inline mt_s8_rq_t mt_s8_rq_make(mt_requant_t q) {
    mt_s8_rq_t r;
    r.m = q.multiplier;
    if (q.multiplier == 0) {
        r.round = 0;
        r.left = 0;
        r.right = 0;
    } else if (q.shift >= 0) {
        r.left = q.shift + 1;
        r.right = 0;
        r.round = (int64_t)1 << 31;
    } else {
        r.left = 0;
        r.right = -q.shift - 1;
        r.round = (int64_t)1 << (31 + r.right);
    }
    return r;
}

// ((v * m + round) >> 32) >> right: mt_s8_rq when left is 0 (one SMLAL and an ASR).
static inline int32_t mt_s8_rq0(int32_t v, int32_t m, int64_t round, int32_t right) {
#if MT_S8_DSP
    uint32_t lo = (uint32_t)round;
    int32_t hi = (int32_t)(round >> 32);
    __asm__ ("smlal %0, %1, %2, %3" : "+r" (lo), "+r" (hi) : "r" (v), "r" (m));
    return hi >> right;
#else
    return (int32_t)(((int64_t)v * m + round) >> 32) >> right;
#endif
}

// Requantization plus an added zero point zp when left == 0, as the high word of one 32x32
// multiply-accumulate: right == 0: (v * m + 2^31 + zp * 2^32) >> 32 (SMMLAR); right >= 1:
// (floor(v * m / 2^32) + c) >> right with c = 2^(right-1) + zp * 2^right (SMMLA, ASR), which
// equals ((v * m + 2^(31+right)) >> (32+right)) + zp exactly. c must fit int32: right <= 23.
static inline int32_t mt_s8_rq_c(int32_t right, int32_t zp) {
    return right ? (int32_t)(((uint32_t)1 << (right - 1)) + ((uint32_t)zp << right)) : zp;
}

static inline int32_t mt_s8_rq_zp(int32_t v, int32_t m, int32_t c, int32_t right) {
#if MT_S8_DSP
    int32_t r;
    if (right == 0) {
        __asm__ ("smmlar %0, %1, %2, %3" : "=r" (r) : "r" (v), "r" (m), "r" (c));
        return r;
    }
    __asm__ ("smmla %0, %1, %2, %3" : "=r" (r) : "r" (v), "r" (m), "r" (c));
    return r >> right;
#else
    if (right == 0) {
        return (int32_t)(((int64_t)v * m + ((int64_t)1 << 31)) >> 32) + c;
    }
    return (int32_t)((uint32_t)(int32_t)(((int64_t)v * m) >> 32) + (uint32_t)c) >> right;
#endif
}

static inline int32_t mt_s8_rq(int32_t acc, const mt_s8_rq_t *q) {
    int32_t x = acc;
    if (q->left) {
        const int l = q->left;
        x = x > (INT32_MAX >> l) ? INT32_MAX
            : x < (INT32_MIN >> l) ? INT32_MIN : (int32_t)((uint32_t)x << l);
    }
    const int64_t t = (int64_t)x * q->m + q->round;
    return (int32_t)(t >> 32) >> q->right;
}

// mt_pack_s8_run (gemm_s8.h), inline so that a constant stride becomes immediate offsets.
static inline void mt_s8_pack_run(const int8_t *src, int n, int32_t offset, int32_t *dst,
    int stride) {
#if MT_S8_DSP
    // 2 LDR, 4 SXTAB16 and 4 STR per 8 values.
    const uint32_t neg = mt_s8_pair(-offset);
    const int8_t *end = src + (n & ~7);
    while (src != end) {
        const uint32_t v = mt_s8_load32(src), u = mt_s8_load32(src + 4);
        src += 8;
        dst[0] = (int32_t)__sxtab16(neg, v);
        dst[stride] = (int32_t)mt_s8_sxtab16_ror8(neg, v);
        dst[2 * stride] = (int32_t)__sxtab16(neg, u);
        dst[3 * stride] = (int32_t)mt_s8_sxtab16_ror8(neg, u);
        dst += 4 * stride;
    }
    if (n & 4) {
        const uint32_t v = mt_s8_load32(src);
        dst[0] = (int32_t)__sxtab16(neg, v);
        dst[stride] = (int32_t)mt_s8_sxtab16_ror8(neg, v);
    }
#else
    for (int i = 0; i < n; i += 4, dst += 2 * stride) {
        dst[0] = mt_s8_words((int16_t)(src[i] - offset), (int16_t)(src[i + 2] - offset));
        dst[stride] = mt_s8_words((int16_t)(src[i + 1] - offset), (int16_t)(src[i + 3] - offset));
    }
#endif
}

// ---- the update of one output channel (shared by conv2d_s8.c and linear_s8.c; quant.c) --

// The per-call constants of an update (see conv2d_s8.h): the weight gradient's step c_w per
// accumulator unit, the bias's c_b, and the decay factor.
typedef struct {
    float c_w, c_b, decay, x_scale;
} mt_s8_step_t;

mt_s8_step_t mt_s8_step_make(const mt_s8_update_t *u, const mt_s8_quant_t *q);

// Adds n accumulators to the statistics (in order, in float).
void mt_grad_stats_add(mt_grad_stats_t *s, const int32_t *acc, int n);

// Updates one output channel by the rule in conv2d_s8.h: its n weights w from their
// accumulators acc, its scale, and its bias (if not NULL) from bias_acc = sum of dy; adds
// acc to stats (if not NULL). acc is scratch (rescaled rows overwrite it). Rows with no error
// are skipped after a scan of acc (1.5 instructions a word on the Cortex-M4); the
// fixed-point pass costs 7 instructions a weight there (11 stochastic; RV32: 14 and 20),
// the float rule (rescaled rows) about 40 more.
void mt_s8_update_row(const mt_s8_update_t *u, const mt_s8_step_t *k, int n, int32_t *acc,
    int8_t *w, float *w_scale, int32_t *bias, int32_t bias_acc, mt_grad_stats_t *stats);

// mt_s8_update_row for a row of rank 1 (a Linear at batch 1): acc[i] = d * xz[i], with xz
// the input minus its zero point (|xz[i]| <= 255, |d| <= 128); the same result and draws.
// At a kept scale it runs the fixed-point pass straight from xz with the multiplier d * m
// (one accumulator row fewer to build and read); acc (n words) is scratch for the other
// rules. No statistics: callers that want them build the row and call mt_s8_update_row.
void mt_s8_update_row_rank1(const mt_s8_update_t *u, const mt_s8_step_t *k, int n,
    const int16_t *xz, int32_t d, int32_t *acc, int8_t *w, float *w_scale, int32_t *bias,
    int32_t bias_acc);

// Whether mt_s8_update_row leaves a row whose n accumulators are all 0 exactly as it is
// (rule 1 in conv2d_s8.h). A caller that knows a row got no error (e.g. no nonzero dy in
// the batch) may then skip the call, and its scan, adding only stats->count += n.
static inline int mt_s8_update_skips_zero_row(const mt_s8_step_t *k, int32_t bias_acc) {
    return k->decay == 1.0f && bias_acc == 0;
}

// ---- requantization setup shared by the layers (quant.c) ----------------------------------

// rq for the real multiplier; -1 if it is unrepresentable.
int mt_s8_rq_from_real(float real, mt_s8_rq_t *rq);

// out = min and max over channels o with m[0] <= m[1], m = mm + o * stride, of m * x_scale *
// w_scale[o] (the real pre-activation range from per-channel accumulator extremes; 0, 0 if
// none).
void mt_s8_fold_range(int channels, const int32_t *mm, int stride, float x_scale,
    const float *w_scale, mt_range_t *out);

// The input gradient's weight fold (conv2d_s8.h) for sums of `terms` products: r[o],
// the requantization to dx, and unit = s_dy * max s_w / 2^rb (one accumulator step).
int mt_s8_grad_input_fold(int terms, int channels, const float *w_scale, float dy_scale,
    float dx_scale, int32_t *r, mt_s8_rq_t *rq, float *unit);

// ---- requantization setup shared by the layers (quant.c) ----------------------------------

// rq for the real multiplier; -1 if it is unrepresentable.
int mt_s8_rq_from_real(float real, mt_s8_rq_t *rq);

// out = min and max over channels o with m[0] <= m[1], m = mm + o * stride, of m * x_scale *
// w_scale[o] (the real pre-activation range from per-channel accumulator extremes; 0, 0 if
// none).
void mt_s8_fold_range(int channels, const int32_t *mm, int stride, float x_scale,
    const float *w_scale, mt_range_t *out);

// The input gradient's weight fold (conv2d_s8.h) for sums of `terms` products: r[o],
// the requantization to dx, and unit = s_dy * max s_w / 2^rb (one accumulator step).
int mt_s8_grad_input_fold(int terms, int channels, const float *w_scale, float dy_scale,
    float dx_scale, int32_t *r, mt_s8_rq_t *rq, float *unit);


#endif
