// dtype="mixed" for Linear and Conv layers: int8 forward, fp32 backward, with quantization-
// aware scaling (Lin et al. 2022, "On-Device Training Under 256KB Memory").
//
// A mixed layer takes and gives float32, so it sits among float32 layers, but it keeps the
// int8 layer's parameters (layer_s8.h): int8 weights with one scale per output channel, an
// fp32 bias, and the tracked output range (layer.quant_range).
// - Forward: the input is quantized with its own range (asymmetric int8, nearest even), the
//   int8 kernels compute the output exactly as an int8 layer does (int32 sums, requantized
//   to the tracked output range), and the int8 output is dequantized into the float output.
// - Backward: the weights are dequantized into scratch, w = s_w[o] * q, and the float32
//   kernels compute the input error and the weight gradient on them (the straight-through
//   estimator: the rounding of forward is taken as the identity).
// - Update: QAS. The gradient with respect to the int8 weights is s_w * G_W and that of the
//   int32 bias is s_w * s_x * G_b; QAS scales them by 1 / s_w^2 and 1 / (s_w * s_x)^2, so a
//   step of lr in integer units moves the real weight by lr * G_W and the real bias by
//   lr * G_b: the fp32 step. The layer therefore takes the fp32 SGD step on the dequantized
//   weights (the fused update of the float32 kernels) and requantizes each output channel
//   at once as the int8 update does (its scale kept while the row's largest weight stays
//   within [1/2, 1] of the int8 range, stochastic or nearest-even rounding per
//   mt.SGD(rounding=)). No float copy of the weights outlives the step.
// Training needs mt.SGD without momentum, as int8 layers do. Scratch: the largest of the
// kernels' scratch, plus the int8 input and output (forward) or the float weights (backward).
// Linear layers skip the float weight matrix: their backward (kernels/linear_mixed.h) works
// on the int8 weights a row at a time, which is the same step.
#ifndef MCUTRAIN_LAYER_MIXED_H
#define MCUTRAIN_LAYER_MIXED_H

#include "layer_s8.h"

// The float32 backward pass of the layer type (weights already float32).
typedef void (*mt_f32_backward_t)(mt_layer_obj_t *layer, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass);

// Scratch floats of a planned mixed layer whose kernels need kernel_floats and whose
// backward needs w_floats more (the float weights, or a row of them).
size_t mt_mixed_scratch_floats(const mt_layer_obj_t *layer, size_t kernel_floats, size_t w_floats);
void mt_mixed_forward(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_tensor_obj_t *x, const mt_pass_t *pass,
    const mt_s8_kernels_t *k, size_t kernel_floats);
void mt_mixed_backward(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass, mt_f32_backward_t f32_backward, size_t kernel_floats);

#endif
