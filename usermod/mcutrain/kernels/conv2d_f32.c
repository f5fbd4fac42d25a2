// fp32 Conv2d: im2col on tiles of output pixels + GEMM, with direct paths for depthwise
// and pointwise convolutions.
#include "conv2d_f32.h"
#include "gemm_f32.h"

// im2col works on tiles of output pixels small enough for an MCU's RAM (4096 floats =
// 16 KB for kernels up to K = 64 floats; bigger kernels take the 4-row minimum).
#define TILE_FLOATS 4096
#define TILE_ROWS_MIN 4
#define TILE_ROWS_MAX 64

static inline int min_int(int a, int b) {
    return a < b ? a : b;
}

static inline int max_int(int a, int b) {
    return a > b ? a : b;
}

static int is_depthwise(const mt_conv2d_params_t *p) {
    return p->groups == p->in_c && p->out_c == p->in_c;
}

static int is_pointwise(const mt_conv2d_params_t *p) {
    return p->kernel_h == 1 && p->kernel_w == 1 && p->stride_h == 1 && p->stride_w == 1
           && p->pad_h == 0 && p->pad_w == 0 && p->groups == 1;
}

// Length of one im2col row: a patch of one group's input channels.
static int patch_len(const mt_conv2d_params_t *p) {
    return p->kernel_h * p->kernel_w * (p->in_c / p->groups);
}

static int out_pixels(const mt_conv2d_params_t *p) {
    return p->batch * p->out_h * p->out_w;
}

// Output pixels per im2col tile: a multiple of 4 (the GEMM's block height) where possible.
static int tile_rows(const mt_conv2d_params_t *p) {
    int rows = TILE_FLOATS / patch_len(p);
    rows = max_int(TILE_ROWS_MIN, min_int(TILE_ROWS_MAX, rows)) & ~3;
    return min_int(rows, out_pixels(p));
}

size_t mt_conv2d_f32_scratch_floats(const mt_conv2d_params_t *p) {
    if (is_depthwise(p) || is_pointwise(p)) {
        return 0;
    }
    return (size_t)tile_rows(p) * (size_t)patch_len(p);
}

static void zero_floats(float *dst, int n) {
    for (int i = 0; i < n; i++) {
        dst[i] = 0.0f;
    }
}

static void copy_floats(float *dst, const float *src, int n) {
    for (int i = 0; i < n; i++) {
        dst[i] = src[i];
    }
}

static void add_floats(float *dst, const float *src, int n) {
    for (int i = 0; i < n; i++) {
        dst[i] += src[i];
    }
}

// y[q][o] = bias[o] (or 0) for every output pixel q.
static void fill_bias(const mt_conv2d_params_t *p, const float *bias, float *y) {
    const int pixels = out_pixels(p), out_c = p->out_c;
    if (!bias) {
        zero_floats(y, pixels * out_c);
        return;
    }
    for (int q = 0; q < pixels; q++, y += out_c) {
        copy_floats(y, bias, out_c);
    }
}

// dbias[o] += alpha * sum over all output pixels of dy[q][o], four channels at a time.
static void bias_grad(const mt_conv2d_params_t *p, const float *dy, float alpha, float *dbias) {
    const int pixels = out_pixels(p), out_c = p->out_c;
    int o = 0;
    for (; o + 4 <= out_c; o += 4) {
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        const float *d = dy + o;
        for (int q = 0; q < pixels; q++, d += out_c) {
            s0 += d[0]; s1 += d[1]; s2 += d[2]; s3 += d[3];
        }
        dbias[o] += alpha * s0;
        dbias[o + 1] += alpha * s1;
        dbias[o + 2] += alpha * s2;
        dbias[o + 3] += alpha * s3;
    }
    for (; o < out_c; o++) {
        float s = 0.0f;
        const float *d = dy + o;
        for (int q = 0; q < pixels; q++, d += out_c) {
            s += *d;
        }
        dbias[o] += alpha * s;
    }
}

// ---- im2col / col2im on a tile of output pixels ------------------------------------------

