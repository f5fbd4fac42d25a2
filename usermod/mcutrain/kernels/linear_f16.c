// float16 Linear layer: blocks widened to fp32 in the scratch, fp32 GEMMs, one rounding
// per output element.
#include "gemm_f32.h"
#include "linear_f16.h"

// Most scratch the blocking aims for (16 KB). Of a layer's budget the weight block may
// take half, and sums run over at most budget / 16 inputs per GEMM call (256 at most).
#define BUDGET 4096

static inline int min_int(int a, int b) {
    return a < b ? a : b;
}

static inline int max_int(int a, int b) {
    return a > b ? a : b;
}

// The GEMM C[m][n] (+)= sum over k, in blocks: mb rows of the batch, nb columns, kb terms.
// The weight block is nb x kb (or kb x nb), the activation block mb x kb, C mb x nb. The
// weight-gradient pass uses the same sizes with C = the nb x kb weight block's sums and
// the batch as the sum.
typedef struct {
    int mb, nb, kb;
} plan_t;

// The scratch a layer's blocks aim for: a quarter of its weights and one sample's x and y
// (blocks need not grow with the batch), at most BUDGET. The fp32 kernel needs none, so a
// fixed 16 KB would cost a small layer more than fp16 saves it; layers of 16K floats and
// more keep the full blocks. Blocks never go below 4 wide (or the whole dimension), which
// may take more.
static int layer_budget(const mt_linear_params_t *p) {
    const size_t tensors = (size_t)p->in_features + (size_t)p->out_features
                           + (size_t)p->in_features * (size_t)p->out_features;
    return tensors / 4 < BUDGET ? (int)(tensors / 4) : BUDGET;
}

static int k_block(int budget) {
    return max_int(4, (budget / 16) & ~3);
}

// Rows of the batch per block once the nb x kb weight block is taken.
static int batch_block(int budget, int m, int nb, int kb) {
    return min_int(m, max_int(4, ((budget - nb * kb) / (kb + nb)) & ~3));
}

static plan_t plan(int budget, int m, int n, int k) {
    plan_t b;
    b.kb = min_int(k, k_block(budget));
    b.nb = min_int(n, max_int(4, (budget / 2 / b.kb) & ~3));
    b.mb = batch_block(budget, m, b.nb, b.kb);
    return b;
}

static int plan_floats(plan_t b) {
    return b.nb * b.kb + b.mb * b.kb + b.mb * b.nb;
}

// The input gradient reads weight rows along its columns (n): blocks of up to
// budget / 16 columns keep the converted runs long, and the sum over outputs is cut to fit.
static plan_t plan_columns(int budget, int m, int n, int k) {
    plan_t b;
    b.nb = min_int(n, k_block(budget));
    b.kb = min_int(k, max_int(4, (budget / 2 / b.nb) & ~3));
    b.mb = batch_block(budget, m, b.nb, b.kb);
    return b;
}

size_t mt_linear_f16_scratch_floats(const mt_linear_params_t *p) {
    const int budget = layer_budget(p), m = p->batch, in = p->in_features, out = p->out_features;
    const int forward = plan_floats(plan(budget, m, out, in));
    const int grad_input = plan_floats(plan_columns(budget, m, in, out));
    return (size_t)max_int(1, max_int(forward, grad_input));
}

// dst (rows x cols, dense) = src block (rows of `ld` halves), widened.
static void block_to_f32(const uint16_t *src, int ld, int rows, int cols, float *dst) {
    for (int r = 0; r < rows; r++) {
        mt_f16_to_f32_operands(src + r * ld, dst + r * cols, (size_t)cols);
    }
}

static void block_to_f16(const float *src, int rows, int cols, uint16_t *dst, int ld) {
    for (int r = 0; r < rows; r++) {
        mt_f32_to_f16_results(src + r * cols, dst + r * ld, (size_t)cols);
    }
}

static void zero_floats(float *dst, int n) {
    for (int i = 0; i < n; i++) {
        dst[i] = 0.0f;
    }
}

void mt_linear_f16_forward(const mt_linear_params_t *p, const uint16_t *x,
    const uint16_t *weight, const uint16_t *bias, uint16_t *y, float *scratch) {
    const int B = p->batch, in = p->in_features, out = p->out_features;
    const plan_t b = plan(layer_budget(p), B, out, in);
    float *wbuf = scratch, *xbuf = wbuf + b.nb * b.kb, *acc = xbuf + b.mb * b.kb;
    for (int r0 = 0; r0 < B; r0 += b.mb) {
        const int nr = min_int(b.mb, B - r0);
        for (int o0 = 0; o0 < out; o0 += b.nb) {
            const int nob = min_int(b.nb, out - o0);
            for (int r = 0; r < nr; r++) {
                if (bias) {
                    mt_f16_to_f32_operands(bias + o0, acc + r * nob, (size_t)nob);
                } else {
                    zero_floats(acc + r * nob, nob);
                }
            }
            for (int k0 = 0; k0 < in; k0 += b.kb) {
                const int nk = min_int(b.kb, in - k0);
                block_to_f32(weight + o0 * in + k0, in, nob, nk, wbuf);
                // With a single block of inputs, the x block stays from the first o0.
                if (o0 == 0 || nk < in) {
                    block_to_f32(x + r0 * in + k0, in, nr, nk, xbuf);
                }
                const mt_gemm_shape_t s = { nr, nob, nk, nk, nk, nob };
                mt_gemm_f32_nt(&s, 1.0f, xbuf, wbuf, acc);
            }
            block_to_f16(acc, nr, nob, y + r0 * out + o0, out);
        }
    }
}

