// int8 Linear: forward, input gradient and fused update (linear_s8.h).
#include <stdbool.h>
#include <string.h>
#include "gemm_s8.h"
#include "linear_s8.h"
#include "s8_common.h"
#include "checked_size.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

typedef struct {
    uint8_t *base;
    size_t used;
} arena_t;

static inline __attribute__((always_inline)) void *take(arena_t *a, size_t bytes) {
    void *p = a->base ? a->base + a->used : NULL;
    bool overflow = false;  // saturates for a layer too large to plan (checked_size.h)
    a->used = mt_add_size(a->used, mt_add_size(bytes, 7, &overflow) & ~(size_t)7, &overflow);
    return p;
}

typedef struct {
    mt_s8_rq_t *rq;       // out
    int32_t *mm;          // 2 * out
    int16_t *apanel;      // up to 4 samples' inputs, kp each (forward)
    int32_t *acc;         // in (input gradient row, update row)
    int32_t *r;           // out (input gradient fold)
} lin_scratch_t;

static size_t lin_layout(const mt_linear_params_t *p, void *scratch, lin_scratch_t *s) {
    const size_t O = (size_t)p->out_features, kp = (size_t)mt_gemm_s8_kpad(p->in_features);
    const size_t rows = (size_t)mt_s8_min(p->batch, 4);
    arena_t a = { scratch, 0 };
    s->rq = take(&a, O * sizeof(mt_s8_rq_t));
    s->mm = take(&a, 2 * O * sizeof(int32_t));
    s->apanel = take(&a, rows * kp * sizeof(int16_t));
    s->acc = take(&a, (size_t)p->in_features * sizeof(int32_t));
    s->r = take(&a, O * sizeof(int32_t));
    return a.used;
}

size_t mt_linear_s8_scratch_bytes(const mt_linear_params_t *p) {
    lin_scratch_t s;
    return lin_layout(p, NULL, &s);
}

// The requantization of one output row, as mt_s8_rq_from_real gives it; the usual case (a
// normal multiplier below 1/2: no left shift) straight from the float's bits.
static inline int row_rq(float real, mt_s8_rq_t *rq) {
    uint32_t bits;
    memcpy(&bits, &real, sizeof bits);
    const uint32_t e = bits >> 23;   // sign and exponent: shift = e - 126 in [-31, -1]
    if (e >= 95 && e <= 125) {
        rq->m = (int32_t)(((bits & 0x7fffffu) | 0x800000u) << 7);
        rq->left = 0;
        rq->right = 125 - (int32_t)e;
        rq->round = (int64_t)1 << (31 + rq->right);
        return 0;
    }
    return mt_s8_rq_from_real(real, rq);
}

// Widens output o's accumulator range [mm[2 o], mm[2 o + 1]] to v (mm NULL: no range wanted).
static inline void track(int32_t *mm, int o, int32_t v) {
    if (mm) {
        mm[2 * o] = mt_s8_min(mm[2 * o], v);
        mm[2 * o + 1] = mt_s8_max(mm[2 * o + 1], v);
    }
}

// y = requant(acc) plus the output's zero point, clamped: one SMMLA(R) in the usual case.
static inline int8_t finish(int32_t v, const mt_s8_rq_t *rq, const mt_s8_quant_t *q) {
    int32_t r;
    if (rq->left == 0 && rq->right <= 23) {
        r = mt_s8_rq_zp(v, rq->m, mt_s8_rq_c(rq->right, q->y.zero_point), rq->right);
    } else {
        r = mt_s8_rq(v, rq) + q->y.zero_point;
    }
    return (int8_t)mt_s8_clamp(r, q->act_min, q->act_max);
}

#if MT_S8_DSP
// Two words from an 8-byte aligned p as one LDRD (GCC, short of registers, splits them).
static inline void ldrd(const int32_t *p, uint32_t *lo, uint32_t *hi) {
    __asm__ ("ldrd %0, %1, %2" : "=r" (*lo), "=r" (*hi) : "m" (*(const uint64_t *)p));
}

