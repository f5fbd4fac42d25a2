// The float32 backward pass of a mixed Linear layer (layer_mixed.h) straight on its int8
// weights: no float copy of the weight matrix, one row of floats at a time, so a 256x128
// layer needs 1 KB of scratch instead of 128 KB.
#ifndef MCUTRAIN_KERNELS_LINEAR_MIXED_H
#define MCUTRAIN_KERNELS_LINEAR_MIXED_H

#include "linear_f32.h"
#include "quant.h"

// dx = dy * W, W[o][i] = w_scale[o] * w[o][i] (dx overwritten).
void mt_linear_mixed_grad_input(const mt_linear_params_t *p, const float *dy, const int8_t *w,
    const float *w_scale, float *dx);

// The SGD step row by row: v = (1 - lr * weight_decay) * W[o] - lr * sum_n dy[n][o] x[n], then
// requantized as mt_s8_requantize_rows does (rng NULL: nearest even); bias (may be NULL) -=
// lr * sum_n dy[n][o]. row holds in_features floats.
void mt_linear_mixed_update(const mt_linear_params_t *p, const float *x, const float *dy, int8_t *w,
    float *w_scale, float *bias, float lr, float weight_decay, float rescale_below, mt_rng_t *rng, float *row);

#endif
