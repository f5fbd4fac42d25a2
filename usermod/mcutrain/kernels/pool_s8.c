// int8 pooling (pool_s8.h). Channels are innermost in x, y, dy and dx, so every loop runs
// over a pixel's channel vector, four channels a word on DSP cores.
#include <stdbool.h>
#include <string.h>

#include "pool_s8.h"
#include "s8_common.h"

static inline int max_int(int a, int b) {
    return a > b ? a : b;
}

static inline int min_int(int a, int b) {
    return a < b ? a : b;
}

// The in-bounds part of the window of output (oh, ow): rows [h0, h1), columns [w0, w1).
// Padding is at most half the kernel (the binding checks), so it is never empty.
typedef struct {
    int h0, h1, w0, w1;
} window_t;

static inline window_t window_at(const mt_pool2d_params_t *p, int oh, int ow) {
    const int ih = oh * p->stride_h - p->pad_h, iw = ow * p->stride_w - p->pad_w;
    window_t w = { max_int(ih, 0), min_int(ih + p->kernel_h, p->in_h), max_int(iw, 0),
                   min_int(iw + p->kernel_w, p->in_w) };
    return w;
}

static inline size_t image_size(const mt_pool2d_params_t *p) {
    return (size_t)p->in_h * (size_t)p->in_w * (size_t)p->channels;
}

// Outputs along one axis whose windows cover input i: [*lo, *hi).
static void covering(int i, int kernel, int stride, int pad, int out, int *lo, int *hi) {
    // o * stride - pad <= i < o * stride - pad + kernel
    int a = i + pad - kernel + 1;
    *lo = a <= 0 ? 0 : (a + stride - 1) / stride;
    *hi = min_int(out, (i + pad) / stride + 1);
}

// Windows tile the input exactly: every input pixel lies in exactly one window.
static bool tiles(const mt_pool2d_params_t *p) {
    return p->stride_h == p->kernel_h && p->stride_w == p->kernel_w && p->pad_h == 0 && p->pad_w == 0
           && p->out_h * p->kernel_h == p->in_h && p->out_w * p->kernel_w == p->in_w;
}

static inline void store32(int8_t *p, uint32_t v) {
    memcpy(p, &v, sizeof v);
}

#if MT_S8_DSP
// Per byte lane: the larger of a and b, a on ties (SSUB8 sets GE where a - b >= 0).
static inline uint32_t max4(uint32_t a, uint32_t b) {
    uint32_t r;
    __asm__ ("ssub8 %0, %1, %2\n\tsel %0, %1, %2" : "=&r" (r) : "r" (a), "r" (b));
    return r;
}

// Per byte lane: avail where v == m, else 0, given v <= m in every lane.
static inline uint32_t where_equal(uint32_t v, uint32_t m, uint32_t avail) {
    uint32_t r;
    __asm__ ("ssub8 %0, %1, %2\n\tsel %0, %3, %4" : "=&r" (r) : "r" (v), "r" (m), "r" (avail), "r" (0u));
    return r;
}

// The four lanes' maxima over a window whose first in-bounds pixel is at x0.
static inline uint32_t window_max4(const int8_t *x0, int rows, int cols, size_t row, int c_n) {
    uint32_t m = mt_s8_load32(x0);
    for (int r = 0; r < rows; r++, x0 += row) {
        const int8_t *xp = x0;
        for (int j = 0; j < cols; j++, xp += c_n) {
            m = max4(m, mt_s8_load32(xp));
        }
    }
    return m;
}
#endif

// The maximum of one channel over a window (first in-bounds value at x0).
static inline int32_t window_max1(const int8_t *x0, int rows, int cols, size_t row, int c_n) {
    int32_t m = x0[0];
    for (int r = 0; r < rows; r++, x0 += row) {
        const int8_t *xp = x0;
        for (int j = 0; j < cols; j++, xp += c_n) {
            m = xp[0] > m ? xp[0] : m;
        }
    }
    return m;
}

