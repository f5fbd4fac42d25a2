// float16 batch normalization: the fp32 kernels' semantics and parameters
// (batchnorm_f32.h: channels-last (rows, channels), PyTorch's BatchNorm2d conventions)
// with x, y, dy and dx stored as IEEE binary16 (uint16_t bits, see half.h).
//
// The per-channel tensors stay fp32: gamma, beta, their gradients, the running mean and
// variance and the saved mean and 1/std. They cost 4 floats per channel, nothing next to
// the activations, and fp16 would break them: a running statistic moves by momentum * 0.1
// of a difference each step, well under half an fp16 ulp once it settles, and would stop
// updating; fp16 gamma would need stochastic rounding for the same reason. So a float16
// BatchNorm2d layer keeps fp32 parameters and uses the fp32 optimizer kernels for them.
// Statistics and every output are computed in fp32; each output is rounded once.
#ifndef MCUTRAIN_KERNELS_BATCHNORM_F16_H
#define MCUTRAIN_KERNELS_BATCHNORM_F16_H

#include <stdint.h>

#include "batchnorm_f32.h"

// Training forward with batch statistics; writes y, mean and inv_std (fp32, per channel,
// for backward) and updates the running statistics. y may alias x.
void mt_batchnorm_f16_forward_train(const mt_batchnorm_params_t *p, const uint16_t *x,
    const float *gamma, const float *beta, uint16_t *y, float *mean, float *inv_std,
    float *running_mean, float *running_var);

// Inference forward with the running statistics. y may alias x.
void mt_batchnorm_f16_forward_eval(const mt_batchnorm_params_t *p, const uint16_t *x,
    const float *gamma, const float *beta, const float *running_mean, const float *running_var,
    uint16_t *y);

// Backward of the training forward. dx is overwritten (may be NULL; may alias dy);
// dgamma += alpha * dL/dgamma and dbeta += alpha * dL/dbeta (fp32; either may be NULL).
void mt_batchnorm_f16_backward(const mt_batchnorm_params_t *p, const uint16_t *x,
    const uint16_t *dy, const float *gamma, const float *mean, const float *inv_std,
    uint16_t *dx, float alpha, float *dgamma, float *dbeta);

// Backward of the inference forward (running statistics, held fixed): mean and inv_std
// are the running mean and 1/sqrt(running_var + eps). dx, dgamma, dbeta as above.
void mt_batchnorm_f16_backward_eval(const mt_batchnorm_params_t *p, const uint16_t *x, const uint16_t *dy,
    const float *gamma, const float *mean, const float *inv_std, uint16_t *dx, float alpha,
    float *dgamma, float *dbeta);

// Folds inference batch norm into a preceding fp16 convolution or linear layer: weight
// rows (channels rows of row_len halves) are scaled and the bias rewritten, in place.
void mt_batchnorm_f16_fold(const mt_batchnorm_params_t *p, const float *gamma,
    const float *beta, const float *running_mean, const float *running_var, uint16_t *weight,
    int row_len, uint16_t *bias);

#endif
