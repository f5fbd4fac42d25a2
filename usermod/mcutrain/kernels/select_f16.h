// Partial updates of float16 layers (select_f32.h is the float32 twin): error magnitudes
// from fp16 errors, and fp16 columns in and out of compact buffers.
#ifndef MCUTRAIN_KERNELS_SELECT_F16_H
#define MCUTRAIN_KERNELS_SELECT_F16_H

#include <stdint.h>

// magnitude[c] = sum over rows of |x[r][c]| in fp32, rows in order, for fp16 x (rows, channels).
void mt_channel_l1_f16(const uint16_t *x, int rows, int channels, float *magnitude);

// out[r][j] = x[r][indices[j]] for x (rows, channels), out (rows, k) (any 16-bit elements).
void mt_gather_columns_u16(const uint16_t *x, int rows, int channels, const int32_t *indices, int k, uint16_t *out);

// x[r][indices[j]] = in[r][j], and every other column of x set to +0.
void mt_scatter_columns_u16(const uint16_t *in, int rows, int channels, const int32_t *indices, int k, uint16_t *x);

#endif