// SXTB16 of v ROR #8 as one instruction (GCC splits the rotation off).
static inline uint32_t sxtb16_ror8(uint32_t v) {
    uint32_t r;
    __asm__ ("sxtb16 %0, %1, ror #8" : "=r" (r) : "r" (v));
    return r;
}
#endif

// sum over k of x16[k] * w[k] for one weight row: x16 is the input minus its zero point as
// one packed row (gemm_s8.h order), w the int8 row, k < n (kp = padded n).
static int32_t dot_row(const int16_t *x16, const int8_t *w, int n, int32_t acc) {
    int k = 0;
#if MT_S8_DSP
    // SXTB16 and SXTB16 ROR #8 turn 4 weights into the (0, 2), (1, 3) pairs the packed
    // input holds: 5 instructions per 4 multiply-adds.
    const uint32_t *xw = (const uint32_t *)x16;
    for (; k + 4 <= n; k += 4, xw += 2) {
        const uint32_t v = mt_s8_load32(w + k);
        acc = __smlad(xw[0], __sxtb16(v), acc);
        acc = __smlad(xw[1], sxtb16_ror8(v), acc);
    }
#endif
    uint32_t sum = (uint32_t)acc;
    for (; k < n; k++) {
        sum += (uint32_t)(x16[mt_gemm_s8_pos(k)] * w[k]);
    }
    return (int32_t)sum;
}

// dot_row for two weight rows w0, w1 at once: each input word is loaded once for both
// (12 instructions per 8 multiply-adds on DSP cores).
static void dot_row2(const int16_t *x16, const int8_t *w0, const int8_t *w1, int n, int32_t *acc0,
    int32_t *acc1) {
    int k = 0;
    int32_t a0 = *acc0, a1 = *acc1;
#if MT_S8_DSP
    const uint32_t *xw = (const uint32_t *)x16;
    for (; k + 4 <= n; k += 4, xw += 2) {
        const uint32_t v0 = mt_s8_load32(w0 + k), v1 = mt_s8_load32(w1 + k);
        const uint32_t x02 = xw[0], x13 = xw[1];
        a0 = __smlad(x02, __sxtb16(v0), a0);
        a0 = __smlad(x13, sxtb16_ror8(v0), a0);
        a1 = __smlad(x02, __sxtb16(v1), a1);
        a1 = __smlad(x13, sxtb16_ror8(v1), a1);
    }
#endif
    uint32_t s0 = (uint32_t)a0, s1 = (uint32_t)a1;
    for (; k < n; k++) {
        const int32_t xv = x16[mt_gemm_s8_pos(k)];
        s0 += (uint32_t)(xv * w0[k]);
        s1 += (uint32_t)(xv * w1[k]);
    }
    *acc0 = (int32_t)s0;
    *acc1 = (int32_t)s1;
}

// Rows x_0 .. x_{G-1} (length k, G <= 4) minus zp into a group panel: the four values 4i ..
// 4i + 3 of sample g as the words 2 (i G + g) (values 0 and 2) and 2 (i G + g) + 1 (values 1
// and 3), so that one LDRD fetches a sample's four; zeros past k. (G = 1 is a one-row
// gemm_s8.h panel.)
static void pack_group(const int8_t *x, int k, int G, int32_t zp, int32_t *panel) {
    for (int g = 0; g < G; g++) {
        const int8_t *src = x + (size_t)g * k;
        int32_t *dst = panel + 2 * g;
        int i = 0;
#if MT_S8_DSP
        const uint32_t neg = mt_s8_pair(-zp);
        for (; i + 4 <= k; i += 4, dst += 2 * G) {
            const uint32_t v = mt_s8_load32(src + i);
            *(uint64_t *)dst = (uint32_t)__sxtab16(neg, v) | (uint64_t)mt_s8_sxtab16_ror8(neg, v) << 32;
        }
#else
        for (; i + 4 <= k; i += 4, dst += 2 * G) {
            dst[0] = mt_s8_words((int16_t)(src[i] - zp), (int16_t)(src[i + 2] - zp));
            dst[1] = mt_s8_words((int16_t)(src[i + 1] - zp), (int16_t)(src[i + 3] - zp));
        }
#endif
        if (i < k) {
            int16_t t[4] = { 0, 0, 0, 0 };
            for (int j = 0; i + j < k; j++) {
                t[j] = (int16_t)(src[i + j] - zp);
            }
            dst[0] = mt_s8_words(t[0], t[2]);
            dst[1] = mt_s8_words(t[1], t[3]);
        }
    }
}

