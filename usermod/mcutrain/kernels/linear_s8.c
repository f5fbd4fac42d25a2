// int8 Linear: forward, input gradient and fused update (linear_s8.h).
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

static void *take(arena_t *a, size_t bytes) {
    void *p = a->base ? a->base + a->used : NULL;
    bool overflow = false;  // saturates for a layer too large to plan (checked_size.h)
    a->used = mt_add_size(a->used, mt_add_size(bytes, 7, &overflow) & ~(size_t)7, &overflow);
    return p;
}

typedef struct {
    mt_s8_rq_t *rq;       // out
    int32_t *mm;          // 2 * out
    int16_t *apanel;      // batch rounded up to 3 rows of kp (batch 1: one row)
    int16_t *bpanel;      // 2 * kp
    int32_t *acc;         // in (input gradient row, update row)
    int32_t *r;           // out (input gradient fold)
} lin_scratch_t;

static size_t lin_layout(const mt_linear_params_t *p, void *scratch, lin_scratch_t *s) {
    const size_t O = (size_t)p->out_features, kp = (size_t)mt_gemm_s8_kpad(p->in_features);
    const size_t rows = (size_t)(p->batch + 2) / 3 * 3;
    arena_t a = { scratch, 0 };
    s->rq = take(&a, O * sizeof(mt_s8_rq_t));
    s->mm = take(&a, 2 * O * sizeof(int32_t));
    s->apanel = take(&a, rows * kp * sizeof(int16_t));
    s->bpanel = take(&a, 2 * kp * sizeof(int16_t));
    s->acc = take(&a, (size_t)p->in_features * sizeof(int32_t));
    s->r = take(&a, O * sizeof(int32_t));
    return a.used;
}

size_t mt_linear_s8_scratch_bytes(const mt_linear_params_t *p) {
    lin_scratch_t s;
    return lin_layout(p, NULL, &s);
}

// y = requant(acc) for one output of one sample, tracking the accumulator range.
static inline int8_t finish(int32_t v, const mt_s8_rq_t *rq, int32_t *mm, const mt_s8_quant_t *q) {
    if (mm) {
        mm[0] = mt_s8_min(mm[0], v);
        mm[1] = mt_s8_max(mm[1], v);
    }
    return (int8_t)mt_s8_clamp(mt_s8_rq(v, rq) + q->y.zero_point, q->act_min, q->act_max);
}

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
        acc = __smlad(xw[1], __sxtb16(mt_s8_ror8(v)), acc);
    }
#endif
    uint32_t sum = (uint32_t)acc;
    for (; k < n; k++) {
        sum += (uint32_t)(x16[mt_gemm_s8_pos(k)] * w[k]);
    }
    return (int32_t)sum;
}

int mt_linear_s8_forward(const mt_linear_params_t *p, const mt_s8_quant_t *q, const int8_t *x,
    const int8_t *w, const float *w_scale, const int32_t *bias, int8_t *y, mt_range_t *y_range,
    void *scratch) {
    lin_scratch_t s;
    lin_layout(p, scratch, &s);
    const int O = p->out_features, K = p->in_features, B = p->batch, kp = mt_gemm_s8_kpad(K);
    for (int o = 0; o < O; o++) {
        if (mt_s8_rq_from_real((q->x.scale * w_scale[o]) / q->y.scale, &s.rq[o])) {
            return -1;
        }
        s.mm[2 * o] = INT32_MAX;
        s.mm[2 * o + 1] = INT32_MIN;
    }
    int32_t *mm = y_range ? s.mm : NULL;
    if (B == 1) {
        mt_pack_s8_rows(x, K, 1, K, q->x.zero_point, 1, kp, s.apanel);
        for (int o = 0; o < O; o++) {
            const int32_t v = dot_row(s.apanel, w + (size_t)o * K, K, bias ? bias[o] : 0);
            y[o] = finish(v, &s.rq[o], mm ? mm + 2 * o : NULL, q);
        }
    } else {
        const int row_blocks = (B + 2) / 3;
        mt_pack_s8_rows(x, K, B, K, q->x.zero_point, 3, kp, s.apanel);
        for (int o0 = 0; o0 < O; o0 += 2) {
            const int cols = mt_s8_min(2, O - o0);
            mt_pack_s8_rows(w + (size_t)o0 * K, K, cols, K, 0, 2, kp, s.bpanel);
            const int32_t b0 = bias ? bias[o0] : 0, b1 = bias && cols > 1 ? bias[o0 + 1] : 0;
            for (int rb = 0; rb < row_blocks; rb++) {
                int32_t acc[6] = { b0, b1, b0, b1, b0, b1 };
                if (kp > 0) {
                    mt_gemm_s16_3x2(kp, (const int32_t *)(s.apanel + (size_t)rb * 3 * kp),
                        (const int32_t *)s.bpanel, acc);
                }
                for (int r = 0; r < 3 && rb * 3 + r < B; r++) {
                    for (int c = 0; c < cols; c++) {
                        const int o = o0 + c;
                        y[(size_t)(rb * 3 + r) * O + o] = finish(acc[r * 2 + c], &s.rq[o],
                            mm ? mm + 2 * o : NULL, q);
                    }
                }
            }
        }
    }
    if (y_range) {
        mt_s8_fold_range(O, s.mm, 2, q->x.scale, w_scale, y_range);
    }
    return 0;
}

