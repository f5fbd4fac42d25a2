// Optimizer updates for float16 weights (IEEE binary16, uint16_t bits; see half.h), with
// the fp32 kernels' parameters and PyTorch's rules (optim_f32.h). Every new weight is
// formed in fp32 from the old one and rounded to fp16 once; with rng == NULL to nearest
// even, else stochastically (see mt_f16_add_scaled in half.h for why: without it, updates
// under half an fp16 ulp, including a typical weight decay of lr * wd ~ 1e-5, are lost).
//
// The velocity may be fp16 (the _v16 functions: 2 bytes per weight, half of fp32 SGD's
// state, also rounded with rng when given) or fp32 (_v32: 4 bytes, no rounding in the
// velocity; use mt_*_f16_grad_weight_f32 for the gradient pass). An fp16 velocity is
// enough for momentum: v = momentum * v + g changes by a large fraction of itself every
// step, so its rounding errors stay relative (2^-11) instead of piling up as a weight's do.
//
// Fused use, as with fp32 (optim_f32.h):
//   without momentum: begin (weight decay), then the gradient pass with dweight = w,
//                     alpha = -lr and the rng; end does nothing.
//   with momentum:    begin (v = momentum * v + weight_decay * w), the gradient pass with
//                     dweight = v and alpha = 1, then end (w -= lr * v).
#ifndef MCUTRAIN_KERNELS_OPTIM_F16_H
#define MCUTRAIN_KERNELS_OPTIM_F16_H

#include <stddef.h>
#include <stdint.h>

#include "half.h"
#include "optim_f32.h"

void mt_sgd_f16_fused_begin_v16(const mt_sgd_params_t *p, uint16_t *w, uint16_t *velocity,
    size_t n, mt_f16_rng_t *rng);
void mt_sgd_f16_fused_end_v16(const mt_sgd_params_t *p, uint16_t *w, const uint16_t *velocity,
    size_t n, mt_f16_rng_t *rng);

void mt_sgd_f16_fused_begin_v32(const mt_sgd_params_t *p, uint16_t *w, float *velocity,
    size_t n, mt_f16_rng_t *rng);
void mt_sgd_f16_fused_end_v32(const mt_sgd_params_t *p, uint16_t *w, const float *velocity,
    size_t n, mt_f16_rng_t *rng);

// The unfused step from an fp32 gradient g: w -= lr * v with v = momentum * v +
// (g + weight_decay * w); velocity may be NULL when momentum is 0.
void mt_sgd_f16_step_v16(const mt_sgd_params_t *p, uint16_t *w, const float *g,
    uint16_t *velocity, size_t n, mt_f16_rng_t *rng);
void mt_sgd_f16_step_v32(const mt_sgd_params_t *p, uint16_t *w, const float *g,
    float *velocity, size_t n, mt_f16_rng_t *rng);

// Adam (torch.optim.Adam) on fp16 weights with an fp32 gradient and fp32 moments m, v: the
// second moment spans far more than fp16's range (g^2 underflows below 2^-12 |g| ~ 6e-8).
void mt_adam_f16_step(const mt_adam_params_t *p, uint16_t *w, const float *g, float *m,
    float *v, size_t n, mt_f16_rng_t *rng);

#endif
