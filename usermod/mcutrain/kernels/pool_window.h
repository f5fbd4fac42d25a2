// The pooling kernels' shared geometry (float32 and float16): which part of an output
// pixel's window lies inside the input, and where an input pixel starts.
#ifndef MCUTRAIN_KERNELS_POOL_WINDOW_H
#define MCUTRAIN_KERNELS_POOL_WINDOW_H

#include <stddef.h>

#include "pool_f32.h"

// Kernel rows [kh_begin, kh_end) and columns [kw_begin, kw_end) of one window lie inside the
// input; its top-left corner is input pixel (ih0, iw0), which may lie in the padding.
typedef struct {
    int ih0, iw0;
    int kh_begin, kh_end;
    int kw_begin, kw_end;
} mt_pool_window_t;

static inline mt_pool_window_t mt_pool_window_at(const mt_pool2d_params_t *p, int oh, int ow) {
    mt_pool_window_t w;
    w.ih0 = oh * p->stride_h - p->pad_h;
    w.iw0 = ow * p->stride_w - p->pad_w;
    w.kh_begin = w.ih0 < 0 ? -w.ih0 : 0;
    w.kh_end = p->in_h - w.ih0 < p->kernel_h ? p->in_h - w.ih0 : p->kernel_h;
    w.kw_begin = w.iw0 < 0 ? -w.iw0 : 0;
    w.kw_end = p->in_w - w.iw0 < p->kernel_w ? p->in_w - w.iw0 : p->kernel_w;
    return w;
}

// Offset of pixel (ih, iw) of image b, channel 0.
static inline size_t mt_pool_pixel(const mt_pool2d_params_t *p, int b, int ih, int iw) {
    return (((size_t)b * (size_t)p->in_h + (size_t)ih) * (size_t)p->in_w + (size_t)iw)
           * (size_t)p->channels;
}

#endif
