// float16 elementwise activations, softmax and add: the fp32 kernels' semantics
// (activation_f32.h) on IEEE binary16 tensors (uint16_t bits, see half.h). ReLU and ReLU6
// work on the bits and are exact (NaN passes through, -0 stays -0, as in fp32); softmax
// and add compute in fp32 and round each output once. Every forward may run in place
// (y == x) and every backward too (dx == dy).
#ifndef MCUTRAIN_KERNELS_ACTIVATION_F16_H
#define MCUTRAIN_KERNELS_ACTIVATION_F16_H

#include <stddef.h>
#include <stdint.h>

// y = max(x, 0)
void mt_relu_f16_forward(const uint16_t *x, uint16_t *y, size_t n);
// dx = dy where y > 0, else 0 (from the forward's output).
void mt_relu_f16_grad_input(const uint16_t *y, const uint16_t *dy, uint16_t *dx, size_t n);

// y = min(max(x, 0), 6)
void mt_relu6_f16_forward(const uint16_t *x, uint16_t *y, size_t n);
// dx = dy where 0 < y < 6, else 0.
void mt_relu6_f16_grad_input(const uint16_t *y, const uint16_t *dy, uint16_t *dx, size_t n);

// Softmax over each of `rows` rows of `cols` values, the row maximum subtracted first.
// Each exponential is computed twice (for the sum, then for the output) rather than kept
// in an fp16 buffer, so each output is rounded once.
void mt_softmax_f16_forward(const uint16_t *x, uint16_t *y, int rows, int cols);
// dx = y * (dy - sum(dy * y)) per row, the sum in fp32.
void mt_softmax_f16_grad_input(const uint16_t *y, const uint16_t *dy, uint16_t *dx, int rows,
    int cols);

// y = a + b (residual connections; the backward passes dy to both inputs).
void mt_add_f16(const uint16_t *a, const uint16_t *b, uint16_t *y, size_t n);

#endif
