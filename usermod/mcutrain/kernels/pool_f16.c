#include <math.h>

#include "half.h"
#include "pool_f16.h"
#include "pool_window.h"

// Per-channel running values live on the stack in blocks of this many channels.
#define CHANNEL_BLOCK 16

static inline int max_int(int a, int b) {
    return a > b ? a : b;
}

static inline int min_int(int a, int b) {
    return a < b ? a : b;
}

// The fp32 kernels' test (strict, so the first of equal maxima wins; NaN wins).
static inline int beats(float v, float max) {
    return v > max || isnan(v);
}

static int floor_div(int a, int b) {
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

void mt_maxpool2d_f16_forward(const mt_pool2d_params_t *p, const uint16_t *x, uint16_t *y) {
    const int c_n = p->channels;
    float best[CHANNEL_BLOCK];
    uint16_t bits[CHANNEL_BLOCK];
    for (int b = 0; b < p->batch; b++) {
        for (int oh = 0; oh < p->out_h; oh++) {
            for (int ow = 0; ow < p->out_w; ow++, y += c_n) {
                const mt_pool_window_t w = mt_pool_window_at(p, oh, ow);
                for (int c0 = 0; c0 < c_n; c0 += CHANNEL_BLOCK) {
                    const int nc = min_int(CHANNEL_BLOCK, c_n - c0);
                    for (int j = 0; j < nc; j++) {
                        best[j] = -INFINITY;
                        bits[j] = 0xfc00u;   // -infinity
                    }
                    for (int kh = w.kh_begin; kh < w.kh_end; kh++) {
                        for (int kw = w.kw_begin; kw < w.kw_end; kw++) {
                            const uint16_t *xp = x + mt_pool_pixel(p, b, w.ih0 + kh, w.iw0 + kw) + c0;
                            for (int j = 0; j < nc; j++) {
                                const float v = mt_f16_to_f32(xp[j]);
                                if (beats(v, best[j])) {
                                    best[j] = v;
                                    bits[j] = xp[j];
                                }
                            }
                        }
                    }
                    for (int j = 0; j < nc; j++) {
                        y[c0 + j] = bits[j];
                    }
                }
            }
        }
    }
}

void mt_maxpool2d_f16_grad_input(const mt_pool2d_params_t *p, const uint16_t *x,
    const uint16_t *dy, uint16_t *dx) {
    const size_t n = (size_t)p->batch * (size_t)p->in_h * (size_t)p->in_w * (size_t)p->channels;
    for (size_t i = 0; i < n; i++) {
        dx[i] = MT_F16_ZERO;
    }
    const int c_n = p->channels;
    for (int b = 0; b < p->batch; b++) {
        for (int oh = 0; oh < p->out_h; oh++) {
            for (int ow = 0; ow < p->out_w; ow++, dy += c_n) {
                const mt_pool_window_t w = mt_pool_window_at(p, oh, ow);
                if (w.kh_begin >= w.kh_end || w.kw_begin >= w.kw_end) {
                    continue;   // window entirely in the padding
                }
                const size_t first = mt_pool_pixel(p, b, w.ih0 + w.kh_begin, w.iw0 + w.kw_begin);
                for (int c = 0; c < c_n; c++) {
                    size_t arg = first + (size_t)c;
                    float max = -INFINITY;
                    for (int kh = w.kh_begin; kh < w.kh_end; kh++) {
                        for (int kw = w.kw_begin; kw < w.kw_end; kw++) {
                            const size_t i = mt_pool_pixel(p, b, w.ih0 + kh, w.iw0 + kw) + (size_t)c;
                            const float v = mt_f16_to_f32(x[i]);
                            if (beats(v, max)) {
                                max = v;
                                arg = i;
                            }
                        }
                    }
                    dx[arg] = mt_f32_to_f16(mt_f16_to_f32(dx[arg]) + mt_f16_to_f32(dy[c]));
                }
            }
        }
    }
}

void mt_avgpool2d_f16_forward(const mt_pool2d_params_t *p, const uint16_t *x, uint16_t *y) {
    const int c_n = p->channels;
    const float inv_area = 1.0f / (float)(p->kernel_h * p->kernel_w);
    float sum[CHANNEL_BLOCK];
    for (int b = 0; b < p->batch; b++) {
        for (int oh = 0; oh < p->out_h; oh++) {
            for (int ow = 0; ow < p->out_w; ow++, y += c_n) {
                const mt_pool_window_t w = mt_pool_window_at(p, oh, ow);
                for (int c0 = 0; c0 < c_n; c0 += CHANNEL_BLOCK) {
                    const int nc = min_int(CHANNEL_BLOCK, c_n - c0);
                    for (int j = 0; j < nc; j++) {
                        sum[j] = 0.0f;
                    }
                    for (int kh = w.kh_begin; kh < w.kh_end; kh++) {
                        for (int kw = w.kw_begin; kw < w.kw_end; kw++) {
                            const uint16_t *xp = x + mt_pool_pixel(p, b, w.ih0 + kh, w.iw0 + kw) + c0;
                            for (int j = 0; j < nc; j++) {
                                sum[j] += mt_f16_operand(xp + j);
                            }
                        }
                    }
                    for (int j = 0; j < nc; j++) {
                        y[c0 + j] = mt_f16_result(sum[j] * inv_area);
                    }
                }
            }
        }
    }
}

// Gathered per input pixel: the windows that contain row ih are oh in
// [ceil((ih + pad - kernel + 1) / stride), floor((ih + pad) / stride)], within the output.
void mt_avgpool2d_f16_grad_input(const mt_pool2d_params_t *p, const uint16_t *dy,
    uint16_t *dx) {
    const int c_n = p->channels;
    const float inv_area = 1.0f / (float)(p->kernel_h * p->kernel_w);
    float sum[CHANNEL_BLOCK];
    for (int b = 0; b < p->batch; b++) {
        const uint16_t *dyb = dy + (size_t)b * (size_t)p->out_h * (size_t)p->out_w * (size_t)c_n;
        for (int ih = 0; ih < p->in_h; ih++) {
            const int oh_lo = max_int(0, -floor_div(p->kernel_h - 1 - ih - p->pad_h, p->stride_h));
            const int oh_hi = min_int(p->out_h - 1, floor_div(ih + p->pad_h, p->stride_h));
            for (int iw = 0; iw < p->in_w; iw++, dx += c_n) {
                const int ow_lo = max_int(0, -floor_div(p->kernel_w - 1 - iw - p->pad_w, p->stride_w));
                const int ow_hi = min_int(p->out_w - 1, floor_div(iw + p->pad_w, p->stride_w));
                for (int c0 = 0; c0 < c_n; c0 += CHANNEL_BLOCK) {
                    const int nc = min_int(CHANNEL_BLOCK, c_n - c0);
                    for (int j = 0; j < nc; j++) {
                        sum[j] = 0.0f;
                    }
                    for (int oh = oh_lo; oh <= oh_hi; oh++) {
                        for (int ow = ow_lo; ow <= ow_hi; ow++) {
                            const uint16_t *d = dyb + ((size_t)oh * (size_t)p->out_w + (size_t)ow)
                                                          * (size_t)c_n + (size_t)c0;
                            for (int j = 0; j < nc; j++) {
                                sum[j] += mt_f16_operand(d + j);
                            }
                        }
                    }
                    for (int j = 0; j < nc; j++) {
                        dx[c0 + j] = mt_f16_result(sum[j] * inv_area);
                    }
                }
            }
        }
    }
}

void mt_global_avgpool_f16_forward(const uint16_t *x, uint16_t *y, int batch, int pixels,
    int channels) {
    const float inv_pixels = pixels > 0 ? 1.0f / (float)pixels : 0.0f;
    float sum[CHANNEL_BLOCK];
    for (int b = 0; b < batch; b++, y += channels) {
        const uint16_t *xb = x + (size_t)b * (size_t)pixels * (size_t)channels;
        for (int c0 = 0; c0 < channels; c0 += CHANNEL_BLOCK) {
            const int nc = min_int(CHANNEL_BLOCK, channels - c0);
            for (int j = 0; j < nc; j++) {
                sum[j] = 0.0f;
            }
            const uint16_t *xp = xb + c0;
            for (int i = 0; i < pixels; i++, xp += channels) {
                for (int j = 0; j < nc; j++) {
                    sum[j] += mt_f16_operand(xp + j);
                }
            }
            for (int j = 0; j < nc; j++) {
                y[c0 + j] = mt_f16_result(sum[j] * inv_pixels);
            }
        }
    }
}

void mt_global_avgpool_f16_grad_input(const uint16_t *dy, uint16_t *dx, int batch, int pixels,
    int channels) {
    const float inv_pixels = pixels > 0 ? 1.0f / (float)pixels : 0.0f;
    uint16_t share[CHANNEL_BLOCK];
    for (int b = 0; b < batch; b++, dy += channels) {
        uint16_t *dxb = dx + (size_t)b * (size_t)pixels * (size_t)channels;
        for (int c0 = 0; c0 < channels; c0 += CHANNEL_BLOCK) {
            const int nc = min_int(CHANNEL_BLOCK, channels - c0);
            for (int j = 0; j < nc; j++) {
                share[j] = mt_f16_result(mt_f16_operand(dy + c0 + j) * inv_pixels);
            }
            uint16_t *d = dxb + c0;
            for (int i = 0; i < pixels; i++, d += channels) {
                for (int j = 0; j < nc; j++) {
                    d[j] = share[j];
                }
            }
        }
    }
}
