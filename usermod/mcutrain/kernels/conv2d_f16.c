// float16 Conv2d: fp16 tiles converted to fp32 in the scratch, fp32 GEMMs (or, for
// depthwise, the fp32 depthwise kernels) on them, results rounded to fp16 once.
#include "conv2d_f16.h"
#include "gemm_f32.h"

// Scratch the tiling aims for (16 KB), and the part of it one fp32 block of weights or
// weight-gradient sums may take. Bigger blocks convert the im2col tiles fewer times.
#define BUDGET 4096
#define BLOCK_BUDGET 2560
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

// Block of n_total channels whose fp32 copy (len floats each) fits BLOCK_BUDGET: all of
// them if they fit, else equal blocks rounded up to a multiple of 4 (the GEMM's width).
static int channel_block(int n_total, int len) {
    if (n_total * len <= BLOCK_BUDGET) {
        return n_total;
    }
    const int blocks = (n_total * len + BLOCK_BUDGET - 1) / BLOCK_BUDGET;
    const int b = ((n_total + blocks - 1) / blocks + 3) & ~3;
    return min_int(b, n_total);
}

// Pixels per tile when `fixed` floats are taken and each pixel needs row_len + block more:
// a multiple of 4 (the GEMM's block height) in [4, 64], at most `total`.
static int tile_rows(int fixed, int row_len, int block, int total) {
    int rows = (BUDGET - fixed) / (row_len + block);
    rows = max_int(TILE_ROWS_MIN, min_int(TILE_ROWS_MAX, rows)) & ~3;
    return min_int(rows, total);
}

// Forward: an fp32 block of ob output channels' weights (ob x K), an im2col tile
// (rows x K) and the output tile (rows x ob).
typedef struct {
    int ob, rows;
} forward_plan_t;

static forward_plan_t forward_plan(const mt_conv2d_params_t *p) {
    const int K = patch_len(p), og = p->out_c / p->groups;
    forward_plan_t f;
    f.ob = channel_block(og, K);
    f.rows = tile_rows(f.ob * K, K, f.ob, out_pixels(p));
    return f;
}

// Kernel taps i < k with i = phase (mod stride): those an input pixel of that phase meets.
static int taps_in_phase(int k, int stride, int phase) {
    return phase < k ? (k - phase + stride - 1) / stride : 0;
}

// Input gradient: per input pixel a row of L = (taps of its phase) * og gathered dy
// values; the weights reordered tap-major as an L x cb block; the output tile rows x cb.
typedef struct {
    int len, cb, rows;
} grad_input_plan_t;

static grad_input_plan_t grad_input_plan(const mt_conv2d_params_t *p) {
    const int cg = p->in_c / p->groups, og = p->out_c / p->groups;
    grad_input_plan_t g;
    g.len = taps_in_phase(p->kernel_h, p->stride_h, 0) * taps_in_phase(p->kernel_w, p->stride_w, 0)
            * og;
    g.cb = channel_block(cg, g.len);
    g.rows = tile_rows(g.len * g.cb, g.len, g.cb, p->batch * p->in_h * p->in_w);
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
    grad_weight_plan_t w;
    if (og * row_len <= BLOCK_BUDGET) {
        w.ob = og;
        w.krb = min_int(p->kernel_h, BLOCK_BUDGET / (og * row_len));
    } else {
        w.ob = channel_block(og, row_len);
        w.krb = 1;
    }
    const int kb = w.krb * row_len;
    w.rows = tile_rows(w.ob * kb, kb, w.ob, out_pixels(p));
    return w;
}

// Depthwise: bands of image rows in fp32 for the fp32 depthwise kernels. Forward and
// weight gradient take R output rows and the input rows they read; the input gradient
// takes R input rows and the dy rows that reach them. Scratch: fp32 weights, bias and
// weight-gradient sums, then the two bands.
static int dw_x_rows(const mt_conv2d_params_t *p, int out_rows) {
    return min_int(p->in_h, (out_rows - 1) * p->stride_h + p->kernel_h);
}

static int dw_dy_rows(const mt_conv2d_params_t *p, int in_rows) {
    return min_int(p->out_h, (in_rows + p->kernel_h - 2) / p->stride_h + 2);
}