// Walks `rows` output pixels from flat index q0 (over batch, out_h, out_w). For each
// pixel and kernel row, `run` gets the patch row's destination in the tile, the first
// input pixel of the valid kernel columns [kw_lo, kw_hi) (NULL if the row is all padding).
typedef struct {
    const mt_conv2d_params_t *p;
    int n, oh, ow;
} pixel_walk_t;

static void walk_start(pixel_walk_t *w, const mt_conv2d_params_t *p, int q0) {
    const int per_image = p->out_h * p->out_w;
    w->p = p;
    w->n = q0 / per_image;
    w->oh = q0 % per_image / p->out_w;
    w->ow = q0 % p->out_w;
}

static void walk_next(pixel_walk_t *w) {
    if (++w->ow == w->p->out_w) {
        w->ow = 0;
        if (++w->oh == w->p->out_h) {
            w->oh = 0;
            w->n++;
        }
    }
}

// Copies (to_tile) or scatter-adds (!to_tile) one tile between the image `img` (x or dx)
// and the im2col tile `col` (rows x K) for group g.
static void im2col_tile(const mt_conv2d_params_t *p, int q0, int rows, int g, float *img,
    float *col, int to_tile) {
    const int in_c = p->in_c, cg = in_c / p->groups, kh = p->kernel_h, kw = p->kernel_w;
    const int row_len = kw * cg, K = kh * row_len;
    pixel_walk_t w;
    walk_start(&w, p, q0);
    for (int t = 0; t < rows; t++, col += K, walk_next(&w)) {
        const int ih0 = w.oh * p->stride_h - p->pad_h, iw0 = w.ow * p->stride_w - p->pad_w;
        const int kw_lo = max_int(0, -iw0), kw_hi = min_int(kw, p->in_w - iw0);
        float *image = img + ((w.n * p->in_h) * p->in_w) * in_c + g * cg;
        float *dst = col;
        for (int i = 0; i < kh; i++, dst += row_len) {
            const int ih = ih0 + i;
            if (ih < 0 || ih >= p->in_h || kw_lo >= kw_hi) {
                if (to_tile) {
                    zero_floats(dst, row_len);
                }
                continue;
            }
            float *src = image + (ih * p->in_w + iw0 + kw_lo) * in_c;
            if (to_tile) {
                zero_floats(dst, kw_lo * cg);
                zero_floats(dst + kw_hi * cg, (kw - kw_hi) * cg);
            }
            if (cg == in_c) {
                // One run: neighbouring pixels' channels are contiguous in NHWC.
                const int len = (kw_hi - kw_lo) * cg;
                if (to_tile) {
                    copy_floats(dst + kw_lo * cg, src, len);
                } else {
                    add_floats(src, dst + kw_lo * cg, len);
                }
            } else {
                for (int j = kw_lo; j < kw_hi; j++, src += in_c) {
                    if (to_tile) {
                        copy_floats(dst + j * cg, src, cg);
                    } else {
                        add_floats(src, dst + j * cg, cg);
                    }
                }
            }
        }
    }
}

// ---- depthwise: one filter per channel, vectorized over channels --------------------------

static void depthwise_forward(const mt_conv2d_params_t *p, const float *x, const float *weight,
    const float *bias, float *y) {
    const int C = p->in_c, kh = p->kernel_h, kw = p->kernel_w, taps = kh * kw;
    for (int n = 0; n < p->batch; n++) {
        const float *xn = x + n * p->in_h * p->in_w * C;
        for (int oh = 0; oh < p->out_h; oh++) {
            const int ih0 = oh * p->stride_h - p->pad_h;
            const int i_lo = max_int(0, -ih0), i_hi = min_int(kh, p->in_h - ih0);
            for (int ow = 0; ow < p->out_w; ow++, y += C) {
                const int iw0 = ow * p->stride_w - p->pad_w;
                const int j_lo = max_int(0, -iw0), j_hi = min_int(kw, p->in_w - iw0);
                for (int c = 0; c < C; c++) {
                    float s = bias ? bias[c] : 0.0f;
                    for (int i = i_lo; i < i_hi; i++) {
                        for (int j = j_lo; j < j_hi; j++) {
                            s += xn[((ih0 + i) * p->in_w + iw0 + j) * C + c] * weight[c * taps + i * kw + j];
                        }
                    }
                    y[c] = s;
                }
            }
        }
    }
}