void mt_maxpool2d_s8_forward(const mt_pool2d_params_t *p, const int8_t *x, int8_t *y) {
    const int c_n = p->channels;
    const size_t row = (size_t)p->in_w * (size_t)c_n;
    for (int b = 0; b < p->batch; b++, x += image_size(p)) {
        for (int oh = 0; oh < p->out_h; oh++) {
            for (int ow = 0; ow < p->out_w; ow++, y += c_n) {
                const window_t w = window_at(p, oh, ow);
                const int8_t *x0 = x + (size_t)w.h0 * row + (size_t)w.w0 * (size_t)c_n;
                const int rows = w.h1 - w.h0, cols = w.w1 - w.w0;
                int c = 0;
#if MT_S8_DSP
                for (; c + 4 <= c_n; c += 4) {
                    store32(y + c, window_max4(x0 + c, rows, cols, row, c_n));
                }
#endif
                for (; c < c_n; c++) {
                    y[c] = (int8_t)window_max1(x0 + c, rows, cols, row, c_n);
                }
            }
        }
    }
}

static inline int32_t sym_clamp(int32_t v) {
    return v < -MT_S8_SYM_MAX ? -MT_S8_SYM_MAX : v > MT_S8_SYM_MAX ? MT_S8_SYM_MAX : v;
}

// Non-overlapping windows: each window's argmax is found once and its dy written there.
static void maxpool_scatter(const mt_pool2d_params_t *p, const int8_t *x, const int8_t *dy, int8_t *dx) {
    const int c_n = p->channels;
    const size_t row = (size_t)p->in_w * (size_t)c_n;
    // The DSP path writes every pixel of every window (0 or dy) for whole words of channels.
    if (!MT_S8_DSP || !tiles(p) || (c_n & 3)) {
        memset(dx, 0, (size_t)p->batch * image_size(p));
    }
    for (int b = 0; b < p->batch; b++, x += image_size(p), dx += image_size(p)) {
        for (int oh = 0; oh < p->out_h; oh++) {
            for (int ow = 0; ow < p->out_w; ow++, dy += c_n) {
                const window_t w = window_at(p, oh, ow);
                const size_t at = (size_t)w.h0 * row + (size_t)w.w0 * (size_t)c_n;
                const int rows = w.h1 - w.h0, cols = w.w1 - w.w0;
                int c = 0;
#if MT_S8_DSP
                for (; c + 4 <= c_n; c += 4) {
                    const int8_t *x0 = x + at + (size_t)c;
                    int8_t *d0 = dx + at + (size_t)c;
                    const uint32_t m = window_max4(x0, rows, cols, row, c_n);
                    // dy with -128 raised to -127 (the symmetric range): max with 0x81 lanes.
                    const uint32_t d = max4(mt_s8_load32(dy + c), 0x81818181u);
                    // The first pixel equal to the maximum takes dy (row-major order, as the
                    // forward's strict comparison keeps it); avail clears lanes once taken.
                    uint32_t avail = 0xffffffffu;
                    for (int r = 0; r < rows; r++, x0 += row, d0 += row) {
                        for (int j = 0; j < cols; j++) {
                            const uint32_t hit = where_equal(mt_s8_load32(x0 + (size_t)j * c_n), m, avail);
                            avail &= ~hit;
                            store32(d0 + (size_t)j * c_n, d & hit);
                        }
                    }
                }
#endif
                for (; c < c_n; c++) {
                    const int8_t *x0 = x + at + (size_t)c;
                    const int8_t *arg = x0;
                    for (int r = 0; r < rows; r++) {
                        const int8_t *xp = x0 + (size_t)r * row;
                        for (int j = 0; j < cols; j++, xp += c_n) {
                            arg = *xp > *arg ? xp : arg;
                        }
                    }
                    dx[arg - x] = (int8_t)sym_clamp(dy[c]);
                }
            }
        }
    }
}

// Overlapping windows: errors of several windows meet in one input and must add up exactly
// before the one saturation, so sums are gathered per input row in an int32 tile (windows
// are scanned once per input row they span, not once per input element).
#define MAXPOOL_TILE 64

