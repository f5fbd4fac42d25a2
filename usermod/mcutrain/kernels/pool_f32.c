#include <math.h>
#include <string.h>

#include "pool_f32.h"
#include "pool_window.h"


static inline size_t input_size(const mt_pool2d_params_t *p) {
    return (size_t)p->batch * (size_t)p->in_h * (size_t)p->in_w * (size_t)p->channels;
}

// The "x > max || isnan(x)" test is PyTorch's: strict so the first of equal maxima wins,
// and NaN propagates. Forward and backward must use the same test to agree on the choice.
static inline int beats(float v, float max) {
    return v > max || isnan(v);
}

void mt_maxpool2d_f32_forward(const mt_pool2d_params_t *p, const float *x, float *y) {
    const int c_n = p->channels;
    for (int b = 0; b < p->batch; b++) {
        for (int oh = 0; oh < p->out_h; oh++) {
            for (int ow = 0; ow < p->out_w; ow++) {
                mt_pool_window_t w = mt_pool_window_at(p, oh, ow);
                for (int c = 0; c < c_n; c++) {
                    y[c] = -INFINITY;
                }
                // Channels innermost: contiguous in both x and y.
                for (int kh = w.kh_begin; kh < w.kh_end; kh++) {
                    for (int kw = w.kw_begin; kw < w.kw_end; kw++) {
                        const float *xp = x + mt_pool_pixel(p, b, w.ih0 + kh, w.iw0 + kw);
                        for (int c = 0; c < c_n; c++) {
                            if (beats(xp[c], y[c])) {
                                y[c] = xp[c];
                            }
                        }
                    }
                }
                y += c_n;
            }
        }
    }
}

void mt_maxpool2d_f32_grad_input(const mt_pool2d_params_t *p, const float *x, const float *dy,
    float *dx) {
    memset(dx, 0, input_size(p) * sizeof(float));
    const int c_n = p->channels;
    for (int b = 0; b < p->batch; b++) {
        for (int oh = 0; oh < p->out_h; oh++) {
            for (int ow = 0; ow < p->out_w; ow++) {
                mt_pool_window_t w = mt_pool_window_at(p, oh, ow);
                if (w.kh_begin >= w.kh_end || w.kw_begin >= w.kw_end) {
                    dy += c_n;
                    continue;  // window entirely in the padding: no input to credit
                }
                // One channel at a time so the argmax stays in registers (no index buffer);
                // strided reads cost nothing extra on cache-less microcontrollers.
                size_t first = mt_pool_pixel(p, b, w.ih0 + w.kh_begin, w.iw0 + w.kw_begin);
                for (int c = 0; c < c_n; c++) {
                    // Like PyTorch, start from the first in-bounds element so an all -inf
                    // window still credits a real input.
                    size_t arg = first + (size_t)c;
                    float max = -INFINITY;
                    for (int kh = w.kh_begin; kh < w.kh_end; kh++) {
                        for (int kw = w.kw_begin; kw < w.kw_end; kw++) {
                            size_t i = mt_pool_pixel(p, b, w.ih0 + kh, w.iw0 + kw) + (size_t)c;
                            if (beats(x[i], max)) {
                                max = x[i];
                                arg = i;
                            }
                        }
                    }
                    dx[arg] += dy[c];
                }
                dy += c_n;
            }
        }
    }
}

void mt_avgpool2d_f32_forward(const mt_pool2d_params_t *p, const float *x, float *y) {
    const int c_n = p->channels;
    // count_include_pad=True: the divisor is the full window even where it hangs over.
    const float inv_area = 1.0f / (float)(p->kernel_h * p->kernel_w);
    for (int b = 0; b < p->batch; b++) {
        for (int oh = 0; oh < p->out_h; oh++) {
            for (int ow = 0; ow < p->out_w; ow++) {
                mt_pool_window_t w = mt_pool_window_at(p, oh, ow);
                for (int c = 0; c < c_n; c++) {
                    y[c] = 0.0f;
                }
                for (int kh = w.kh_begin; kh < w.kh_end; kh++) {
                    for (int kw = w.kw_begin; kw < w.kw_end; kw++) {
                        const float *xp = x + mt_pool_pixel(p, b, w.ih0 + kh, w.iw0 + kw);
                        for (int c = 0; c < c_n; c++) {
                            y[c] += xp[c];
                        }
                    }
                }
                for (int c = 0; c < c_n; c++) {
                    y[c] *= inv_area;
                }
                y += c_n;
            }
        }
    }
}

void mt_avgpool2d_f32_grad_input(const mt_pool2d_params_t *p, const float *dy, float *dx) {
    memset(dx, 0, input_size(p) * sizeof(float));
    const int c_n = p->channels;
    const float inv_area = 1.0f / (float)(p->kernel_h * p->kernel_w);
    for (int b = 0; b < p->batch; b++) {
        for (int oh = 0; oh < p->out_h; oh++) {
            for (int ow = 0; ow < p->out_w; ow++) {
                mt_pool_window_t w = mt_pool_window_at(p, oh, ow);
                for (int kh = w.kh_begin; kh < w.kh_end; kh++) {
                    for (int kw = w.kw_begin; kw < w.kw_end; kw++) {
                        float *dxp = dx + mt_pool_pixel(p, b, w.ih0 + kh, w.iw0 + kw);
                        for (int c = 0; c < c_n; c++) {
                            dxp[c] += dy[c] * inv_area;
                        }
                    }
                }
                dy += c_n;
            }
        }
    }
}

void mt_global_avgpool_f32_forward(const float *x, float *y, int batch, int pixels, int channels) {
    const float inv_pixels = pixels > 0 ? 1.0f / (float)pixels : 0.0f;
    for (int b = 0; b < batch; b++) {
        for (int c = 0; c < channels; c++) {
            y[c] = 0.0f;
        }
        for (int i = 0; i < pixels; i++) {
            for (int c = 0; c < channels; c++) {
                y[c] += x[c];
            }
            x += channels;
        }
        for (int c = 0; c < channels; c++) {
            y[c] *= inv_pixels;
        }
        y += channels;
    }
}

void mt_global_avgpool_f32_grad_input(const float *dy, float *dx, int batch, int pixels,
    int channels) {
    const float inv_pixels = pixels > 0 ? 1.0f / (float)pixels : 0.0f;
    for (int b = 0; b < batch; b++) {
        for (int i = 0; i < pixels; i++) {
            for (int c = 0; c < channels; c++) {
                dx[c] = dy[c] * inv_pixels;
            }
            dx += channels;
        }
        dy += channels;
    }
}