// acc[k] += d0 * w0[k] + d1 * w1[k] for k < n (d0, d1 fit int16).
static void axpy2(int n, int32_t d0, const int8_t *w0, int32_t d1, const int8_t *w1, int32_t *acc) {
    int k = 0;
#if MT_S8_DSP
    // Pairs (w0[k], w1[k]) for SMLAD: SXTB16 gives (k, k + 2) of one row, PKHBT/PKHTB
    // regroup two rows: 17 instructions per 8 multiply-adds.
    const uint32_t d = ((uint32_t)d0 & 0xffffu) | ((uint32_t)d1 << 16);
    for (; k + 4 <= n; k += 4) {
        const uint32_t v0 = mt_s8_load32(w0 + k), v1 = mt_s8_load32(w1 + k);
        const uint32_t a02 = __sxtb16(v0), b02 = __sxtb16(v1);
        const uint32_t a13 = __sxtb16(mt_s8_ror8(v0)), b13 = __sxtb16(mt_s8_ror8(v1));
        acc[k] = __smlad(d, (a02 & 0xffffu) | (b02 << 16), acc[k]);
        acc[k + 1] = __smlad(d, (a13 & 0xffffu) | (b13 << 16), acc[k + 1]);
        acc[k + 2] = __smlad(d, (b02 & 0xffff0000u) | (a02 >> 16), acc[k + 2]);
        acc[k + 3] = __smlad(d, (b13 & 0xffff0000u) | (a13 >> 16), acc[k + 3]);
    }
#endif
    for (; k < n; k++) {
        acc[k] = (int32_t)((uint32_t)acc[k] + (uint32_t)(d0 * w0[k]) + (uint32_t)(d1 * w1[k]));
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
    int32_t amin = 0, amax = 0;
    for (int b = 0; b < p->batch; b++) {
        const int8_t *d = dy + (size_t)b * O;
        memset(s.acc, 0, (size_t)K * sizeof(int32_t));
        // Rows with zero error (common after a ReLU) cost nothing.
        int pending = -1;
        for (int o = 0; o < O; o++) {
            if (!d[o]) {
                continue;
            }
            if (pending < 0) {
                pending = o;
                continue;
            }
            axpy2(K, d[pending] * s.r[pending], w + (size_t)pending * K, d[o] * s.r[o],
                w + (size_t)o * K, s.acc);
            pending = -1;
        }
        if (pending >= 0) {
            axpy2(K, d[pending] * s.r[pending], w + (size_t)pending * K, 0,
                w + (size_t)pending * K, s.acc);
        }
        int8_t *out = dx + (size_t)b * K;
        for (int k = 0; k < K; k++) {
            const int32_t v = s.acc[k];
            amin = mt_s8_min(amin, v);
            amax = mt_s8_max(amax, v);
            out[k] = (int8_t)mt_s8_clamp(mt_s8_rq(v, &rq), -MT_S8_SYM_MAX, MT_S8_SYM_MAX);
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
    for (int o = 0; o < O; o++) {
        if (mask && !mask[o]) {
            continue;
        }
        // acc[k] = sum over the batch of dy[b][o] * (x[b][k] - zp); rows with zero error
        // (common after a ReLU) cost nothing.
        int32_t bsum = 0, first = 1;
        for (int b = 0; b < B; b++) {
            const int32_t d = dy[(size_t)b * O + o];
            const int8_t *xb = x + (size_t)b * K;
            bsum += d;
            if (!d) {
                continue;
            }
            if (first) {
                for (int k = 0; k < K; k++) {
                    s.acc[k] = d * ((int32_t)xb[k] - zp);
                }
                first = 0;
            } else {
                for (int k = 0; k < K; k++) {
                    s.acc[k] += d * ((int32_t)xb[k] - zp);
                }
            }
        }
        if (first) {
            memset(s.acc, 0, (size_t)K * sizeof(int32_t));
        }
        if (b_stats) {
            mt_grad_stats_add(b_stats, &bsum, 1);
        }
        if (u) {
            mt_s8_update_row(u, &step, K, s.acc, w + (size_t)o * K, &w_scale[o],
                bias ? &bias[o] : NULL, bsum, w_stats);
        } else if (w_stats) {
            mt_grad_stats_add(w_stats, s.acc, K);
        }
    }
    return 0;
}