// acc[g] += sum over k < n of x_g[k] * w[k] for the G samples (2 to 4) of a group panel
// (pack_group): each weight word is loaded and widened once for all G samples (3
// instructions, then per sample an LDRD and 2 SMLAD, per 4 weights).
static inline __attribute__((always_inline)) void dot_group(const int32_t *xw, const int8_t *w, int n,
    const int G, int32_t *acc) {
    uint32_t a[4] = { 0, 0, 0, 0 };
#pragma GCC unroll 4
    for (int g = 0; g < G; g++) {
        a[g] = (uint32_t)acc[g];
    }
    int k = 0;
#if MT_S8_DSP
    for (; k + 4 <= n; k += 4, xw += 2 * G) {
        const uint32_t v = mt_s8_load32(w + k), e = __sxtb16(v), o = sxtb16_ror8(v);
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) {
            uint32_t lo, hi;
            ldrd(xw + 2 * g, &lo, &hi);
            a[g] = (uint32_t)__smlad(lo, e, (int32_t)a[g]);
            a[g] = (uint32_t)__smlad(hi, o, (int32_t)a[g]);
        }
    }
#else
    for (; k + 4 <= n; k += 4, xw += 2 * G) {
        const int16_t *x16 = (const int16_t *)xw;
        const int32_t w0 = w[k], w1 = w[k + 1], w2 = w[k + 2], w3 = w[k + 3];
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) {
            const int16_t *xg = x16 + 4 * g;
            a[g] += (uint32_t)(xg[0] * w0) + (uint32_t)(xg[2] * w1) + (uint32_t)(xg[1] * w2)
                + (uint32_t)(xg[3] * w3);
        }
    }
#endif
    // The last, partial group of four: value k + j of sample g in word 2 g + (j & 1), half j >> 1.
    const int16_t *x16 = (const int16_t *)xw;
    for (int j = 0; k + j < n; j++) {
        const int32_t wv = w[k + j];
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) {
            a[g] += (uint32_t)(x16[2 * (2 * g + (j & 1)) + (j >> 1)] * wv);
        }
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; g++) {
        acc[g] = (int32_t)a[g];
    }
}

// Outputs of G samples (panel as dot_group) for every row: y rows of O values.
static inline __attribute__((always_inline)) void forward_group(const lin_scratch_t *s, int O, int K,
    const int8_t *w, const int32_t *bias, int8_t *y, int32_t *mm, const mt_s8_quant_t *q, const int G) {
    for (int o = 0; o < O; o++) {
        const int32_t b = bias ? bias[o] : 0;
        int32_t acc[4] = { b, b, b, b };
        dot_group((const int32_t *)s->apanel, w + (size_t)o * K, K, G, acc);
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) {
            track(mm, o, acc[g]);
            y[(size_t)g * O + o] = finish(acc[g], &s->rq[o], q);
        }
    }
}

// Outputs of one sample (its packed input in the panel), two rows a pass.
static void forward_one(const lin_scratch_t *s, int O, int K, const int8_t *w, const int32_t *bias,
    int8_t *y, int32_t *mm, const mt_s8_quant_t *q) {
    int o = 0;
    for (; o + 2 <= O; o += 2) {
        int32_t v0 = bias ? bias[o] : 0, v1 = bias ? bias[o + 1] : 0;
        dot_row2(s->apanel, w + (size_t)o * K, w + (size_t)(o + 1) * K, K, &v0, &v1);
        track(mm, o, v0);
        track(mm, o + 1, v1);
        y[o] = finish(v0, &s->rq[o], q);
        y[o + 1] = finish(v1, &s->rq[o + 1], q);
    }
    if (o < O) {
        const int32_t v = dot_row(s->apanel, w + (size_t)o * K, K, bias ? bias[o] : 0);
        track(mm, o, v);
        y[o] = finish(v, &s->rq[o], q);
    }
}