static void maxpool_gather(const mt_pool2d_params_t *p, const int8_t *x, const int8_t *dy, int8_t *dx) {
    const int c_n = p->channels;
    const size_t row = (size_t)p->in_w * (size_t)c_n, out_row = (size_t)p->out_w * (size_t)c_n;
    int32_t acc[MAXPOOL_TILE];
    for (int b = 0; b < p->batch; b++) {
        const int8_t *xb = x + (size_t)b * image_size(p);
        const int8_t *dyb = dy + (size_t)b * (size_t)p->out_h * out_row;
        for (int ih = 0; ih < p->in_h; ih++) {
            int oh0, oh1;
            covering(ih, p->kernel_h, p->stride_h, p->pad_h, p->out_h, &oh0, &oh1);
            int8_t *dxr = dx + (size_t)b * image_size(p) + (size_t)ih * row;
            for (int c0 = 0; c0 < c_n; c0 += MAXPOOL_TILE) {
                const int cn = min_int(c_n - c0, MAXPOOL_TILE), per = MAXPOOL_TILE / cn;
                for (int iw0 = 0; iw0 < p->in_w; iw0 += per) {
                    const int iw1 = min_int(p->in_w, iw0 + per);
                    int ow0, ow1, lo_unused, hi_unused;
                    covering(iw0, p->kernel_w, p->stride_w, p->pad_w, p->out_w, &ow0, &hi_unused);
                    covering(iw1 - 1, p->kernel_w, p->stride_w, p->pad_w, p->out_w, &lo_unused, &ow1);
                    memset(acc, 0, (size_t)(iw1 - iw0) * (size_t)cn * sizeof(int32_t));
                    for (int oh = oh0; oh < oh1; oh++) {
                        for (int ow = ow0; ow < ow1; ow++) {
                            const window_t w = window_at(p, oh, ow);
                            const int8_t *d = dyb + (size_t)oh * out_row + (size_t)ow * (size_t)c_n + (size_t)c0;
                            for (int c = 0; c < cn; c++) {
                                // The first maximum in row-major order, as the forward keeps it.
                                int ah = w.h0, aw = w.w0;
                                int32_t m = xb[(size_t)ah * row + (size_t)aw * (size_t)c_n + (size_t)(c0 + c)];
                                for (int r = w.h0; r < w.h1; r++) {
                                    const int8_t *xp = xb + (size_t)r * row + (size_t)(c0 + c);
                                    for (int j = w.w0; j < w.w1; j++) {
                                        const int32_t v = xp[(size_t)j * (size_t)c_n];
                                        if (v > m) {
                                            m = v;
                                            ah = r;
                                            aw = j;
                                        }
                                    }
                                }
                                if (ah == ih && aw >= iw0 && aw < iw1) {
                                    acc[(aw - iw0) * cn + c] += d[c];
                                }
                            }
                        }
                    }
                    for (int j = iw0; j < iw1; j++) {
                        for (int c = 0; c < cn; c++) {
                            dxr[(size_t)j * (size_t)c_n + (size_t)(c0 + c)] = (int8_t)sym_clamp(acc[(j - iw0) * cn + c]);
                        }
                    }
                }
            }
        }
    }
}

void mt_maxpool2d_s8_grad_input(const mt_pool2d_params_t *p, const int8_t *x, const int8_t *dy,
    int8_t *dx) {
    if (p->stride_h >= p->kernel_h && p->stride_w >= p->kernel_w) {
        maxpool_scatter(p, x, dy, dx);
    } else {
        maxpool_gather(p, x, dy, dx);
    }
}

// round(n / d) for d > 0, ties to even, exactly.
static int32_t div_round_half_even(int32_t n, int32_t d) {
    int32_t q = n / d, r = n % d;
    if (r < 0) {
        q--;
        r += d;
    }
    if (2 * r > d || (2 * r == d && (q & 1))) {
        q++;
    }
    return q;
}

// round_half_even(n / d) by a reciprocal multiply, for 1 <= d <= RECIP_MAX_D and
// -256 d < n < 256 d (sums of d values in [-255, 255]). With n' = n + 256 d (the quotient's
// parity kept: 256 is even) and t = 2 n' + d in [d, 1023 d], q = floor(t / 2d) rounds n' / d
// half up, and t / 2d is a tie exactly when t - 2d q is 0; then q & ~1 is the even neighbour.
// floor(t / 2d) is the high word of t * m with m = ceil(2^32 / 2d): exact when t * (m 2d -
// 2^32) < 2^32, which t * 2d <= 2046 d^2 < 2^32 ensures.
#define RECIP_MAX_D 1024

