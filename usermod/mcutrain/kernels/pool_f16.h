// float16 pooling: the fp32 kernels' semantics and parameters (pool_f32.h: channels-last,
// max pooling's padding is -infinity and ties go to the first maximum, average pooling
// counts padding as zeros) on IEEE binary16 tensors (uint16_t bits, see half.h).
// Max pooling copies the winning input bits (exact); averages are fp32 sums rounded once.
// The max-pooling backward adds each dy into dx in fp16: exact when windows do not
// overlap (kernel <= stride, the usual 2x2/2), otherwise a pixel shared by w windows can
// take up to w - 1 extra roundings. The average-pooling backward gathers each dx from its
// windows and rounds once.
#ifndef MCUTRAIN_KERNELS_POOL_F16_H
#define MCUTRAIN_KERNELS_POOL_F16_H

#include <stdint.h>

#include "pool_f32.h"

void mt_maxpool2d_f16_forward(const mt_pool2d_params_t *p, const uint16_t *x, uint16_t *y);
// dx is overwritten.
void mt_maxpool2d_f16_grad_input(const mt_pool2d_params_t *p, const uint16_t *x,
    const uint16_t *dy, uint16_t *dx);

void mt_avgpool2d_f16_forward(const mt_pool2d_params_t *p, const uint16_t *x, uint16_t *y);
// dx is overwritten.
void mt_avgpool2d_f16_grad_input(const mt_pool2d_params_t *p, const uint16_t *dy,
    uint16_t *dx);

// Mean over all pixels: x (batch, pixels, channels) -> y (batch, channels).
void mt_global_avgpool_f16_forward(const uint16_t *x, uint16_t *y, int batch, int pixels,
    int channels);
void mt_global_avgpool_f16_grad_input(const uint16_t *dy, uint16_t *dx, int batch, int pixels,
    int channels);

#endif