int mt_linear_s8_forward(const mt_linear_params_t *p, const mt_s8_quant_t *q, const int8_t *x,
    const int8_t *w, const float *w_scale, const int32_t *bias, int8_t *y, mt_range_t *y_range,
    void *scratch) {
    lin_scratch_t s;
    lin_layout(p, scratch, &s);
    const int O = p->out_features, K = p->in_features, B = p->batch;
    for (int o = 0; o < O; o++) {
        if (row_rq((q->x.scale * w_scale[o]) / q->y.scale, &s.rq[o])) {
            return -1;
        }
        s.mm[2 * o] = INT32_MAX;
        s.mm[2 * o + 1] = INT32_MIN;
    }
    int32_t *mm = y_range ? s.mm : NULL;
    // Samples in groups of four (the last of 1 to 3), each group's input packed once.
    for (int b0 = 0; b0 < B; b0 += 4) {
        const int G = mt_s8_min(4, B - b0);
        const int8_t *xb = x + (size_t)b0 * K;
        int8_t *yb = y + (size_t)b0 * O;
        pack_group(xb, K, G, q->x.zero_point, (int32_t *)s.apanel);
        switch (G) {
            case 4:
                forward_group(&s, O, K, w, bias, yb, mm, q, 4);
                break;
            case 3:
                forward_group(&s, O, K, w, bias, yb, mm, q, 3);
                break;
            case 2:
                forward_group(&s, O, K, w, bias, yb, mm, q, 2);
                break;
            default:
                forward_one(&s, O, K, w, bias, yb, mm, q);
                break;
        }
    }
    if (y_range) {
        mt_s8_fold_range(O, s.mm, 2, q->x.scale, w_scale, y_range);
    }
    return 0;
}

// acc[k] = c + d0 * a0[k] + d1 * a1[k] (set) or acc[k] += d0 * a0[k] + d1 * a1[k], k < n,
// for two int8 rows a0, a1 and d0, d1 that fit int16: two rows of weights times their errors
// (input gradient), or two samples' inputs times their errors (weight gradient). Sums wrap
// as int32 (they never overflow in use).
static inline __attribute__((always_inline)) void madd2(int n, int32_t c, int32_t d0, const int8_t *a0,
    int32_t d1, const int8_t *a1, int32_t *acc, const bool set) {
    int k = 0;
#if MT_S8_DSP
    // PKHBT/PKHTB put bytes (0, 1) and (2, 3) of both rows in one word each, so SXTB16 and
    // SXTB16 ROR #8 give the pairs (a0[k], a1[k]) SMLAD wants: 12 instructions and the acc
    // traffic per 8 multiply-adds.
    const uint32_t d = ((uint32_t)d0 & 0xffffu) | ((uint32_t)d1 << 16);
    for (; k + 4 <= n; k += 4) {
        const uint32_t v0 = mt_s8_load32(a0 + k), v1 = mt_s8_load32(a1 + k);
        const uint32_t p01 = mt_s8_pkhbt(v0, v1), p23 = mt_s8_pkhtb(v1, v0);
        acc[k] = __smlad(d, __sxtb16(p01), set ? c : acc[k]);
        acc[k + 1] = __smlad(d, sxtb16_ror8(p01), set ? c : acc[k + 1]);
        acc[k + 2] = __smlad(d, __sxtb16(p23), set ? c : acc[k + 2]);
        acc[k + 3] = __smlad(d, sxtb16_ror8(p23), set ? c : acc[k + 3]);
    }
#endif
    for (; k < n; k++) {
        const uint32_t base = set ? (uint32_t)c : (uint32_t)acc[k];
        acc[k] = (int32_t)(base + (uint32_t)(d0 * a0[k]) + (uint32_t)(d1 * a1[k]));
    }
}

