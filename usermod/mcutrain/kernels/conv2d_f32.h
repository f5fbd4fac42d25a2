// fp32 2-D convolution, forward and backward; Conv1d is the case in_h = kernel_h = 1.
//
// Layouts (channels-last, so one pixel's channels are contiguous and a 3x3 patch is
// kernel_h runs of kernel_w * in_c contiguous floats):
//   x      (batch, in_h, in_w, in_c)        NHWC
//   y, dy  (batch, out_h, out_w, out_c)     NHWC
//   weight (out_c, kernel_h, kernel_w, in_c / groups)   OHWI
//   bias   (out_c)
// Output channel o belongs to group o / (out_c / groups) and sees input channels
// [g * in_c / groups, (g + 1) * in_c / groups). Padding is zeros; pad_h/pad_w are the
// top/left pads, and out_h/out_w decide how much of the bottom/right is used.
//
// General convolutions go through im2col on a tile of output pixels and a GEMM; the
// tile lives in `scratch`, whose size mt_conv2d_f32_scratch_floats() gives. Depthwise
// (groups == in_c == out_c) and pointwise (1x1, stride 1, no padding, groups 1) have
// direct paths that need no tile; pointwise may be given the scratch (or NULL) as the
// GEMMs' packing workspace (gemm_f32.h).
#ifndef MCUTRAIN_KERNELS_CONV2D_F32_H
#define MCUTRAIN_KERNELS_CONV2D_F32_H

#include <stddef.h>

typedef struct {
    int batch;
    int in_h, in_w, in_c;
    int out_h, out_w, out_c;
    int kernel_h, kernel_w;
    int stride_h, stride_w;
    int pad_h, pad_w;
    int groups;
} mt_conv2d_params_t;

// Output size along one axis; the bindings use it to check and plan shapes.
static inline int mt_conv_out_size(int in, int kernel, int stride, int pad_before, int pad_after) {
    return (in + pad_before + pad_after - kernel) / stride + 1;
}

// Floats of scratch the three functions below need for these parameters (0 if none).
size_t mt_conv2d_f32_scratch_floats(const mt_conv2d_params_t *p);

// y = conv(x, weight) + bias (bias may be NULL). y is overwritten.
void mt_conv2d_f32_forward(const mt_conv2d_params_t *p, const float *x, const float *weight,
    const float *bias, float *y, float *scratch);

// dx = gradient of the loss with respect to x, given dy. dx is overwritten.
void mt_conv2d_f32_grad_input(const mt_conv2d_params_t *p, const float *dy, const float *weight,
    float *dx, float *scratch);

// dweight += alpha * dL/dweight and dbias += alpha * dL/dbias (dbias may be NULL).
// With dweight = weight and alpha = -lr this is a fused plain-SGD update; callers run it
// after grad_input, which still needs the old weights.
void mt_conv2d_f32_grad_weight(const mt_conv2d_params_t *p, const float *x, const float *dy,
    float alpha, float *dweight, float *dbias, float *scratch);

#endif
