// float16 fully connected layer: the fp32 kernel's semantics and layouts (linear_f32.h:
// x (batch, in), y (batch, out), weight (out, in), bias (out)) with every tensor stored as
// IEEE binary16 (uint16_t bits, see half.h). Blocks of the operands are widened to fp32
// in `scratch` for the fp32 GEMMs; every output element is one fp32 sum, rounded to fp16
// once. The scratch, from mt_linear_f16_scratch_floats(), is about a quarter of
// the layer's weights and one sample's x and y for small layers (blocks at least 4 wide)
// and stays within about 4096 floats (16 KB) for any size: long rows are cut into blocks of 256.
#ifndef MCUTRAIN_KERNELS_LINEAR_F16_H
#define MCUTRAIN_KERNELS_LINEAR_F16_H

#include <stddef.h>
#include <stdint.h>

#include "half.h"
#include "linear_f32.h"

// Floats of scratch the three functions below need for these parameters (never 0).
size_t mt_linear_f16_scratch_floats(const mt_linear_params_t *p);

// y = x * weight^T + bias (bias may be NULL). y is overwritten.
void mt_linear_f16_forward(const mt_linear_params_t *p, const uint16_t *x,
    const uint16_t *weight, const uint16_t *bias, uint16_t *y, float *scratch);

// dx = dy * weight. dx is overwritten.
void mt_linear_f16_grad_input(const mt_linear_params_t *p, const uint16_t *dy,
    const uint16_t *weight, uint16_t *dx, float *scratch);

// dweight += alpha * dy^T * x and dbias += alpha * sum over the batch of dy (dbias may be
// NULL), each element's gradient summed in fp32 and added with one rounding to fp16: to
// nearest even when rng is NULL, else stochastic (mt_f16_add_scaled in half.h). With
// dweight = weight and alpha = -lr this is the fused plain-SGD update.
void mt_linear_f16_grad_weight(const mt_linear_params_t *p, const uint16_t *x,
    const uint16_t *dy, float alpha, uint16_t *dweight, uint16_t *dbias, float *scratch,
    mt_f16_rng_t *rng);

// The same gradient added into fp32 buffers (an fp32 momentum or gradient buffer).
void mt_linear_f16_grad_weight_f32(const mt_linear_params_t *p, const uint16_t *x,
    const uint16_t *dy, float alpha, float *dweight, float *dbias, float *scratch);

#endif
