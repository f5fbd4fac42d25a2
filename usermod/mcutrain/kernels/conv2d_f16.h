// float16 2-D convolution, forward and backward: the fp32 kernels' semantics, parameters
// and layouts (conv2d_f32.h: x, y NHWC, weight OHWI, bias (out_c), Conv1d as in_h = 1),
// with every tensor stored as IEEE binary16 (uint16_t bits, see half.h). Sums run in fp32
// and each output element is rounded to fp16 once, from its complete fp32 sum.
//
// The kernels convert tiles to fp32 in `scratch` and run the fp32 GEMMs on them:
// - general convolutions (including pointwise): forward converts a block of output
//   channels' weights once and im2col tiles of output pixels; the input gradient gathers,
//   per input pixel, the dy values of the taps that read it (one phase of the stride at a
//   time, so strided convolutions do no multiplications by zero) and multiplies them with
//   the weights reordered tap-major; the weight gradient sums one block of kernel rows
//   (and output channels) in fp32 over all pixels, then updates the fp16 weights.
// - depthwise (groups == in_c == out_c) converts tiles of the image and runs the fp32
//   depthwise kernels on them.
// mt_conv2d_f16_scratch_floats() gives the fp32 scratch all three functions need. The
// tiles aim for half the fp32 kernels' scratch or a quarter of the layer's weights and
// one sample's x and y, whichever is more, but at least the smallest tiles (4 pixels by 4
// channels) and at most about 4096 floats (16 KB; at most 4700) while a patch (kernel_h * kernel_w
// * in_c / groups) has up to 512 floats, about 8 patches beyond (the fp32 kernels take
// 4); for depthwise at most 4096 floats up to 200 channels (3x3), then 20 floats per
// channel. Layers of 16K floats and more take the full 16 KB tiles.
// On a Cortex-M4F the 3x3 16x16x16 -> 32 training step (forward, input and weight
// gradient) takes 1.16x the instructions of the fp32 kernels: the conversions (1.5
// instructions per value) and smaller GEMM tiles cost about 0.25 instructions per
// multiply-accumulate on top of the GEMM's 1.3-1.5.
#ifndef MCUTRAIN_KERNELS_CONV2D_F16_H
#define MCUTRAIN_KERNELS_CONV2D_F16_H

#include <stddef.h>
#include <stdint.h>

#include "conv2d_f32.h"
#include "half.h"

// Floats of scratch the three functions below need for these parameters (never 0).
size_t mt_conv2d_f16_scratch_floats(const mt_conv2d_params_t *p);

// y = conv(x, weight) + bias (bias may be NULL). y is overwritten.
void mt_conv2d_f16_forward(const mt_conv2d_params_t *p, const uint16_t *x,
    const uint16_t *weight, const uint16_t *bias, uint16_t *y, float *scratch);

// dx = gradient of the loss with respect to x, given dy. dx is overwritten.
void mt_conv2d_f16_grad_input(const mt_conv2d_params_t *p, const uint16_t *dy,
    const uint16_t *weight, uint16_t *dx, float *scratch);

// dweight += alpha * dL/dweight and dbias += alpha * dL/dbias (dbias may be NULL), each
// element's gradient summed in fp32 and added with a single rounding to fp16: to nearest
// even when rng is NULL, else stochastic (see mt_f16_add_scaled in half.h). With
// dweight = weight and alpha = -lr this is the fused plain-SGD update; run it after
// grad_input, which still needs the old weights.
void mt_conv2d_f16_grad_weight(const mt_conv2d_params_t *p, const uint16_t *x,
    const uint16_t *dy, float alpha, uint16_t *dweight, uint16_t *dbias, float *scratch,
    mt_f16_rng_t *rng);

// The same gradient added into fp32 buffers (dweight += alpha * dL/dweight exactly as the
// fp32 kernel does): for an fp32 momentum buffer or an optimizer's gradient buffer.
void mt_conv2d_f16_grad_weight_f32(const mt_conv2d_params_t *p, const uint16_t *x,
    const uint16_t *dy, float alpha, float *dweight, float *dbias, float *scratch);

#endif