// acc[k] = c + d0 * a0[k] (set) or acc[k] += d0 * a0[k], k < n, d0 fits int16.
static inline __attribute__((always_inline)) void madd1(int n, int32_t c, int32_t d0, const int8_t *a0,
    int32_t *acc, const bool set) {
    int k = 0;
#if MT_S8_DSP
    // SXTB16 gives bytes (0, 2) and (1, 3) as int16 halves; SMLABB/SMLATB take one each.
    for (; k + 4 <= n; k += 4) {
        const uint32_t v = mt_s8_load32(a0 + k);
        const int32_t e = (int32_t)__sxtb16(v), o = (int32_t)sxtb16_ror8(v);
        acc[k] = __smlabb(e, d0, set ? c : acc[k]);
        acc[k + 1] = __smlabb(o, d0, set ? c : acc[k + 1]);
        acc[k + 2] = __smlatb(e, d0, set ? c : acc[k + 2]);
        acc[k + 3] = __smlatb(o, d0, set ? c : acc[k + 3]);
    }
#endif
    for (; k < n; k++) {
        const uint32_t base = set ? (uint32_t)c : (uint32_t)acc[k];
        acc[k] = (int32_t)(base + (uint32_t)(d0 * a0[k]));
    }
}

// acc = c + the sum of d * row over the rows fed to row_sum_add, two rows a pass; rows with
// d == 0 (common after a ReLU) cost nothing.
typedef struct {
    int n;
    int32_t c;
    int32_t *acc;
    bool set;            // acc not written yet
    int32_t d;           // a pending row, waiting for its pair
    const int8_t *row;
} row_sum_t;

static inline row_sum_t row_sum_begin(int n, int32_t c, int32_t *acc) {
    row_sum_t s = { n, c, acc, true, 0, NULL };
    return s;
}

static inline void row_sum_add(row_sum_t *s, int32_t d, const int8_t *row) {
    if (!d) {
        return;
    }
    if (!s->row) {
        s->d = d;
        s->row = row;
        return;
    }
    if (s->set) {
        madd2(s->n, s->c, s->d, s->row, d, row, s->acc, true);
    } else {
        madd2(s->n, 0, s->d, s->row, d, row, s->acc, false);
    }
    s->set = false;
    s->row = NULL;
}

static void row_sum_end(row_sum_t *s) {
    if (s->row) {
        if (s->set) {
            madd1(s->n, s->c, s->d, s->row, s->acc, true);
        } else {
            madd1(s->n, 0, s->d, s->row, s->acc, false);
        }
    } else if (s->set) {
        for (int k = 0; k < s->n; k++) {
            s->acc[k] = s->c;
        }
    }
}

int mt_linear_s8_grad_input(const mt_linear_params_t *p, const mt_s8_quant_t *q,
    const int8_t *dy, const int8_t *w, const float *w_scale, int8_t *dx, float *dx_absmax,
    void *scratch) {
    lin_scratch_t s;
    lin_layout(p, scratch, &s);
    const int O = p->out_features, K = p->in_features;
    mt_s8_rq_t rq;
    float unit;
    if (mt_s8_grad_input_fold(O, O, w_scale, q->dy_scale, q->dx_scale, s.r, &rq, &unit)) {
        return -1;
    }
    // Requantization without a left shift (the usual case): one SMMLA(R) (s8_common.h).
    const bool fast = rq.left == 0 && rq.right <= 23;
    const int32_t rc = fast ? mt_s8_rq_c(rq.right, 0) : 0;
    int32_t amin = 0, amax = 0;
    for (int b = 0; b < p->batch; b++) {
        const int8_t *d = dy + (size_t)b * O;
        row_sum_t sum = row_sum_begin(K, 0, s.acc);
        for (int o = 0; o < O; o++) {
            row_sum_add(&sum, d[o] * s.r[o], w + (size_t)o * K);
        }
        row_sum_end(&sum);
        int8_t *out = dx + (size_t)b * K;
        if (fast) {
            for (int k = 0; k < K; k++) {
                const int32_t v = s.acc[k];
                amin = mt_s8_min(amin, v);
                amax = mt_s8_max(amax, v);
                // SSAT to [-128, 127], then -128 up to -127.
                out[k] = (int8_t)mt_s8_max(mt_s8_ssat8(mt_s8_rq_zp(v, rq.m, rc, rq.right)), -MT_S8_SYM_MAX);
            }
        } else {
            for (int k = 0; k < K; k++) {
                const int32_t v = s.acc[k];
                amin = mt_s8_min(amin, v);
                amax = mt_s8_max(amax, v);
                out[k] = (int8_t)mt_s8_clamp(mt_s8_rq(v, &rq), -MT_S8_SYM_MAX, MT_S8_SYM_MAX);
            }
        }
    }
    if (dx_absmax) {
        const float a = -(float)amin > (float)amax ? -(float)amin : (float)amax;
        *dx_absmax = a * unit;
    }
    return 0;
}