typedef struct {
    uint32_t m, d2, bias;  // ceil(2^32 / 2d), 2d, 513 d
} recip_t;

static recip_t recip_make(int32_t d) {
    recip_t r = { 0xffffffffu / (uint32_t)(2 * d) + 1u, (uint32_t)(2 * d), 513u * (uint32_t)d };
    return r;
}

// round_half_even(t / 2d) + 256 for t = 2 n + r->bias (callers fold constants into t).
static inline int32_t recip_q(uint32_t t, const recip_t *r) {
    uint32_t q = (uint32_t)(((uint64_t)t * r->m) >> 32);
    if (t == q * r->d2) {
        q &= ~1u;
    }
    return (int32_t)q;
}

static inline int32_t recip_round(int32_t n, const recip_t *r) {
    return recip_q(2u * (uint32_t)n + r->bias, r) - 256;
}

// round_half_even(n / d), r made for d when d <= RECIP_MAX_D.
static inline int32_t div_rhe(int32_t n, int32_t d, const recip_t *r) {
    return d <= RECIP_MAX_D ? recip_round(n, r) : div_round_half_even(n, d);
}

// The mean's int8 value from a window's raw sum s: t0 and zq fold the window's zero-point
// offsets (recip_q's t = 2 s + t0, the result recip_q + zq). The mean of int8 values (padding
// counting as the zero point) is an int8 value: the saturation never acts.
static inline int8_t avg_out(int32_t s, uint32_t t0, int32_t zq, const recip_t *r) {
    return (int8_t)mt_s8_ssat8(recip_q(2u * (uint32_t)s + t0, r) + zq);
}

#if MT_S8_DSP
// Lanes (c, c + 2) and (c + 1, c + 3) of int16 sums of four channels over a window (at most
// 255 pixels: |sum| <= 128 * 255), the window's first pixel at x0.
static inline void window_sum4(const int8_t *x0, int rows, int cols, size_t row, int c_n,
    uint32_t *s02, uint32_t *s13) {
    uint32_t a = 0, b = 0;
    if (cols == 1) {  // a column of pixels (the keyword-spotting (5, 1) pool): one loop
        int r = rows;
        do {
            const uint32_t v = mt_s8_load32(x0);
            a = __sxtab16(a, v);
            b = mt_s8_sxtab16_ror8(b, v);
            x0 += row;
        } while (--r);
    } else {
        for (int r = 0; r < rows; r++, x0 += row) {
            const int8_t *xp = x0;
            int j = cols;
            do {
                const uint32_t v = mt_s8_load32(xp);
                a = __sxtab16(a, v);
                b = mt_s8_sxtab16_ror8(b, v);
                xp += c_n;
            } while (--j);
        }
    }
    *s02 = a;
    *s13 = b;
}
#endif

