// int8 batch normalization over the channels of a channels-last tensor (rows, channels), with
// batchnorm_f32.h's conventions and parameters: int8 x, y (asymmetric) and errors dx, dy
// (symmetric), and float gamma, beta and running statistics per channel.
//
// With v = x - zp_x (exact integers), per channel:
// - statistics (training): S1 = sum v, S2 = sum v^2 exactly (int32, int64), mean_q = S1 / N
//   (in units of s_x), var = (N S2 - S1^2) / (N N) * s_x^2 (the numerator exact in int64: no
//   cancellation); running statistics as in fp32. Eval: mean_q = running_mean / s_x.
//   inv_std = 1 / sqrt(var + eps) either way;
// - forward: y = clamp(zp_y + round_half_even(A (v - mean_q) + B)), A = gamma inv_std s_x / s_y,
//   B = beta / s_y; the output range for tracking is min/max over channels of
//   a (v - mean_q) + beta at each channel's smallest and largest v (a = gamma inv_std s_x);
// - backward (training statistics): with sd = sum dy, sdv = sum dy v (exact integers),
//   k = s_x inv_std, g = k (sdv - mean_q sd) (sum of dy xhat in units of s_dy),
//   inner = (dy - sd / N) - k (v - mean_q) g / N, dx = clamp(round_half_even(P inner), +-127)
//   with P = gamma inv_std s_dy / s_dx; dgamma = s_dy g, dbeta = s_dy sd.
// Each is a fixed sequence of IEEE float32 operations (+ - * / sqrt, no contraction), so the
// numpy reference reproduces it bit for bit.
#ifndef MCUTRAIN_KERNELS_BATCHNORM_S8_H
#define MCUTRAIN_KERNELS_BATCHNORM_S8_H

#include <stdbool.h>
#include <stdint.h>

#include "batchnorm_f32.h"
#include "quant.h"

// The statistics forward and backward use: mean_q[c] and inv_std[c] (training: the batch's,
// updating the running ones; else from the running ones), and the real range of y.
void mt_batchnorm_s8_prepare(const mt_batchnorm_params_t *p, const int8_t *x, mt_qparams_t xq,
    const float *gamma, const float *beta, bool training, float *running_mean, float *running_var,
    float *mean_q, float *inv_std, mt_range_t *y_range);

// y may alias x.
void mt_batchnorm_s8_forward(const mt_batchnorm_params_t *p, const int8_t *x, mt_qparams_t xq,
    const float *gamma, const float *beta, const float *mean_q, const float *inv_std, int8_t *y,
    mt_qparams_t yq);

// dx (scale dx_scale) may be NULL: then only *dx_absmax, the largest real |dx| (max over
// channels of |gamma inv_std s_dy| times the largest |inner|), is computed (dx_absmax may be
// NULL). dgamma = keep * dgamma + alpha * dL/dgamma, dbeta likewise (either NULL to skip):
// plain SGD with decoupled weight decay passes gamma and beta themselves, alpha = -lr and
// keep = 1 - lr * weight_decay; gamma is read before it is written.
void mt_batchnorm_s8_backward(const mt_batchnorm_params_t *p, const int8_t *x, mt_qparams_t xq,
    const int8_t *dy, float dy_scale, const float *gamma, const float *mean_q, const float *inv_std,
    int8_t *dx, float dx_scale, float *dx_absmax, float keep, float alpha, float *dgamma, float *dbeta);

#endif