int mt_linear_s8_update(const mt_linear_params_t *p, const mt_s8_quant_t *q,
    const mt_s8_update_t *u, const int8_t *x, const int8_t *dy, int8_t *w, float *w_scale,
    int32_t *bias, const uint8_t *mask, mt_grad_stats_t *w_stats, mt_grad_stats_t *b_stats,
    void *scratch) {
    lin_scratch_t s;
    lin_layout(p, scratch, &s);
    const int O = p->out_features, K = p->in_features, B = p->batch;
    const int32_t zp = q->x.zero_point;
    if (w_stats) {
        w_stats->sum = w_stats->sum_sq = 0.0f;
        w_stats->count = 0;
    }
    if (b_stats) {
        b_stats->sum = b_stats->sum_sq = 0.0f;
        b_stats->count = 0;
    }
    mt_s8_step_t step;
    if (u) {
        step = mt_s8_step_make(u, q);
    }
    // Batch 1 without statistics: each row's gradient is dy[o] * (x - zp), which the update
    // takes straight from x - zp (int16, in the forward's panel) without an int32 row.
    const bool rank1 = B == 1 && u && !w_stats && zp >= -128 && zp <= 127;
    if (rank1) {
        for (int k = 0; k < K; k++) {
            s.apanel[k] = (int16_t)(x[k] - zp);
        }
    }
    for (int o = 0; o < O; o++) {
        if (mask && !mask[o]) {
            continue;
        }
        // acc[k] = sum over the batch of dy[b][o] * (x[b][k] - zp) = sum of dy[b][o] * x[b][k]
        // - zp * bsum, exactly in int32; samples with zero error cost nothing.
        int32_t bsum = 0;
        bool any = false;
        for (int b = 0; b < B; b++) {
            const int32_t d = dy[(size_t)b * O + o];
            bsum += d;
            any |= d != 0;
        }
        if (b_stats) {
            mt_grad_stats_add(b_stats, &bsum, 1);
        }
        if (!any && (!u || mt_s8_update_skips_zero_row(&step, bsum))) {
            // A row without error: its accumulators are all 0, which add nothing to the
            // statistics' sums (they start at +0) and leave the row as it is.
            if (w_stats) {
                w_stats->count += K;
            }
            continue;
        }
        if (rank1) {
            mt_s8_update_row_rank1(u, &step, K, s.apanel, bsum, s.acc, w + (size_t)o * K,
                &w_scale[o], bias ? &bias[o] : NULL, bsum);
            continue;
        }
        row_sum_t sum = row_sum_begin(K, (int32_t)(0u - (uint32_t)zp * (uint32_t)bsum), s.acc);
        for (int b = 0; b < B; b++) {
            row_sum_add(&sum, dy[(size_t)b * O + o], x + (size_t)b * K);
        }
        row_sum_end(&sum);
        if (u) {
            mt_s8_update_row(u, &step, K, s.acc, w + (size_t)o * K, &w_scale[o],
                bias ? &bias[o] : NULL, bsum, w_stats);
        } else if (w_stats) {
            mt_grad_stats_add(w_stats, s.acc, K);
        }
    }
    return 0;
}