static void depthwise_grad_input(const mt_conv2d_params_t *p, const float *dy, const float *weight,
    float *dx) {
    const int C = p->in_c, kh = p->kernel_h, kw = p->kernel_w, taps = kh * kw;
    zero_floats(dx, p->batch * p->in_h * p->in_w * C);
    for (int n = 0; n < p->batch; n++) {
        float *dxn = dx + n * p->in_h * p->in_w * C;
        for (int oh = 0; oh < p->out_h; oh++) {
            const int ih0 = oh * p->stride_h - p->pad_h;
            const int i_lo = max_int(0, -ih0), i_hi = min_int(kh, p->in_h - ih0);
            for (int ow = 0; ow < p->out_w; ow++, dy += C) {
                const int iw0 = ow * p->stride_w - p->pad_w;
                const int j_lo = max_int(0, -iw0), j_hi = min_int(kw, p->in_w - iw0);
                for (int i = i_lo; i < i_hi; i++) {
                    for (int j = j_lo; j < j_hi; j++) {
                        float *d = dxn + ((ih0 + i) * p->in_w + iw0 + j) * C;
                        for (int c = 0; c < C; c++) {
                            d[c] += dy[c] * weight[c * taps + i * kw + j];
                        }
                    }
                }
            }
        }
    }
}

static void depthwise_grad_weight(const mt_conv2d_params_t *p, const float *x, const float *dy,
    float alpha, float *dweight) {
    const int C = p->in_c, kh = p->kernel_h, kw = p->kernel_w, taps = kh * kw;
    for (int i = 0; i < kh; i++) {
        for (int j = 0; j < kw; j++) {
            for (int c = 0; c < C; c++) {
                float s = 0.0f;
                for (int n = 0; n < p->batch; n++) {
                    const float *xn = x + n * p->in_h * p->in_w * C;
                    const float *dyn = dy + n * p->out_h * p->out_w * C;
                    for (int oh = 0; oh < p->out_h; oh++) {
                        const int ih = oh * p->stride_h - p->pad_h + i;
                        if (ih < 0 || ih >= p->in_h) {
                            continue;
                        }
                        for (int ow = 0; ow < p->out_w; ow++) {
                            const int iw = ow * p->stride_w - p->pad_w + j;
                            if (iw < 0 || iw >= p->in_w) {
                                continue;
                            }
                            s += dyn[(oh * p->out_w + ow) * C + c] * xn[(ih * p->in_w + iw) * C + c];
                        }
                    }
                }
                dweight[c * taps + i * kw + j] += alpha * s;
            }
        }
    }
}

// ---- pointwise: the image is already the im2col matrix -----------------------------------

// Calls fn on each run of output pixels whose input pixels are contiguous too: the whole
// batch when the output covers the input, else one output row at a time.
typedef struct {
    int count;      // runs
    int len;        // output pixels per run
} pointwise_runs_t;

static pointwise_runs_t pointwise_runs(const mt_conv2d_params_t *p) {
    pointwise_runs_t r;
    if (p->out_w == p->in_w && p->out_h == p->in_h) {
        r.count = 1;
        r.len = out_pixels(p);
    } else {
        r.count = p->batch * p->out_h;
        r.len = p->out_w;
    }
    return r;
}

// Offset of run r's first input pixel (in floats).
static int pointwise_x_offset(const mt_conv2d_params_t *p, pointwise_runs_t runs, int r) {
    if (runs.count == 1) {
        return 0;
    }
    const int n = r / p->out_h, oh = r % p->out_h;
    return ((n * p->in_h + oh) * p->in_w) * p->in_c;
}

// ---- public API --------------------------------------------------------------------------