void mt_avgpool2d_s8_forward(const mt_pool2d_params_t *p, const int8_t *x, int8_t *y, int32_t zero_point) {
    const int c_n = p->channels;
    const size_t row = (size_t)p->in_w * (size_t)c_n;
    const int32_t area = p->kernel_h * p->kernel_w;
    const recip_t rc = recip_make(area <= RECIP_MAX_D ? area : 1);
    for (int b = 0; b < p->batch; b++, x += image_size(p)) {
        for (int oh = 0; oh < p->out_h; oh++) {
            for (int ow = 0; ow < p->out_w; ow++, y += c_n) {
                const window_t w = window_at(p, oh, ow);
                const int8_t *x0 = x + (size_t)w.h0 * row + (size_t)w.w0 * (size_t)c_n;
                const int rows = w.h1 - w.h0, cols = w.w1 - w.w0;
                // Padding is real 0, i.e. zero_point: it adds nothing to the offsets.
                const int32_t offset = rows * cols * zero_point;
                int c = 0;
                if (area <= RECIP_MAX_D) {
                    const uint32_t t0 = rc.bias - 2u * (uint32_t)offset;
                    const int32_t zq = zero_point - 256;
#if MT_S8_DSP
                    if (rows * cols <= 255) {
                        for (; c + 4 <= c_n; c += 4) {
                            uint32_t s02, s13;
                            window_sum4(x0 + c, rows, cols, row, c_n, &s02, &s13);
                            y[c] = avg_out((int16_t)s02, t0, zq, &rc);
                            y[c + 1] = avg_out((int16_t)s13, t0, zq, &rc);
                            y[c + 2] = avg_out((int32_t)s02 >> 16, t0, zq, &rc);
                            y[c + 3] = avg_out((int32_t)s13 >> 16, t0, zq, &rc);
                        }
                    }
#endif
#if !MT_S8_DSP
                    // Four channels a pass in four registers (the window walked once for four).
                    for (; c + 4 <= c_n; c += 4) {
                        int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                        const int8_t *xr = x0 + c;
                        for (int r = 0; r < rows; r++, xr += row) {
                            const int8_t *xp = xr;
                            for (int j = 0; j < cols; j++, xp += c_n) {
                                s0 += xp[0];
                                s1 += xp[1];
                                s2 += xp[2];
                                s3 += xp[3];
                            }
                        }
                        y[c] = avg_out(s0, t0, zq, &rc);
                        y[c + 1] = avg_out(s1, t0, zq, &rc);
                        y[c + 2] = avg_out(s2, t0, zq, &rc);
                        y[c + 3] = avg_out(s3, t0, zq, &rc);
                    }
#endif
                    for (; c < c_n; c++) {
                        int32_t sum = 0;
                        const int8_t *xr = x0 + c;
                        for (int r = 0; r < rows; r++, xr += row) {
                            const int8_t *xp = xr;
                            for (int j = 0; j < cols; j++, xp += c_n) {
                                sum += *xp;
                            }
                        }
                        y[c] = avg_out(sum, t0, zq, &rc);
                    }
                }
                for (; c < c_n; c++) {  // windows over RECIP_MAX_D values: a division
                    int32_t sum = 0;
                    const int8_t *xr = x0 + c;
                    for (int r = 0; r < rows; r++, xr += row) {
                        const int8_t *xp = xr;
                        for (int j = 0; j < cols; j++, xp += c_n) {
                            sum += *xp;
                        }
                    }
                    const int32_t v = zero_point + div_round_half_even(sum - offset, area);
                    y[c] = (int8_t)(v < MT_S8_ACT_MIN ? MT_S8_ACT_MIN : v > MT_S8_ACT_MAX ? MT_S8_ACT_MAX : v);
                }
            }
        }
    }
}

int mt_avgpool2d_s8_cover(const mt_pool2d_params_t *p) {
    int ch = min_int((p->kernel_h + p->stride_h - 1) / p->stride_h, p->out_h);
    int cw = min_int((p->kernel_w + p->stride_w - 1) / p->stride_w, p->out_w);
    return ch * cw;
}

static inline void copy_s8(int8_t *dst, const int8_t *src, int n) {
#if MT_S8_DSP
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        store32(dst + i, mt_s8_load32(src + i));
    }
    for (; i < n; i++) {
        dst[i] = src[i];
    }
#else
    memcpy(dst, src, (size_t)n);
#endif
}

