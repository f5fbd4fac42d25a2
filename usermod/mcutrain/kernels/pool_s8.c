#include <string.h>

#include "pool_s8.h"
#include "quant.h"

static inline int max_int(int a, int b) {
    return a > b ? a : b;
}

static inline int min_int(int a, int b) {
    return a < b ? a : b;
}

// The in-bounds part of the window of output (oh, ow): rows [h0, h1), columns [w0, w1).
typedef struct {
    int h0, h1, w0, w1;
} window_t;

static inline window_t window_at(const mt_pool2d_params_t *p, int oh, int ow) {
    const int ih = oh * p->stride_h - p->pad_h, iw = ow * p->stride_w - p->pad_w;
    window_t w = { max_int(ih, 0), min_int(ih + p->kernel_h, p->in_h), max_int(iw, 0),
                   min_int(iw + p->kernel_w, p->in_w) };
    return w;
}

static inline size_t pixel(const mt_pool2d_params_t *p, int b, int ih, int iw) {
    return (((size_t)b * (size_t)p->in_h + (size_t)ih) * (size_t)p->in_w + (size_t)iw)
           * (size_t)p->channels;
}

void mt_maxpool2d_s8_forward(const mt_pool2d_params_t *p, const int8_t *x, int8_t *y) {
    const int c_n = p->channels;
    for (int b = 0; b < p->batch; b++) {
        for (int oh = 0; oh < p->out_h; oh++) {
            for (int ow = 0; ow < p->out_w; ow++) {
                window_t w = window_at(p, oh, ow);
                // The first in-bounds pixel starts the maximum (padding never wins).
                memcpy(y, x + pixel(p, b, w.h0, w.w0), (size_t)c_n);
                for (int ih = w.h0; ih < w.h1; ih++) {
                    for (int iw = w.w0; iw < w.w1; iw++) {
                        const int8_t *xp = x + pixel(p, b, ih, iw);
                        for (int c = 0; c < c_n; c++) {
                            y[c] = xp[c] > y[c] ? xp[c] : y[c];
                        }
                    }
                }
                y += c_n;
            }
        }
    }
}

// The first maximum of channel c in the window of output (oh, ow), as the forward keeps it.
static size_t window_argmax(const mt_pool2d_params_t *p, const int8_t *x, int b, int oh, int ow, int c) {
    window_t w = window_at(p, oh, ow);
    size_t arg = pixel(p, b, w.h0, w.w0) + (size_t)c;
    for (int ih = w.h0; ih < w.h1; ih++) {
        for (int iw = w.w0; iw < w.w1; iw++) {
            size_t i = pixel(p, b, ih, iw) + (size_t)c;
            arg = x[i] > x[arg] ? i : arg;
        }
    }
    return arg;
}

// Outputs along one axis whose windows cover input i: [*lo, *hi).
static void covering(int i, int kernel, int stride, int pad, int out, int *lo, int *hi) {
    // o * stride - pad <= i < o * stride - pad + kernel
    int a = i + pad - kernel + 1;
    *lo = a <= 0 ? 0 : (a + stride - 1) / stride;
    *hi = min_int(out, (i + pad) / stride + 1);
}

void mt_maxpool2d_s8_grad_input(const mt_pool2d_params_t *p, const int8_t *x, const int8_t *dy,
    int8_t *dx) {
    // Gathered per input pixel, so that errors of overlapping windows add up exactly before
    // the one saturation.
    const int c_n = p->channels;
    for (int b = 0; b < p->batch; b++) {
        for (int ih = 0; ih < p->in_h; ih++) {
            int oh0, oh1;
            covering(ih, p->kernel_h, p->stride_h, p->pad_h, p->out_h, &oh0, &oh1);
            for (int iw = 0; iw < p->in_w; iw++) {
                int ow0, ow1;
                covering(iw, p->kernel_w, p->stride_w, p->pad_w, p->out_w, &ow0, &ow1);
                const size_t at = pixel(p, b, ih, iw);
                for (int c = 0; c < c_n; c++) {
                    int32_t sum = 0;
                    for (int oh = oh0; oh < oh1; oh++) {
                        for (int ow = ow0; ow < ow1; ow++) {
                            if (window_argmax(p, x, b, oh, ow, c) == at + (size_t)c) {
                                sum += dy[(((size_t)b * (size_t)p->out_h + (size_t)oh) * (size_t)p->out_w
                                           + (size_t)ow) * (size_t)c_n + (size_t)c];
                            }
                        }
                    }
                    dx[at + (size_t)c] = (int8_t)(sum < -MT_S8_SYM_MAX ? -MT_S8_SYM_MAX
                        : sum > MT_S8_SYM_MAX ? MT_S8_SYM_MAX : sum);
                }
            }
        }
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

void mt_avgpool2d_s8_forward(const mt_pool2d_params_t *p, const int8_t *x, int8_t *y, int32_t zero_point) {
    const int c_n = p->channels;
    const int32_t area = p->kernel_h * p->kernel_w;
    for (int b = 0; b < p->batch; b++) {
        for (int oh = 0; oh < p->out_h; oh++) {
            for (int ow = 0; ow < p->out_w; ow++) {
                window_t w = window_at(p, oh, ow);
                for (int c = 0; c < c_n; c++) {
                    // Padding is real 0, i.e. zero_point: it adds nothing to the offsets.
                    int32_t sum = 0;
                    for (int ih = w.h0; ih < w.h1; ih++) {
                        for (int iw = w.w0; iw < w.w1; iw++) {
                            sum += x[pixel(p, b, ih, iw) + (size_t)c] - zero_point;
                        }
                    }
                    int32_t v = zero_point + div_round_half_even(sum, area);
                    y[c] = (int8_t)(v < MT_S8_ACT_MIN ? MT_S8_ACT_MIN : v > MT_S8_ACT_MAX ? MT_S8_ACT_MAX : v);
                }
                y += c_n;
            }
        }
    }
}

int mt_avgpool2d_s8_cover(const mt_pool2d_params_t *p) {
    int ch = min_int((p->kernel_h + p->stride_h - 1) / p->stride_h, p->out_h);
    int cw = min_int((p->kernel_w + p->stride_w - 1) / p->stride_w, p->out_w);
    return ch * cw;
}

void mt_avgpool2d_s8_grad_input(const mt_pool2d_params_t *p, const int8_t *dy, int8_t *dx) {
    const int c_n = p->channels;
    const int32_t cover = mt_avgpool2d_s8_cover(p);
    for (int b = 0; b < p->batch; b++) {
        for (int ih = 0; ih < p->in_h; ih++) {
            int oh0, oh1;
            covering(ih, p->kernel_h, p->stride_h, p->pad_h, p->out_h, &oh0, &oh1);
            for (int iw = 0; iw < p->in_w; iw++) {
                int ow0, ow1;
                covering(iw, p->kernel_w, p->stride_w, p->pad_w, p->out_w, &ow0, &ow1);
                int8_t *dxp = dx + pixel(p, b, ih, iw);
                for (int c = 0; c < c_n; c++) {
                    int32_t sum = 0;
                    for (int oh = oh0; oh < oh1; oh++) {
                        for (int ow = ow0; ow < ow1; ow++) {
                            sum += dy[(((size_t)b * (size_t)p->out_h + (size_t)oh) * (size_t)p->out_w
                                       + (size_t)ow) * (size_t)c_n + (size_t)c];
                        }
                    }
                    dxp[c] = (int8_t)(cover == 1 ? sum : div_round_half_even(sum, cover));
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