void mt_conv2d_f32_forward(const mt_conv2d_params_t *p, const float *x, const float *weight,
    const float *bias, float *y, float *scratch) {
    if (is_depthwise(p)) {
        depthwise_forward(p, x, weight, bias, y);
        return;
    }
    fill_bias(p, bias, y);
    const int in_c = p->in_c, out_c = p->out_c;
    if (is_pointwise(p)) {
        const pointwise_runs_t runs = pointwise_runs(p);
        const mt_gemm_shape_t s = { runs.len, out_c, in_c, in_c, in_c, out_c };
        for (int r = 0; r < runs.count; r++) {
            mt_gemm_f32_nt(&s, 1.0f, x + pointwise_x_offset(p, runs, r), weight,
                y + r * runs.len * out_c);
        }
        return;
    }
    const int K = patch_len(p), og = out_c / p->groups, pixels = out_pixels(p), tile = tile_rows(p);
    for (int q0 = 0; q0 < pixels; q0 += tile) {
        const int rows = min_int(tile, pixels - q0);
        const mt_gemm_shape_t s = { rows, og, K, K, K, out_c };
        for (int g = 0; g < p->groups; g++) {
            im2col_tile(p, q0, rows, g, (float *)x, scratch, 1);
            mt_gemm_f32_nt(&s, 1.0f, scratch, weight + g * og * K, y + q0 * out_c + g * og);
        }
    }
}

void mt_conv2d_f32_grad_input(const mt_conv2d_params_t *p, const float *dy, const float *weight,
    float *dx, float *scratch) {
    if (is_depthwise(p)) {
        depthwise_grad_input(p, dy, weight, dx);
        return;
    }
    const int in_c = p->in_c, out_c = p->out_c;
    zero_floats(dx, p->batch * p->in_h * p->in_w * in_c);
    if (is_pointwise(p)) {
        const pointwise_runs_t runs = pointwise_runs(p);
        const mt_gemm_shape_t s = { runs.len, in_c, out_c, out_c, in_c, in_c };
        for (int r = 0; r < runs.count; r++) {
            mt_gemm_f32_nn(&s, 1.0f, dy + r * runs.len * out_c, weight,
                dx + pointwise_x_offset(p, runs, r));
        }
        return;
    }
    const int K = patch_len(p), og = out_c / p->groups, pixels = out_pixels(p), tile = tile_rows(p);
    for (int q0 = 0; q0 < pixels; q0 += tile) {
        const int rows = min_int(tile, pixels - q0);
        const mt_gemm_shape_t s = { rows, K, og, out_c, K, K };
        for (int g = 0; g < p->groups; g++) {
            zero_floats(scratch, rows * K);
            mt_gemm_f32_nn(&s, 1.0f, dy + q0 * out_c + g * og, weight + g * og * K, scratch);
            im2col_tile(p, q0, rows, g, dx, scratch, 0);
        }
    }
}

void mt_conv2d_f32_grad_weight(const mt_conv2d_params_t *p, const float *x, const float *dy,
    float alpha, float *dweight, float *dbias, float *scratch) {
    if (dbias) {
        bias_grad(p, dy, alpha, dbias);
    }
    if (is_depthwise(p)) {
        depthwise_grad_weight(p, x, dy, alpha, dweight);
        return;
    }
    const int in_c = p->in_c, out_c = p->out_c;
    if (is_pointwise(p)) {
        const pointwise_runs_t runs = pointwise_runs(p);
        const mt_gemm_shape_t s = { out_c, in_c, runs.len, out_c, in_c, in_c };
        for (int r = 0; r < runs.count; r++) {
            mt_gemm_f32_tn(&s, alpha, dy + r * runs.len * out_c,
                x + pointwise_x_offset(p, runs, r), dweight);
        }
        return;
    }
    const int K = patch_len(p), og = out_c / p->groups, pixels = out_pixels(p), tile = tile_rows(p);
    for (int q0 = 0; q0 < pixels; q0 += tile) {
        const int rows = min_int(tile, pixels - q0);
        const mt_gemm_shape_t s = { og, K, rows, out_c, K, K };
        for (int g = 0; g < p->groups; g++) {
            im2col_tile(p, q0, rows, g, (float *)x, scratch, 1);
            mt_gemm_f32_tn(&s, alpha, dy + q0 * out_c + g * og, scratch, dweight + g * og * K);
        }
    }
}
