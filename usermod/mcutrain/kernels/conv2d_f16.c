// float16 Conv2d: fp16 tiles converted to fp32 in the scratch, fp32 GEMMs (or, for
// depthwise, the fp32 depthwise kernels) on them, results rounded to fp16 once.
#include "conv2d_f16.h"
#include "gemm_f32.h"
#include "checked_size.h"

// Most scratch the tiling aims for (16 KB); one fp32 block of weights or weight-gradient
// sums may take 5/8 of a layer's budget. Bigger blocks convert the im2col tiles fewer times.
#define BUDGET 4096
#define TILE_ROWS_MIN 4
#define TILE_ROWS_MAX 64

static inline int min_int(int a, int b) {
    return a < b ? a : b;
}

static inline int max_int(int a, int b) {
    return a > b ? a : b;
}

// Floor and ceiling of a / b for b > 0 and any sign of a.
static int floor_div(int a, int b) {
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

static int ceil_div(int a, int b) {
    return -floor_div(-a, b);
}

static int is_depthwise(const mt_conv2d_params_t *p) {
    return p->groups == p->in_c && p->out_c == p->in_c;
}

static int patch_len(const mt_conv2d_params_t *p) {
    return p->kernel_h * p->kernel_w * (p->in_c / p->groups);
}

static int out_pixels(const mt_conv2d_params_t *p) {
    return p->batch * p->out_h * p->out_w;
}

static void zero_floats(float *dst, int n) {
    for (int i = 0; i < n; i++) {
        dst[i] = 0.0f;
    }
}

static void zero_halves(uint16_t *dst, int n) {
    for (int i = 0; i < n; i++) {
        dst[i] = MT_F16_ZERO;
    }
}

// Where a weight-gradient pass adds alpha * (its fp32 sums): fp16 (rounded once, nearest
// even or stochastic) or fp32.
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

// ---- tiling plans ---------------------------------------------------------------------------

// The scratch a layer's tiles aim for: half what the fp32 kernels need, or a quarter of
// its weights and one sample's x and y if more (tiles need not grow with the batch), at
// most BUDGET. A fixed 16 KB would cost a small layer more than fp16 saves it; layers of
// 16K floats and more keep the full tiles. The plans never go below their smallest tiles,
// which may take more.
static int layer_budget(const mt_conv2d_params_t *p) {
    const size_t tensors = (size_t)p->in_h * p->in_w * p->in_c
                           + (size_t)p->out_h * p->out_w * p->out_c + (size_t)p->out_c * patch_len(p);
    size_t floats = mt_conv2d_f32_scratch_floats(p) / 2;
    floats = floats > tensors / 4 ? floats : tensors / 4;
    return floats < BUDGET ? (int)floats : BUDGET;
}

static int block_budget(int budget) {
    return budget / 8 * 5;
}

// Block of n_total channels whose fp32 copy (len floats each) fits `block` floats: all of
// them if they fit, else equal blocks of a multiple of 4 (the GEMM's width), at least 4.
static int channel_block(int n_total, int len, int block) {
    if (n_total * len <= block) {
        return n_total;
    }
    const int most = max_int(4, (block / len) & ~3);
    const int blocks = (n_total + most - 1) / most;
    return min_int(n_total, ((n_total + blocks - 1) / blocks + 3) & ~3);
}

// Pixels per tile when `fixed` of the budget's floats are taken and each pixel needs
// row_len + block more: a multiple of 4 (the GEMM's block height) in [4, 64], at most `total`.
static int tile_rows(int budget, int fixed, int row_len, int block, int total) {
    int rows = (budget - fixed) / (row_len + block);
    rows = max_int(TILE_ROWS_MIN, min_int(TILE_ROWS_MAX, rows)) & ~3;
    return min_int(rows, total);
}

// Forward: an fp32 block of ob output channels' weights (ob x K), an im2col tile
// (rows x K) and the output tile (rows x ob).
typedef struct {
    int ob, rows;
} forward_plan_t;

static forward_plan_t forward_plan(const mt_conv2d_params_t *p) {
    const int K = patch_len(p), og = p->out_c / p->groups, budget = layer_budget(p);
    forward_plan_t f;
    f.ob = channel_block(og, K, block_budget(budget));
    f.rows = tile_rows(budget, f.ob * K, K, f.ob, out_pixels(p));
    return f;
}

// Kernel taps i < k with i = phase (mod stride): those an input pixel of that phase meets.
static int taps_in_phase(int k, int stride, int phase) {
    return phase < k ? (k - phase + stride - 1) / stride : 0;
}

// Input gradient: per input pixel a row of gathered dy values, og for each of tb taps
// (len = tb * og); the weights of those taps reordered tap-major as a len x cb block; the
// output tile rows x cb, which sums over the blocks of taps. All taps of a phase go in one
// block when the row is short, up to budget / 8 (the weights are then converted once per
// channel block); longer rows are cut into blocks of about budget / 32 so the scratch
// stays small, at the price of converting the weights once per tile.

typedef struct {
    int tb, len, cb, rows;
} grad_input_plan_t;

static grad_input_plan_t grad_input_plan(const mt_conv2d_params_t *p) {
    const int cg = p->in_c / p->groups, og = p->out_c / p->groups;
    const int taps = taps_in_phase(p->kernel_h, p->stride_h, 0) * taps_in_phase(p->kernel_w, p->stride_w, 0);
    const int budget = layer_budget(p);
    grad_input_plan_t g;
    g.tb = taps * og <= budget / 8 ? taps : max_int(1, min_int(taps, budget / 32 / og));
    g.len = g.tb * og;
    g.cb = channel_block(cg, g.len, block_budget(budget));
    g.rows = tile_rows(budget, g.len * g.cb, g.len, g.cb, p->batch * p->in_h * p->in_w);
    return g;
}

// Weight gradient: fp32 sums for ob output channels times krb kernel rows (ob x kb, kb =
// krb * kernel_w * cg), an im2col tile of those kernel rows (rows x kb) and a dy tile
// (rows x ob). Blocking by kernel rows rather than output channels converts each im2col
// element once; only the (small) dy tile is converted once per block.
typedef struct {
    int ob, krb, rows;
} grad_weight_plan_t;

static grad_weight_plan_t grad_weight_plan(const mt_conv2d_params_t *p) {
    const int og = p->out_c / p->groups, row_len = p->kernel_w * (p->in_c / p->groups);
    const int budget = layer_budget(p), block = block_budget(budget);
    grad_weight_plan_t w;
    if (og * row_len <= block) {
        w.ob = og;
        w.krb = min_int(p->kernel_h, block / (og * row_len));
    } else {
        w.ob = channel_block(og, row_len, block);
        w.krb = 1;
    }
    const int kb = w.krb * row_len;
    w.rows = tile_rows(budget, w.ob * kb, kb, w.ob, out_pixels(p));
    return w;
}

// Depthwise: tiles of the image in fp32 for the fp32 depthwise kernels. Forward and
// weight gradient take a tile of rows x cols output pixels and the input pixels they read;
// the input gradient takes a tile of input pixels and the dy pixels that reach them.
// Scratch: fp32 weights (or, in the weight gradient, their sums) and bias, then the two
// tiles.
typedef struct {
    int rows, cols;
} dw_tile_t;

// Input pixels along one axis read by n consecutive outputs.
static int dw_in_extent(int n, int stride, int kernel, int in) {
    return min_int(in, (n - 1) * stride + kernel);
}

// Outputs along one axis that reach n consecutive inputs (one more when the kernel is
// shorter than the stride, where in_axis() may start a row early).
static int dw_out_extent(int n, int stride, int kernel, int out) {
    return min_int(out, (n + kernel - 2) / stride + 1 + (kernel < stride));
}

static int dw_fixed(const mt_conv2d_params_t *p) {
    const int C = p->in_c, taps = p->kernel_h * p->kernel_w;
    return C * taps + C;
}

static int dw_out_tile_floats(const mt_conv2d_params_t *p, int rows, int cols) {
    return (dw_in_extent(rows, p->stride_h, p->kernel_h, p->in_h)
            * dw_in_extent(cols, p->stride_w, p->kernel_w, p->in_w) + rows * cols) * p->in_c;
}

static int dw_in_tile_floats(const mt_conv2d_params_t *p, int rows, int cols) {
    return (rows * cols + dw_out_extent(rows, p->stride_h, p->kernel_h, p->out_h)
            * dw_out_extent(cols, p->stride_w, p->kernel_w, p->out_w)) * p->in_c;
}

// The largest tile within the layer's budget: whole rows if one fits, then as many rows as
// fit; at least one pixel.
static dw_tile_t dw_tile(const mt_conv2d_params_t *p, int out_side) {
    const int avail = layer_budget(p) - dw_fixed(p);
    const int max_rows = out_side ? p->out_h : p->in_h, max_cols = out_side ? p->out_w : p->in_w;
    dw_tile_t t = { 1, 1 };
    while (t.cols < max_cols && (out_side ? dw_out_tile_floats(p, 1, t.cols + 1)
                                          : dw_in_tile_floats(p, 1, t.cols + 1)) <= avail) {
        t.cols++;
    }
    while (t.rows < max_rows && (out_side ? dw_out_tile_floats(p, t.rows + 1, t.cols)
                                          : dw_in_tile_floats(p, t.rows + 1, t.cols)) <= avail) {
        t.rows++;
    }
    return t;
}

// A plan's fp32 blocks: a weights block (nb x k), an im2col tile (rows x k) and an
// output tile (rows x nb), saturating for a layer too large to plan (checked_size.h).
static size_t block_floats(int nb, int k, int rows) {
    bool overflow = false;
    const size_t w = mt_mul_size((size_t)nb, (size_t)k, &overflow);
    const size_t t = mt_mul_size((size_t)rows, (size_t)k, &overflow);
    const size_t y = mt_mul_size((size_t)rows, (size_t)nb, &overflow);
    return mt_add_size(mt_add_size(w, t, &overflow), y, &overflow);
}

size_t mt_conv2d_f16_scratch_floats(const mt_conv2d_params_t *p) {
    if (is_depthwise(p)) {
        const dw_tile_t out_tile = dw_tile(p, 1), in_tile = dw_tile(p, 0);
        const int out_floats = dw_out_tile_floats(p, out_tile.rows, out_tile.cols);
        const int in_floats = dw_in_tile_floats(p, in_tile.rows, in_tile.cols);
        return (size_t)(dw_fixed(p) + max_int(out_floats, in_floats));
    }
    const int K = patch_len(p), row_len = p->kernel_w * (p->in_c / p->groups);
    const forward_plan_t f = forward_plan(p);
    const grad_input_plan_t g = grad_input_plan(p);
    const grad_weight_plan_t w = grad_weight_plan(p);
    const int kb = w.krb * row_len;
    const size_t forward = block_floats(f.ob, K, f.rows);
    const size_t grad_input = block_floats(g.cb, g.len, g.rows);
    const size_t grad_weight = block_floats(w.ob, kb, w.rows);
    return mt_max_size(forward, mt_max_size(grad_input, grad_weight));
}

// ---- im2col on a tile of output pixels ------------------------------------------------------

typedef struct {
    int image_offset;   // halves from the start of x to image n
    int ih0, iw0, kw_lo, kw_hi;
} patch_t;

static patch_t patch_of(const mt_conv2d_params_t *p, int q) {
    const int per_image = p->out_h * p->out_w, r = q % per_image;
    patch_t t;
    t.image_offset = q / per_image * p->in_h * p->in_w * p->in_c;
    t.ih0 = r / p->out_w * p->stride_h - p->pad_h;
    t.iw0 = r % p->out_w * p->stride_w - p->pad_w;
    t.kw_lo = max_int(0, -t.iw0);
    t.kw_hi = min_int(p->kernel_w, p->in_w - t.iw0);
    return t;
}

// col[t][:] = kernel rows [i0, i1) of the patch of group g's channels under output pixel
// q0 + t, widened to fp32, zeros for padding.
static void im2col_tile(const mt_conv2d_params_t *p, const uint16_t *x, int q0, int rows, int g,
    int i0, int i1, float *col) {
    const int in_c = p->in_c, cg = in_c / p->groups, kw = p->kernel_w;
    const int row_len = kw * cg;
    for (int t = 0; t < rows; t++) {
        const patch_t pt = patch_of(p, q0 + t);
        const uint16_t *image = x + pt.image_offset + g * cg;
        for (int i = i0; i < i1; i++, col += row_len) {
            const int ih = pt.ih0 + i;
            if (ih < 0 || ih >= p->in_h || pt.kw_lo >= pt.kw_hi) {
                zero_floats(col, row_len);
                continue;
            }
            const uint16_t *src = image + (ih * p->in_w + pt.iw0 + pt.kw_lo) * in_c;
            zero_floats(col, pt.kw_lo * cg);
            if (cg == in_c) {
                mt_f16_to_f32_operands(src, col + pt.kw_lo * cg, (size_t)((pt.kw_hi - pt.kw_lo) * cg));
            } else {
                for (int j = pt.kw_lo; j < pt.kw_hi; j++, src += in_c) {
                    mt_f16_to_f32_operands(src, col + j * cg, (size_t)cg);
                }
            }
            zero_floats(col + pt.kw_hi * cg, (kw - pt.kw_hi) * cg);
        }
    }
}

// ---- general convolutions -------------------------------------------------------------------

static void general_forward(const mt_conv2d_params_t *p, const uint16_t *x, const uint16_t *weight,
    const uint16_t *bias, uint16_t *y, float *scratch) {
    const int K = patch_len(p), out_c = p->out_c, og = out_c / p->groups, pixels = out_pixels(p);
    const forward_plan_t f = forward_plan(p);
    float *wbuf = scratch, *col = wbuf + f.ob * K, *out = col + f.rows * K;
    for (int g = 0; g < p->groups; g++) {
        for (int o0 = 0; o0 < og; o0 += f.ob) {
            const int nob = min_int(f.ob, og - o0), oc0 = g * og + o0;
            mt_f16_to_f32_operands(weight + oc0 * K, wbuf, (size_t)(nob * K));
            for (int q0 = 0; q0 < pixels; q0 += f.rows) {
                const int rows = min_int(f.rows, pixels - q0);
                im2col_tile(p, x, q0, rows, g, 0, p->kernel_h, col);
                if (bias) {
                    mt_f16_to_f32_operands(bias + oc0, out, (size_t)nob);
                } else {
                    zero_floats(out, nob);
                }
                for (int t = 1; t < rows; t++) {
                    for (int c = 0; c < nob; c++) {
                        out[t * nob + c] = out[c];
                    }
                }
                const mt_gemm_shape_t s = { rows, nob, K, K, K, nob };
                mt_gemm_f32_nt(&s, 1.0f, col, wbuf, out);
                for (int t = 0; t < rows; t++) {
                    mt_f32_to_f16_results(out + t * nob, y + (q0 + t) * out_c + oc0, (size_t)nob);
                }
            }
        }
    }
}

// Input pixels whose valid taps are i = a (mod stride_h), j = b (mod stride_w): rows
// ih = ih_first + u * stride_h (u < nh), columns iw = iw_first + v * stride_w (v < nw).
typedef struct {
    int a, b;               // the phase
    int kth, ktw;           // its taps along h and w
    int ih_first, iw_first, nh, nw;
} phase_t;

static phase_t phase_of(const mt_conv2d_params_t *p, int a, int b) {
    phase_t ph;
    ph.a = a;
    ph.b = b;
    ph.kth = taps_in_phase(p->kernel_h, p->stride_h, a);
    ph.ktw = taps_in_phase(p->kernel_w, p->stride_w, b);
    // ih + pad_h = a (mod stride_h)
    ph.ih_first = a - p->pad_h - floor_div(a - p->pad_h, p->stride_h) * p->stride_h;
    ph.iw_first = b - p->pad_w - floor_div(b - p->pad_w, p->stride_w) * p->stride_w;
    ph.nh = ph.ih_first < p->in_h ? (p->in_h - 1 - ph.ih_first) / p->stride_h + 1 : 0;
    ph.nw = ph.iw_first < p->in_w ? (p->in_w - 1 - ph.iw_first) / p->stride_w + 1 : 0;
    return ph;
}

// Offset (in halves) of channel 0 of the phase's u-th pixel (in batch-major raster order).
static int phase_pixel(const mt_conv2d_params_t *p, const phase_t *ph, int u, int *ih, int *iw) {
    const int per_image = ph->nh * ph->nw, n = u / per_image, r = u % per_image;
    *ih = ph->ih_first + r / ph->nw * p->stride_h;
    *iw = ph->iw_first + r % ph->nw * p->stride_w;
    return ((n * p->in_h + *ih) * p->in_w + *iw) * p->in_c;
}

// wt[(t - t0, o)][c] = weight[g * og + o][tap t of the phase][c0 + c] for taps
// [t0, t0 + nt) of the phase (numbered row-major over its kth x ktw taps).
static void phase_weights(const mt_conv2d_params_t *p, const phase_t *ph, const uint16_t *weight,
    int g, int t0, int nt, int c0, int ncb, float *wt) {
    const int cg = p->in_c / p->groups, og = p->out_c / p->groups, taps = p->kernel_h * p->kernel_w;
    for (int t = t0; t < t0 + nt; t++) {
        const int i = ph->a + t / ph->ktw * p->stride_h, j = ph->b + t % ph->ktw * p->stride_w;
        const uint16_t *w = weight + ((g * og) * taps + i * p->kernel_w + j) * cg + c0;
        for (int o = 0; o < og; o++, w += taps * cg, wt += ncb) {
            mt_f16_to_f32_operands(w, wt, (size_t)ncb);
        }
    }
}

// col[u - u0][(t - t0, o)] = dy at the output pixel that reads input pixel u through tap t
// of the phase (channel g * og + o), or 0 where that output pixel does not exist.
static void phase_gather(const mt_conv2d_params_t *p, const phase_t *ph, const uint16_t *dy,
    int g, int u0, int rows, int t0, int nt, float *col) {
    const int og = p->out_c / p->groups, sh = p->stride_h, sw = p->stride_w;
    for (int u = u0; u < u0 + rows; u++) {
        int ih, iw;
        phase_pixel(p, ph, u, &ih, &iw);
        const uint16_t *dyn = dy + u / (ph->nh * ph->nw) * p->out_h * p->out_w * p->out_c + g * og;
        for (int t = t0; t < t0 + nt; t++, col += og) {
            const int num_h = ih + p->pad_h - (ph->a + t / ph->ktw * sh);
            const int num_w = iw + p->pad_w - (ph->b + t % ph->ktw * sw);
            const int oh = num_h / sh, ow = num_w / sw;   // exact: the phase makes them multiples
            if (num_h >= 0 && oh < p->out_h && num_w >= 0 && ow < p->out_w) {
                mt_f16_to_f32_operands(dyn + (oh * p->out_w + ow) * p->out_c, col, (size_t)og);
            } else {
                zero_floats(col, og);
            }
        }
    }
}

// dx = sum over taps and output channels of dy * weight, gathered per input pixel: each dx
// element is one fp32 sum, rounded once.
static void general_grad_input(const mt_conv2d_params_t *p, const uint16_t *dy,
    const uint16_t *weight, uint16_t *dx, float *scratch) {
    const int cg = p->in_c / p->groups, og = p->out_c / p->groups;
    const grad_input_plan_t plan = grad_input_plan(p);
    float *wt = scratch, *col = wt + plan.len * plan.cb, *out = col + plan.rows * plan.len;
    for (int g = 0; g < p->groups; g++) {
        for (int a = 0; a < p->stride_h; a++) {
            for (int b = 0; b < p->stride_w; b++) {
                const phase_t ph = phase_of(p, a, b);
                const int pixels = p->batch * ph.nh * ph.nw, taps = ph.kth * ph.ktw;
                int ih, iw;
                if (pixels > 0 && taps == 0) {
                    // No tap reads these pixels (kernel smaller than the stride).
                    for (int u = 0; u < pixels; u++) {
                        zero_halves(dx + phase_pixel(p, &ph, u, &ih, &iw) + g * cg, cg);
                    }
                }
                if (pixels == 0 || taps == 0) {
                    continue;
                }
                const int one_block = taps <= plan.tb;
                for (int c0 = 0; c0 < cg; c0 += plan.cb) {
                    const int ncb = min_int(plan.cb, cg - c0);
                    if (one_block) {
                        phase_weights(p, &ph, weight, g, 0, taps, c0, ncb, wt);
                    }
                    for (int u0 = 0; u0 < pixels; u0 += plan.rows) {
                        const int rows = min_int(plan.rows, pixels - u0);
                        zero_floats(out, rows * ncb);
                        for (int t0 = 0; t0 < taps; t0 += plan.tb) {
                            const int nt = min_int(plan.tb, taps - t0), L = nt * og;
                            if (!one_block) {
                                phase_weights(p, &ph, weight, g, t0, nt, c0, ncb, wt);
                            }
                            phase_gather(p, &ph, dy, g, u0, rows, t0, nt, col);
                            const mt_gemm_shape_t s = { rows, ncb, L, L, ncb, ncb };
                            mt_gemm_f32_nn(&s, 1.0f, col, wt, out);
                        }
                        for (int t = 0; t < rows; t++) {
                            mt_f32_to_f16_results(out + t * ncb,
                                dx + phase_pixel(p, &ph, u0 + t, &ih, &iw) + g * cg + c0, (size_t)ncb);
                        }
                    }
                }
            }
        }
    }
}

static void general_grad_weight(const mt_conv2d_params_t *p, const uint16_t *x, const uint16_t *dy,
    const sink_t *dw, float *scratch) {
    const int K = patch_len(p), out_c = p->out_c, og = out_c / p->groups, pixels = out_pixels(p);
    const int row_len = p->kernel_w * (p->in_c / p->groups);
    const grad_weight_plan_t plan = grad_weight_plan(p);
    const int kb_max = plan.krb * row_len;
    float *acc = scratch, *col = acc + plan.ob * kb_max, *dyt = col + plan.rows * kb_max;
    for (int g = 0; g < p->groups; g++) {
        for (int o0 = 0; o0 < og; o0 += plan.ob) {
            const int nob = min_int(plan.ob, og - o0), oc0 = g * og + o0;
            for (int i0 = 0; i0 < p->kernel_h; i0 += plan.krb) {
                const int i1 = min_int(p->kernel_h, i0 + plan.krb), kb = (i1 - i0) * row_len;
                zero_floats(acc, nob * kb);
                for (int q0 = 0; q0 < pixels; q0 += plan.rows) {
                    const int rows = min_int(plan.rows, pixels - q0);
                    im2col_tile(p, x, q0, rows, g, i0, i1, col);
                    for (int t = 0; t < rows; t++) {
                        mt_f16_to_f32_operands(dy + (q0 + t) * out_c + oc0, dyt + t * nob, (size_t)nob);
                    }
                    const mt_gemm_shape_t s = { nob, kb, rows, nob, kb, kb };
                    mt_gemm_f32_tn(&s, 1.0f, dyt, col, acc);
                }
                for (int o = 0; o < nob; o++) {
                    sink_add(dw, (oc0 + o) * K + i0 * row_len, acc + o * kb, kb);
                }
            }
        }
    }
}

// ---- depthwise: tiles through the fp32 depthwise kernels ----------------------------------

// One axis of a tile's fp32 sub-problem. For outputs [o0, o1): the inputs they read,
// [lo, lo + n), with `pad` of the sub-problem's padding before them (what lies before lo,
// padding or not, is out of the tile). For inputs [i0, i1): the outputs that reach them,
// started no later than the first whose window starts at or before i0, so pad >= 0;
// contributions that fall outside the tile are dropped by the fp32 kernel as padding.
typedef struct {
    int lo, n, pad;
} axis_t;

static axis_t out_axis(int o0, int o1, int stride, int pad, int kernel, int in) {
    const int start = o0 * stride - pad;
    axis_t a;
    a.lo = max_int(0, start);
    a.n = max_int(0, min_int(in, (o1 - 1) * stride - pad + kernel) - a.lo);
    a.pad = a.lo - start;
    return a;
}

static axis_t in_axis(int i0, int i1, int stride, int pad, int kernel, int out) {
    const int top = i0 + pad;
    axis_t a;
    a.lo = max_int(0, min_int(ceil_div(top - kernel + 1, stride), floor_div(top, stride)));
    a.n = max_int(0, min_int(out, floor_div(i1 - 1 + pad, stride) + 1) - a.lo);
    a.pad = top - a.lo * stride;
    return a;
}

// Pixels [r0, r0 + rows) x [c0, c0 + cols) of an image `width` pixels wide, C channels.
static void tile_to_f32(const uint16_t *image, int width, int C, int r0, int rows, int c0,
    int cols, float *dst) {
    for (int r = 0; r < rows; r++) {
        mt_f16_to_f32_operands(image + ((r0 + r) * width + c0) * C, dst + r * cols * C,
            (size_t)(cols * C));
    }
}

static void tile_to_f16(const float *src, int C, int r0, int rows, int c0, int cols,
    uint16_t *image, int width) {
    for (int r = 0; r < rows; r++) {
        mt_f32_to_f16_results(src + r * cols * C, image + ((r0 + r) * width + c0) * C,
            (size_t)(cols * C));
    }
}

// The fp32 problem for output tile [oh0, oh1) x [ow0, ow1) of one image; *h, *w: the input
// pixels it reads.
static mt_conv2d_params_t out_tile(const mt_conv2d_params_t *p, int oh0, int oh1, int ow0,
    int ow1, axis_t *h, axis_t *w) {
    *h = out_axis(oh0, oh1, p->stride_h, p->pad_h, p->kernel_h, p->in_h);
    *w = out_axis(ow0, ow1, p->stride_w, p->pad_w, p->kernel_w, p->in_w);
    mt_conv2d_params_t sub = *p;
    sub.batch = 1;
    sub.in_h = h->n;
    sub.in_w = w->n;
    sub.out_h = oh1 - oh0;
    sub.out_w = ow1 - ow0;
    sub.pad_h = h->pad;
    sub.pad_w = w->pad;
    return sub;
}

static void depthwise_forward(const mt_conv2d_params_t *p, const uint16_t *x, const uint16_t *weight,
    const uint16_t *bias, uint16_t *y, float *scratch) {
    const int C = p->in_c, taps = p->kernel_h * p->kernel_w;
    const dw_tile_t tile = dw_tile(p, 1);
    float *w32 = scratch, *b32 = w32 + C * taps, *xb = scratch + dw_fixed(p);
    float *yb = xb + dw_in_extent(tile.rows, p->stride_h, p->kernel_h, p->in_h)
                     * dw_in_extent(tile.cols, p->stride_w, p->kernel_w, p->in_w) * C;
    mt_f16_to_f32_operands(weight, w32, (size_t)(C * taps));
    if (bias) {
        mt_f16_to_f32_operands(bias, b32, (size_t)C);
    }
    for (int n = 0; n < p->batch; n++) {
        const uint16_t *xn = x + n * p->in_h * p->in_w * C;
        uint16_t *yn = y + n * p->out_h * p->out_w * C;
        for (int oh0 = 0; oh0 < p->out_h; oh0 += tile.rows) {
            const int oh1 = min_int(p->out_h, oh0 + tile.rows);
            for (int ow0 = 0; ow0 < p->out_w; ow0 += tile.cols) {
                const int ow1 = min_int(p->out_w, ow0 + tile.cols);
                axis_t h, w;
                const mt_conv2d_params_t sub = out_tile(p, oh0, oh1, ow0, ow1, &h, &w);
                tile_to_f32(xn, p->in_w, C, h.lo, h.n, w.lo, w.n, xb);
                mt_conv2d_f32_forward(&sub, xb, w32, bias ? b32 : NULL, yb, NULL);
                tile_to_f16(yb, C, oh0, oh1 - oh0, ow0, ow1 - ow0, yn, p->out_w);
            }
        }
    }
}

static void depthwise_grad_weight(const mt_conv2d_params_t *p, const uint16_t *x,
    const uint16_t *dy, const sink_t *dw, float *scratch) {
    const int C = p->in_c, taps = p->kernel_h * p->kernel_w;
    const dw_tile_t tile = dw_tile(p, 1);
    float *acc = scratch, *xb = scratch + dw_fixed(p);
    float *dyb = xb + dw_in_extent(tile.rows, p->stride_h, p->kernel_h, p->in_h)
                      * dw_in_extent(tile.cols, p->stride_w, p->kernel_w, p->in_w) * C;
    zero_floats(acc, C * taps);
    for (int n = 0; n < p->batch; n++) {
        const uint16_t *xn = x + n * p->in_h * p->in_w * C;
        const uint16_t *dyn = dy + n * p->out_h * p->out_w * C;
        for (int oh0 = 0; oh0 < p->out_h; oh0 += tile.rows) {
            const int oh1 = min_int(p->out_h, oh0 + tile.rows);
            for (int ow0 = 0; ow0 < p->out_w; ow0 += tile.cols) {
                const int ow1 = min_int(p->out_w, ow0 + tile.cols);
                axis_t h, w;
                const mt_conv2d_params_t sub = out_tile(p, oh0, oh1, ow0, ow1, &h, &w);
                tile_to_f32(xn, p->in_w, C, h.lo, h.n, w.lo, w.n, xb);
                tile_to_f32(dyn, p->out_w, C, oh0, oh1 - oh0, ow0, ow1 - ow0, dyb);
                mt_conv2d_f32_grad_weight(&sub, xb, dyb, 1.0f, acc, NULL, NULL);
            }
        }
    }
    sink_add(dw, 0, acc, C * taps);
}

static void depthwise_grad_input(const mt_conv2d_params_t *p, const uint16_t *dy,
    const uint16_t *weight, uint16_t *dx, float *scratch) {
    const int C = p->in_c, taps = p->kernel_h * p->kernel_w;
    const dw_tile_t tile = dw_tile(p, 0);
    float *w32 = scratch, *dxb = scratch + dw_fixed(p), *dyb = dxb + tile.rows * tile.cols * C;
    mt_f16_to_f32_operands(weight, w32, (size_t)(C * taps));
    for (int n = 0; n < p->batch; n++) {
        const uint16_t *dyn = dy + n * p->out_h * p->out_w * C;
        uint16_t *dxn = dx + n * p->in_h * p->in_w * C;
        for (int ih0 = 0; ih0 < p->in_h; ih0 += tile.rows) {
            const int ih1 = min_int(p->in_h, ih0 + tile.rows);
            const axis_t h = in_axis(ih0, ih1, p->stride_h, p->pad_h, p->kernel_h, p->out_h);
            for (int iw0 = 0; iw0 < p->in_w; iw0 += tile.cols) {
                const int iw1 = min_int(p->in_w, iw0 + tile.cols);
                const axis_t w = in_axis(iw0, iw1, p->stride_w, p->pad_w, p->kernel_w, p->out_w);
                mt_conv2d_params_t sub = *p;
                sub.batch = 1;
                sub.in_h = ih1 - ih0;
                sub.in_w = iw1 - iw0;
                sub.out_h = h.n;
                sub.out_w = w.n;
                sub.pad_h = h.pad;
                sub.pad_w = w.pad;
                if (h.n == 0 || w.n == 0) {
                    zero_floats(dxb, sub.in_h * sub.in_w * C);   // no output reaches the tile
                } else {
                    tile_to_f32(dyn, p->out_w, C, h.lo, h.n, w.lo, w.n, dyb);
                    mt_conv2d_f32_grad_input(&sub, dyb, w32, dxb, NULL);
                }
                tile_to_f16(dxb, C, ih0, ih1 - ih0, iw0, iw1 - iw0, dxn, p->in_w);
            }
        }
    }
}

// ---- public API -----------------------------------------------------------------------------

// dbias += alpha * sum over all output pixels of dy, 16 channels at a time.
static void bias_grad(const mt_conv2d_params_t *p, const uint16_t *dy, const sink_t *db) {
    const int pixels = out_pixels(p), out_c = p->out_c;
    float sums[16];
    for (int o0 = 0; o0 < out_c; o0 += 16) {
        const int nb = min_int(16, out_c - o0);
        zero_floats(sums, nb);
        const uint16_t *d = dy + o0;
        for (int q = 0; q < pixels; q++, d += out_c) {
            for (int j = 0; j < nb; j++) {
                sums[j] += mt_f16_operand(d + j);
            }
        }
        sink_add(db, o0, sums, nb);
    }
}

void mt_conv2d_f16_forward(const mt_conv2d_params_t *p, const uint16_t *x,
    const uint16_t *weight, const uint16_t *bias, uint16_t *y, float *scratch) {
    if (is_depthwise(p)) {
        depthwise_forward(p, x, weight, bias, y, scratch);
    } else {
        general_forward(p, x, weight, bias, y, scratch);
    }
}

void mt_conv2d_f16_grad_input(const mt_conv2d_params_t *p, const uint16_t *dy,
    const uint16_t *weight, uint16_t *dx, float *scratch) {
    if (is_depthwise(p)) {
        depthwise_grad_input(p, dy, weight, dx, scratch);
    } else {
        general_grad_input(p, dy, weight, dx, scratch);
    }
}

static void grad_weight(const mt_conv2d_params_t *p, const uint16_t *x, const uint16_t *dy,
    const sink_t *dw, const sink_t *db, float *scratch) {
    if (db->h || db->f) {
        bias_grad(p, dy, db);
    }
    if (is_depthwise(p)) {
        depthwise_grad_weight(p, x, dy, dw, scratch);
    } else {
        general_grad_weight(p, x, dy, dw, scratch);
    }
}

void mt_conv2d_f16_grad_weight(const mt_conv2d_params_t *p, const uint16_t *x,
    const uint16_t *dy, float alpha, uint16_t *dweight, uint16_t *dbias, float *scratch,
    mt_f16_rng_t *rng) {
    const sink_t dw = { alpha, dweight, NULL, rng }, db = { alpha, dbias, NULL, rng };
    grad_weight(p, x, dy, &dw, &db, scratch);
}

void mt_conv2d_f16_grad_weight_f32(const mt_conv2d_params_t *p, const uint16_t *x,
    const uint16_t *dy, float alpha, float *dweight, float *dbias, float *scratch) {
    const sink_t dw = { alpha, NULL, dweight, NULL }, db = { alpha, NULL, dbias, NULL };
    grad_weight(p, x, dy, &dw, &db, scratch);
}
