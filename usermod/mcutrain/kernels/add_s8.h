// The sum of two int8 tensors with different quantizations (quant.h), requantized to a third:
// the join of a residual block, and the meeting of its two input errors in backward.
//
// y = zp_y + round(M_a (a - zp_a) + M_b (b - zp_b)), with M_a = s_a / s_y and M_b = s_b / s_y
// rounded to float32 once and then held exactly as Q31 multipliers and shifts
// (mt_quant_multiplier). Both integer products are brought to a common power of two in int64
// and their sum is rounded once, ties toward +infinity (as mt_requantize), then clamped to
// [qmin, qmax]: the result is exact up to that one rounding. Only when the two multipliers'
// exponents differ by more than 22 (one term then weighs under 2^-22 of the other) is the
// smaller product rounded to the common power of two first (half up), a second rounding.
//
// Activations pass their zero points and [-128, 127]; symmetric errors pass zero points 0
// and [-127, 127].
#ifndef MCUTRAIN_KERNELS_ADD_S8_H
#define MCUTRAIN_KERNELS_ADD_S8_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

typedef struct {
    int32_t m_a, m_b;       // Q31 multipliers; 0: the term adds nothing
    int32_t sh_a, sh_b;     // each product's shift to the common exponent: left if >= 0,
                            // else a rounding (half up) right shift
    int32_t right;          // the final rounding right shift, in [1, 63]
    float unit;             // s_y * 2^-right: the real value of one unit of the int64 sum
} mt_add_s8_t;

// The constants for scales s_a, s_b, s_y. Returns 0, or -1 if s_a / s_y or s_b / s_y is not
// finite, negative or at least 2^30.
int mt_add_s8_make(float a_scale, float b_scale, float y_scale, mt_add_s8_t *out);

// n elements. y may be a or b (in place), or NULL to measure the range only. range (if not
// NULL) gets the real min and max of the sums before rounding, (float)sum * unit (0, 0 for
// n == 0).
void mt_add_s8(const mt_add_s8_t *k, const int8_t *a, int32_t zp_a, const int8_t *b, int32_t zp_b,
    int8_t *y, int32_t zp_y, int32_t qmin, int32_t qmax, size_t n, mt_range_t *range);

#endif