static int dw_fixed(const mt_conv2d_params_t *p) {
    const int C = p->in_c, taps = p->kernel_h * p->kernel_w;
    return 2 * C * taps + C;
}

static int dw_out_band_floats(const mt_conv2d_params_t *p, int rows) {
    return dw_x_rows(p, rows) * p->in_w * p->in_c + rows * p->out_w * p->in_c;
}

static int dw_in_band_floats(const mt_conv2d_params_t *p, int rows) {
    return rows * p->in_w * p->in_c + dw_dy_rows(p, rows) * p->out_w * p->in_c;
}

static int dw_out_band_rows(const mt_conv2d_params_t *p) {
    int rows = 1;
    while (rows < p->out_h && dw_fixed(p) + dw_out_band_floats(p, rows + 1) <= BUDGET) {
        rows++;
    }
    return rows;
}

static int dw_in_band_rows(const mt_conv2d_params_t *p) {
    int rows = 1;
    while (rows < p->in_h && dw_fixed(p) + dw_in_band_floats(p, rows + 1) <= BUDGET) {
        rows++;
    }
    return rows;
}

size_t mt_conv2d_f16_scratch_floats(const mt_conv2d_params_t *p) {
    if (is_depthwise(p)) {
        const int out_band = dw_out_band_floats(p, dw_out_band_rows(p));
        const int in_band = dw_in_band_floats(p, dw_in_band_rows(p));
        return (size_t)(dw_fixed(p) + max_int(out_band, in_band));
    }
    const int K = patch_len(p), row_len = p->kernel_w * (p->in_c / p->groups);
    const forward_plan_t f = forward_plan(p);
    const grad_input_plan_t g = grad_input_plan(p);
    const grad_weight_plan_t w = grad_weight_plan(p);
    const int kb = w.krb * row_len;
    const int forward = f.ob * K + f.rows * K + f.rows * f.ob;
    const int grad_input = g.len * g.cb + g.rows * g.len + g.rows * g.cb;
    const int grad_weight = w.ob * kb + w.rows * kb + w.rows * w.ob;
    return (size_t)max_int(forward, max_int(grad_input, grad_weight));
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
                mt_f16_to_f32_array(src, col + pt.kw_lo * cg, (size_t)((pt.kw_hi - pt.kw_lo) * cg));
            } else {
                for (int j = pt.kw_lo; j < pt.kw_hi; j++, src += in_c) {
                    mt_f16_to_f32_array(src, col + j * cg, (size_t)cg);
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
            mt_f16_to_f32_array(weight + oc0 * K, wbuf, (size_t)(nob * K));
            for (int q0 = 0; q0 < pixels; q0 += f.rows) {
                const int rows = min_int(f.rows, pixels - q0);
                im2col_tile(p, x, q0, rows, g, 0, p->kernel_h, col);
                if (bias) {
                    mt_f16_to_f32_array(bias + oc0, out, (size_t)nob);
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
                    mt_f32_to_f16_array(out + t * nob, y + (q0 + t) * out_c + oc0, (size_t)nob);
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

// dx = sum over taps and output channels of dy * weight, gathered per input pixel: each dx
// element is one fp32 sum, rounded once.
static void general_grad_input(const mt_conv2d_params_t *p, const uint16_t *dy,
    const uint16_t *weight, uint16_t *dx, float *scratch) {
    const int in_c = p->in_c, cg = in_c / p->groups, out_c = p->out_c, og = out_c / p->groups;
    const int kh = p->kernel_h, kw = p->kernel_w, sh = p->stride_h, sw = p->stride_w;
    const grad_input_plan_t plan = grad_input_plan(p);
    float *wt = scratch, *col = wt + plan.len * plan.cb, *out = col + plan.rows * plan.len;
    for (int g = 0; g < p->groups; g++) {
        for (int a = 0; a < sh; a++) {
            for (int b = 0; b < sw; b++) {
                const phase_t ph = phase_of(p, a, b);
                const int pixels = p->batch * ph.nh * ph.nw;
                if (pixels == 0) {
                    continue;
                }
                int ih, iw;
                if (ph.kth == 0 || ph.ktw == 0) {
                    // No tap reads these pixels (kernel smaller than the stride).
                    for (int u = 0; u < pixels; u++) {
                        zero_halves(dx + phase_pixel(p, &ph, u, &ih, &iw) + g * cg, cg);
                    }
                    continue;
                }
                const int L = ph.kth * ph.ktw * og;
                for (int c0 = 0; c0 < cg; c0 += plan.cb) {
                    const int ncb = min_int(plan.cb, cg - c0);
                    // wt[(ti, tj, o)][c] = weight[g * og + o][a + ti * sh][b + tj * sw][c0 + c]
                    float *w_row = wt;
                    for (int ti = 0; ti < ph.kth; ti++) {
                        for (int tj = 0; tj < ph.ktw; tj++) {
                            const int tap = (a + ti * sh) * kw + b + tj * sw;
                            for (int o = 0; o < og; o++, w_row += ncb) {
                                mt_f16_to_f32_array(weight + ((g * og + o) * kh * kw + tap) * cg + c0,
                                    w_row, (size_t)ncb);
                            }
                        }
                    }
                    for (int u0 = 0; u0 < pixels; u0 += plan.rows) {
                        const int rows = min_int(plan.rows, pixels - u0);
                        float *dst = col;
                        for (int t = 0; t < rows; t++) {
                            const int n = (u0 + t) / (ph.nh * ph.nw);
                            phase_pixel(p, &ph, u0 + t, &ih, &iw);
                            for (int ti = 0; ti < ph.kth; ti++) {
                                const int num_h = ih + p->pad_h - (a + ti * sh), oh = num_h / sh;
                                const int row_ok = num_h >= 0 && oh < p->out_h;
                                for (int tj = 0; tj < ph.ktw; tj++, dst += og) {
                                    const int num_w = iw + p->pad_w - (b + tj * sw), ow = num_w / sw;
                                    if (row_ok && num_w >= 0 && ow < p->out_w) {
                                        mt_f16_to_f32_array(
                                            dy + ((n * p->out_h + oh) * p->out_w + ow) * out_c + g * og,
                                            dst, (size_t)og);
                                    } else {
                                        zero_floats(dst, og);
                                    }
                                }
                            }
                        }
                        zero_floats(out, rows * ncb);
                        const mt_gemm_shape_t s = { rows, ncb, L, L, ncb, ncb };
                        mt_gemm_f32_nn(&s, 1.0f, col, wt, out);
                        for (int t = 0; t < rows; t++) {
                            mt_f32_to_f16_array(out + t * ncb,
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
                        mt_f16_to_f32_array(dy + (q0 + t) * out_c + oc0, dyt + t * nob, (size_t)nob);
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

// ---- depthwise: bands of rows through the fp32 depthwise kernels ---------------------------

// The fp32 problem for output rows [oh0, oh1) of one image: the input rows they read,
// [*ih_lo, *ih_lo + sub.in_h), with what lies above them as padding.
static mt_conv2d_params_t out_band(const mt_conv2d_params_t *p, int oh0, int oh1, int *ih_lo) {
    const int ih_start = oh0 * p->stride_h - p->pad_h;
    const int ih_hi = min_int(p->in_h, (oh1 - 1) * p->stride_h - p->pad_h + p->kernel_h);
    mt_conv2d_params_t sub = *p;
    *ih_lo = max_int(0, ih_start);
    sub.batch = 1;
    sub.in_h = max_int(0, ih_hi - *ih_lo);
    sub.out_h = oh1 - oh0;
    sub.pad_h = *ih_lo - ih_start;
    return sub;
}

static void depthwise_forward(const mt_conv2d_params_t *p, const uint16_t *x, const uint16_t *weight,
    const uint16_t *bias, uint16_t *y, float *scratch) {
    const int C = p->in_c, taps = p->kernel_h * p->kernel_w, band = dw_out_band_rows(p);
    const int x_row = p->in_w * C, y_row = p->out_w * C;
    float *w32 = scratch, *b32 = w32 + C * taps, *xb = scratch + dw_fixed(p);
    float *yb = xb + dw_x_rows(p, band) * x_row;
    mt_f16_to_f32_array(weight, w32, (size_t)(C * taps));
    if (bias) {
        mt_f16_to_f32_array(bias, b32, (size_t)C);
    }
    for (int n = 0; n < p->batch; n++) {
        const uint16_t *xn = x + n * p->in_h * x_row;
        uint16_t *yn = y + n * p->out_h * y_row;
        for (int oh0 = 0; oh0 < p->out_h; oh0 += band) {
            const int oh1 = min_int(p->out_h, oh0 + band);
            int ih_lo;
            const mt_conv2d_params_t sub = out_band(p, oh0, oh1, &ih_lo);
            mt_f16_to_f32_array(xn + ih_lo * x_row, xb, (size_t)(sub.in_h * x_row));
            mt_conv2d_f32_forward(&sub, xb, w32, bias ? b32 : NULL, yb, NULL);
            mt_f32_to_f16_array(yb, yn + oh0 * y_row, (size_t)(sub.out_h * y_row));
        }
    }
}

static void depthwise_grad_weight(const mt_conv2d_params_t *p, const uint16_t *x,
    const uint16_t *dy, const sink_t *dw, float *scratch) {
    const int C = p->in_c, taps = p->kernel_h * p->kernel_w, band = dw_out_band_rows(p);
    const int x_row = p->in_w * C, y_row = p->out_w * C;
    float *acc = scratch + C * taps + C, *xb = scratch + dw_fixed(p);
    float *dyb = xb + dw_x_rows(p, band) * x_row;
    zero_floats(acc, C * taps);
    for (int n = 0; n < p->batch; n++) {
        const uint16_t *xn = x + n * p->in_h * x_row, *dyn = dy + n * p->out_h * y_row;
        for (int oh0 = 0; oh0 < p->out_h; oh0 += band) {
            const int oh1 = min_int(p->out_h, oh0 + band);
            int ih_lo;
            const mt_conv2d_params_t sub = out_band(p, oh0, oh1, &ih_lo);
            mt_f16_to_f32_array(xn + ih_lo * x_row, xb, (size_t)(sub.in_h * x_row));
            mt_f16_to_f32_array(dyn + oh0 * y_row, dyb, (size_t)(sub.out_h * y_row));
            mt_conv2d_f32_grad_weight(&sub, xb, dyb, 1.0f, acc, NULL, NULL);
        }
    }
    sink_add(dw, 0, acc, C * taps);
}

static void depthwise_grad_input(const mt_conv2d_params_t *p, const uint16_t *dy,
    const uint16_t *weight, uint16_t *dx, float *scratch) {
    const int C = p->in_c, taps = p->kernel_h * p->kernel_w, band = dw_in_band_rows(p);
    const int x_row = p->in_w * C, y_row = p->out_w * C, sh = p->stride_h;
    float *w32 = scratch, *dxb = scratch + dw_fixed(p), *dyb = dxb + band * x_row;
    mt_f16_to_f32_array(weight, w32, (size_t)(C * taps));
    for (int n = 0; n < p->batch; n++) {
        const uint16_t *dyn = dy + n * p->out_h * y_row;
        uint16_t *dxn = dx + n * p->in_h * x_row;
        for (int ih0 = 0; ih0 < p->in_h; ih0 += band) {
            const int ih1 = min_int(p->in_h, ih0 + band), top = ih0 + p->pad_h;
            // Output rows whose windows reach rows [ih0, ih1); starting no later than the
            // one whose window starts at or above ih0, so the band's top padding is >= 0.
            int oh_lo = min_int(ceil_div(top - p->kernel_h + 1, sh), floor_div(top, sh));
            oh_lo = max_int(0, oh_lo);
            const int oh_hi = min_int(p->out_h, floor_div(ih1 - 1 + p->pad_h, sh) + 1);
            if (oh_hi <= oh_lo) {
                zero_halves(dxn + ih0 * x_row, (ih1 - ih0) * x_row);
                continue;
            }
            mt_conv2d_params_t sub = *p;
            sub.batch = 1;
            sub.in_h = ih1 - ih0;
            sub.out_h = oh_hi - oh_lo;
            sub.pad_h = top - oh_lo * sh;
            mt_f16_to_f32_array(dyn + oh_lo * y_row, dyb, (size_t)(sub.out_h * y_row));
            mt_conv2d_f32_grad_input(&sub, dyb, w32, dxb, NULL);
            mt_f32_to_f16_array(dxb, dxn + ih0 * x_row, (size_t)(sub.in_h * x_row));
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
                sums[j] += mt_f16_to_f32(d[j]);
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
