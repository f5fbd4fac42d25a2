// fp32 elementwise activations and softmax. All work on n contiguous floats, and
// every forward may run in place (y == x); backward may run in place (dx == dy).
#ifndef MCUTRAIN_KERNELS_ACTIVATION_F32_H
#define MCUTRAIN_KERNELS_ACTIVATION_F32_H

#include <stddef.h>

// y = max(x, 0)
void mt_relu_f32_forward(const float *x, float *y, size_t n);
// dx = dy where y > 0, else 0. Takes the forward's output so x need not be kept.
void mt_relu_f32_grad_input(const float *y, const float *dy, float *dx, size_t n);

// y = min(max(x, 0), 6)
void mt_relu6_f32_forward(const float *x, float *y, size_t n);
// dx = dy where 0 < y < 6, else 0.
void mt_relu6_f32_grad_input(const float *y, const float *dy, float *dx, size_t n);

// Softmax over each of `rows` rows of `cols` floats, subtracting the row maximum first
// so large logits do not overflow.
void mt_softmax_f32_forward(const float *x, float *y, int rows, int cols);
// dx = y * (dy - sum(dy * y)) per row.
void mt_softmax_f32_grad_input(const float *y, const float *dy, float *dx, int rows, int cols);

// y = a + b (the Add of residual connections; its backward passes dy to both inputs).
void mt_add_f32(const float *a, const float *b, float *y, size_t n);

#endif