void mt_avgpool2d_s8_grad_input(const mt_pool2d_params_t *p, const int8_t *dy, int8_t *dx) {
    const int c_n = p->channels;
    const size_t row = (size_t)p->in_w * (size_t)c_n, out_row = (size_t)p->out_w * (size_t)c_n;
    const int32_t cover = mt_avgpool2d_s8_cover(p);
    if (cover == 1) {
        // One window per input pixel at most: its dy, unchanged (uncovered pixels get 0).
        if (!tiles(p)) {
            memset(dx, 0, (size_t)p->batch * image_size(p));
        }
        for (int b = 0; b < p->batch; b++, dx += image_size(p)) {
            for (int oh = 0; oh < p->out_h; oh++) {
                for (int ow = 0; ow < p->out_w; ow++, dy += c_n) {
                    const window_t w = window_at(p, oh, ow);
                    for (int r = w.h0; r < w.h1; r++) {
                        int8_t *d = dx + (size_t)r * row + (size_t)w.w0 * (size_t)c_n;
                        for (int j = w.w0; j < w.w1; j++, d += c_n) {
                            copy_s8(d, dy, c_n);
                        }
                    }
                }
            }
        }
        return;
    }
    // Overlapping windows: per input pixel, the sum of its covering windows' dy over cover.
    const recip_t rc = recip_make(cover <= RECIP_MAX_D ? cover : 1);
    for (int b = 0; b < p->batch; b++) {
        const int8_t *dyb = dy + (size_t)b * (size_t)p->out_h * out_row;
        for (int ih = 0; ih < p->in_h; ih++) {
            int oh0, oh1;
            covering(ih, p->kernel_h, p->stride_h, p->pad_h, p->out_h, &oh0, &oh1);
            for (int iw = 0; iw < p->in_w; iw++, dx += c_n) {
                int ow0, ow1;
                covering(iw, p->kernel_w, p->stride_w, p->pad_w, p->out_w, &ow0, &ow1);
                const int8_t *d0 = dyb + (size_t)oh0 * out_row + (size_t)ow0 * (size_t)c_n;
                const int rows = oh1 - oh0, cols = ow1 - ow0;
                int c = 0;
#if MT_S8_DSP
                if (cover <= 255) {  // |sum| <= 128 * cover fits the int16 lanes
                    for (; c + 4 <= c_n; c += 4) {
                        uint32_t s02 = 0, s13 = 0;
                        const int8_t *dr = d0 + c;
                        for (int r = 0; r < rows; r++, dr += out_row) {
                            const int8_t *dp = dr;
                            for (int j = 0; j < cols; j++, dp += c_n) {
                                const uint32_t v = mt_s8_load32(dp);
                                s02 = __sxtab16(s02, v);
                                s13 = mt_s8_sxtab16_ror8(s13, v);
                            }
                        }
                        dx[c] = (int8_t)div_rhe((int16_t)s02, cover, &rc);
                        dx[c + 1] = (int8_t)div_rhe((int16_t)s13, cover, &rc);
                        dx[c + 2] = (int8_t)div_rhe((int32_t)s02 >> 16, cover, &rc);
                        dx[c + 3] = (int8_t)div_rhe((int32_t)s13 >> 16, cover, &rc);
                    }
                }
#endif
                for (; c < c_n; c++) {
                    int32_t sum = 0;
                    const int8_t *dr = d0 + c;
                    for (int r = 0; r < rows; r++, dr += out_row) {
                        const int8_t *dp = dr;
                        for (int j = 0; j < cols; j++, dp += c_n) {
                            sum += *dp;
                        }
                    }
                    dx[c] = (int8_t)div_rhe(sum, cover, &rc);
                }
            }
        }
    }
}

void mt_global_avgpool_s8_forward(const int8_t *x, int8_t *y, int batch, int pixels, int channels,
    int32_t zero_point) {
    const float inv = 1.0f / (float)pixels;
    for (int b = 0; b < batch; b++) {
        for (int c = 0; c < channels; c++) {
            int32_t sum = 0;
            for (int i = 0; i < pixels; i++) {
                sum += x[((size_t)b * (size_t)pixels + (size_t)i) * (size_t)channels + (size_t)c] - zero_point;
            }
            int32_t v = zero_point + mt_round_half_even((float)sum * inv);
            y[(size_t)b * (size_t)channels + (size_t)c] = (int8_t)(v < MT_S8_ACT_MIN ? MT_S8_ACT_MIN
                : v > MT_S8_ACT_MAX ? MT_S8_ACT_MAX : v);
        }
    }
}

void mt_global_avgpool_s8_grad_input(const int8_t *dy, int8_t *dx, int batch, int pixels,
    int channels) {
    for (int b = 0; b < batch; b++) {
        for (int i = 0; i < pixels; i++) {
            memcpy(dx + ((size_t)b * (size_t)pixels + (size_t)i) * (size_t)channels,
                dy + (size_t)b * (size_t)channels, (size_t)channels);
        }
    }
}