void mt_linear_f16_grad_input(const mt_linear_params_t *p, const uint16_t *dy,
    const uint16_t *weight, uint16_t *dx, float *scratch) {
    const int B = p->batch, in = p->in_features, out = p->out_features;
    const plan_t b = plan_columns(layer_budget(p), B, in, out);
    float *wbuf = scratch, *dybuf = wbuf + b.nb * b.kb, *acc = dybuf + b.mb * b.kb;
    for (int r0 = 0; r0 < B; r0 += b.mb) {
        const int nr = min_int(b.mb, B - r0);
        for (int i0 = 0; i0 < in; i0 += b.nb) {
            const int nib = min_int(b.nb, in - i0);
            zero_floats(acc, nr * nib);
            for (int k0 = 0; k0 < out; k0 += b.kb) {
                const int nk = min_int(b.kb, out - k0);
                block_to_f32(weight + k0 * in + i0, in, nk, nib, wbuf);
                if (i0 == 0 || nk < out) {
                    block_to_f32(dy + r0 * out + k0, out, nr, nk, dybuf);
                }
                const mt_gemm_shape_t s = { nr, nib, nk, nk, nib, nib };
                mt_gemm_f32_nn(&s, 1.0f, dybuf, wbuf, acc);
            }
            block_to_f16(acc, nr, nib, dx + r0 * in + i0, in);
        }
    }
}

// Where the weight-gradient sums go (see conv2d_f16.c): fp16 rounded once, or fp32.
typedef struct {
    float alpha;
    uint16_t *h;
    float *f;
    mt_f16_rng_t *rng;
} sink_t;

static void sink_add(const sink_t *s, int offset, const float *g, int n) {
    if (s->h) {
        mt_f16_add_scaled(s->h + offset, g, s->alpha, (size_t)n, s->rng);
    } else {
        float *f = s->f + offset;
        for (int i = 0; i < n; i++) {
            f[i] += s->alpha * g[i];
        }
    }
}

// Batch 1, a rank-1 update: each weight row adds alpha * dy[o] times x, straight from x
// widened once per block.
static void grad_weight_rank1(const mt_linear_params_t *p, const uint16_t *x, const uint16_t *dy,
    const sink_t *dw, float *xbuf, int kb) {
    const int in = p->in_features;
    for (int i0 = 0; i0 < in; i0 += kb) {
        const int nib = min_int(kb, in - i0);
        mt_f16_to_f32_operands(x + i0, xbuf, (size_t)nib);
        for (int o = 0; o < p->out_features; o++) {
            const sink_t row = { dw->alpha * mt_f16_operand(dy + o), dw->h, dw->f, dw->rng };
            sink_add(&row, o * in + i0, xbuf, nib);
        }
    }
}

// Larger batches: the sums over the batch for a block of weights (nob x nib, in acc) by
// GEMM, then added to the weights.
static void grad_weight_blocks(const mt_linear_params_t *p, const uint16_t *x, const uint16_t *dy,
    const sink_t *dw, plan_t b, float *scratch) {
    const int B = p->batch, in = p->in_features, out = p->out_features;
    float *acc = scratch, *xbuf = acc + b.nb * b.kb, *dybuf = xbuf + b.mb * b.kb;
    for (int o0 = 0; o0 < out; o0 += b.nb) {
        const int nob = min_int(b.nb, out - o0);
        for (int i0 = 0; i0 < in; i0 += b.kb) {
            const int nib = min_int(b.kb, in - i0);
            zero_floats(acc, nob * nib);
            for (int r0 = 0; r0 < B; r0 += b.mb) {
                const int nr = min_int(b.mb, B - r0);
                block_to_f32(dy + r0 * out + o0, out, nr, nob, dybuf);
                block_to_f32(x + r0 * in + i0, in, nr, nib, xbuf);
                const mt_gemm_shape_t s = { nob, nib, nr, nob, nib, nib };
                mt_gemm_f32_tn(&s, 1.0f, dybuf, xbuf, acc);
            }
            for (int o = 0; o < nob; o++) {
                sink_add(dw, (o0 + o) * in + i0, acc + o * nib, nib);
            }
        }
    }
}

static void grad_weight(const mt_linear_params_t *p, const uint16_t *x, const uint16_t *dy,
    const sink_t *dw, const sink_t *db, float *scratch) {
    const int B = p->batch, out = p->out_features;
    const plan_t b = plan(layer_budget(p), B, out, p->in_features);
    if (B == 1) {
        grad_weight_rank1(p, x, dy, dw, scratch, b.kb);
    } else {
        grad_weight_blocks(p, x, dy, dw, b, scratch);
    }
    if (db->h || db->f) {
        float *sums = scratch;
        for (int o0 = 0; o0 < out; o0 += b.nb) {
            const int nob = min_int(b.nb, out - o0);
            zero_floats(sums, nob);
            for (int r = 0; r < B; r++) {
                const uint16_t *d = dy + r * out + o0;
                for (int o = 0; o < nob; o++) {
                    sums[o] += mt_f16_operand(d + o);
                }
            }
            sink_add(db, o0, sums, nob);
        }
    }
}

void mt_linear_f16_grad_weight(const mt_linear_params_t *p, const uint16_t *x,
    const uint16_t *dy, float alpha, uint16_t *dweight, uint16_t *dbias, float *scratch,
    mt_f16_rng_t *rng) {
    const sink_t dw = { alpha, dweight, NULL, rng }, db = { alpha, dbias, NULL, rng };
    grad_weight(p, x, dy, &dw, &db, scratch);
}

void mt_linear_f16_grad_weight_f32(const mt_linear_params_t *p, const uint16_t *x,
    const uint16_t *dy, float alpha, float *dweight, float *dbias, float *scratch) {
    const sink_t dw = { alpha, NULL, dweight, NULL }, db = { alpha, NULL, dbias, NULL };
    grad_weight(p, x, dy, &dw, &db, scratch);
}
