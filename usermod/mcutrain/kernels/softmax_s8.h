// int8 softmax over the last dimension (rows x cols, row-major), TFLite's output convention:
// y has the fixed scale 1/256 and zero point -128, so p = (y + 128) / 256 and p = 1 saturates
// to 127 (255/256).
//
// Forward runs in float per row from the integer logits (no float tensor is kept; the row's
// exponentials sit in a scratch of cols floats): e_j = expf(s_x (x_j - max x)),
// y_j = round_half_even(e_j * (256 / sum e)) - 128. expf differs between C libraries by an ulp
// or so, so y matches the exactly rounded round(256 p_j) - 128 except within about 1e-4 of a
// rounding tie, where it may be one unit off.
//
// Backward is integer given y: with u = y + 128 in [0, 255] and errors dy (symmetric, scale
// s_dy), dx_j = p_j (dy_j - sum_k p_k dy_k) is, in units of s_dy / 65536,
// acc_j = u_j (256 dy_j - S), S = sum_k u_k dy_k (int32 for cols <= MT_SOFTMAX_S8_MAX_COLS,
// since the u of a softmax output sum to at most 256 + cols / 2), requantized once to dx's
// scale: dx_j = clamp(round(acc_j * s_dy / (65536 s_dx)), +-127), ties toward +infinity
// (mt_requantize).
#ifndef MCUTRAIN_KERNELS_SOFTMAX_S8_H
#define MCUTRAIN_KERNELS_SOFTMAX_S8_H

#include <stdint.h>

#include "quant.h"

#define MT_SOFTMAX_S8_SCALE (1.0f / 256.0f)
#define MT_SOFTMAX_S8_ZERO_POINT (-128)
#define MT_SOFTMAX_S8_MAX_COLS 16384

// scratch: cols floats.
void mt_softmax_s8_forward(const int8_t *x, float x_scale, int8_t *y, int rows, int cols, float *scratch);

// The largest |acc_j| of the input gradient (its real magnitude is that times s_dy / 65536).
int32_t mt_softmax_s8_grad_absmax(const int8_t *y, const int8_t *dy, int rows, int cols);

// dx = requantize(acc, m) saturated to [-127, 127], m for s_dy / (65536 s_dx). dx may be dy.
void mt_softmax_s8_grad_input(const int8_t *y, const int8_t *dy, int8_t *dx, int rows, int cols, mt_requant_t m);

#endif
