// int8 pooling on quantized tensors (quant.h), channels-last with pool_f32.h's parameters.
// Outputs keep the input's scale and zero point: the maximum commutes with the affine map,
// so max pooling is exact (ties go to the first maximum in row-major window order, as in
// fp32; padding never wins); a global average is the rounded mean of the integers (half
// to even). Errors are symmetric int8: max pooling routes each dy to its window's maximum,
// in dy's scale (errors of overlapping windows add up exactly, then saturate once at
// +-127); the global average's input error is dy spread over the pixels, which is dy's
// integers unchanged with scale dy_scale / pixels, so it is exact.
// Average pooling (count_include_pad=True, as fp32: padding counts as real zeros, the
// divisor is kernel_h * kernel_w) rounds the exact integer mean to nearest, ties to even.
// Its input error is, per input pixel, the integer sum S of the dy of the windows covering
// it: real S * dy_scale / area. S is written as round_half_even(S / cover) with scale
// dy_scale * cover / area, cover being the most windows any pixel lies in (so |S / cover|
// <= 127): exact when windows do not overlap (stride >= kernel, cover 1), else within half
// a step of the new scale.
//
// Speed: every loop runs over a pixel's channel vector (four channels a word with SSUB8/SEL
// or SXTAB16 on DSP cores). Max pooling's input gradient finds each window's argmax once and
// writes its dy there when windows do not overlap; overlapping windows gather exact sums per
// input row in a small int32 tile on the stack. The averages divide by a reciprocal multiply
// that rounds exactly as the division (pool_s8.c), with a division only past 1024 values.
#ifndef MCUTRAIN_KERNELS_POOL_S8_H
#define MCUTRAIN_KERNELS_POOL_S8_H

#include <stdint.h>

#include "pool_f32.h"

void mt_maxpool2d_s8_forward(const mt_pool2d_params_t *p, const int8_t *x, int8_t *y);
// dx is overwritten.
void mt_maxpool2d_s8_grad_input(const mt_pool2d_params_t *p, const int8_t *x, const int8_t *dy,
    int8_t *dx);

void mt_avgpool2d_s8_forward(const mt_pool2d_params_t *p, const int8_t *x, int8_t *y, int32_t zero_point);
// The most windows covering one input pixel: min(ceil(kernel_h / stride_h), out_h) times the
// same across; dx's scale is dy_scale * cover / (kernel_h * kernel_w).
int mt_avgpool2d_s8_cover(const mt_pool2d_params_t *p);
// dx is overwritten.
void mt_avgpool2d_s8_grad_input(const mt_pool2d_params_t *p, const int8_t *dy, int8_t *dx);

// x (batch, pixels, channels) -> y (batch, channels), both with zero point zero_point.
void mt_global_avgpool_s8_forward(const int8_t *x, int8_t *y, int batch, int pixels, int channels,
    int32_t zero_point);
// dx[b, p, c] = dy[b, c]: the error's scale is divided by pixels by the caller.
void mt_global_avgpool_s8_grad_input(const int8_t *dy, int8_t *dx, int batch, int pixels,
    int channels);

#endif
