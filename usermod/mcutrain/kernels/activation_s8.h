// int8 activations on quantized tensors (quant.h: real = scale * (q - zero_point)). The
// output keeps the input's scale and zero point, so ReLU and ReLU6 are clamps of the
// integers to [lo, hi] and exact: ReLU lo = zero_point, hi = 127; ReLU6 also hi =
// zero_point + round(6 / scale) (at most 127). Errors are symmetric int8 and pass where the
// output lies strictly inside the clamp, as in the fp32 kernels (activation_f32.h); for
// ReLU give hi = 128 so that outputs saturated at 127 still pass theirs. Forward and
// backward may run in place.
#ifndef MCUTRAIN_KERNELS_ACTIVATION_S8_H
#define MCUTRAIN_KERNELS_ACTIVATION_S8_H

#include <stddef.h>
#include <stdint.h>

// y = min(max(x, lo), hi)
void mt_clamp_s8_forward(const int8_t *x, int8_t *y, size_t n, int32_t lo, int32_t hi);

// dx = dy where lo < y < hi, else 0.
void mt_clamp_s8_grad_input(const int8_t *y, const int8_t *dy, int8_t *dx, size_t n, int32_t lo,
    int32_t hi);

#endif
