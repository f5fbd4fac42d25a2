// Small fp32 vector helpers for the reduced-precision paths: the ranges that choose
// quantization parameters (quant.h) of tensors arriving in fp32 (inputs converted to int8,
// loss gradients of int8 outputs), scaling a chunk of a loss gradient, and an int8 layer's
// bias back in real units.
#ifndef MCUTRAIN_KERNELS_VECTOR_F32_H
#define MCUTRAIN_KERNELS_VECTOR_F32_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

// *lo = min(x), *hi = max(x) over n values; NaNs are skipped (both 0 if nothing is left).
void mt_minmax_f32(const float *x, size_t n, float *lo, float *hi);

// max |x| over n values (0 for n == 0); NaNs are skipped.
float mt_absmax_f32(const float *x, size_t n);

// x *= a
void mt_scale_f32(float *x, size_t n, float a);

// b[o] = q[o] * (x_scale * w_scale[o]): an int32 bias in units of s_x * s_w[o] (quant.h)
// back in real units; mt_quantize_bias_s32 inverts it exactly while |q| < 2^24.
void mt_bias_s32_to_f32(const int32_t *q, float *b, int channels, float x_scale, const float *w_scale);

// Whether all n values are finite (no inf, no NaN): the check before a fused update, which
// must cost little beside the pass it guards.
bool mt_all_finite_f32(const float *x, size_t n);

#endif
