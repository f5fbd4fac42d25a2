// int8 fully connected layer, fully quantized training (the scheme: quant.h; the maths of
// forward, input gradient and update, and how to call them: conv2d_s8.h, of which this is
// the case of a 1x1 "image" per sample). Layouts as linear_f32.h: x (batch, in), y and dy
// (batch, out), weight (out, in) int8 with one scale per output row, bias int32 (out).
//
// Speed: the forward packs up to 4 samples' inputs (minus the zero point) once and streams
// each weight row through SXTB16 + SMLAD for all of them (batch 1: two rows a pass; 2-4
// samples: one LDR and 2 SXTB16 per 4 weights, then an LDRD and 2 SMLAD a sample). The input gradient sums pairs of weight rows with
// SMLAD (PKHBT/PKHTB + SXTB16 make the pairs), skipping rows whose error is zero. The update
// skips rows with no error in the batch (without weight decay they do not move), and builds
// each other selected row's int32 gradient in scratch the same way, two samples a pass (one:
// SMLABB/SMLATB), the input's zero point folded into the first pass's constant, and applies
// it at once. At batch 1 without statistics it builds no rows: x - zp is widened to int16
// once and each row's fixed-point pass multiplies it by dy[o] * m (mt_s8_update_row_rank1;
// on the Cortex-M4 35 instructions per four weights stochastic, 26 nearest, loop included).
// MLP 256-128-10, batch 1, plain SGD, stochastic (qemu-m4f): train step 568 K -> 355 K
// instructions (float32: 104 K); of the 355 K, 161 K are this pass (xorshift32's three EORs
// a weight are a third of it) and 77 K the float rule for the 4 of 66 active rows whose
// largest weight left [-127, 127] (fewer each step after the initialization: 26, 11, 12, 4,
// 4 over the bench's five steps).
#ifndef MCUTRAIN_KERNELS_LINEAR_S8_H
#define MCUTRAIN_KERNELS_LINEAR_S8_H

#include <stddef.h>
#include <stdint.h>
#include "linear_f32.h"
#include "quant.h"

// Scratch bytes for all three calls (8-byte aligned).
size_t mt_linear_s8_scratch_bytes(const mt_linear_params_t *p);

// y (overwritten); bias and y_range may be NULL. Returns 0, or -1 (nothing written) if a
// requantization multiplier is unrepresentable.
int mt_linear_s8_forward(const mt_linear_params_t *p, const mt_s8_quant_t *q, const int8_t *x,
    const int8_t *w, const float *w_scale, const int32_t *bias, int8_t *y, mt_range_t *y_range,
    void *scratch);

// dx (overwritten), before the update; dx_absmax may be NULL.
int mt_linear_s8_grad_input(const mt_linear_params_t *p, const mt_s8_quant_t *q,
    const int8_t *dy, const int8_t *w, const float *w_scale, int8_t *dx, float *dx_absmax,
    void *scratch);

// Updates w, w_scale and bias (may be NULL) in place, rows selected by mask (NULL: all);
// u == NULL computes only the statistics (w_stats, b_stats may be NULL).
int mt_linear_s8_update(const mt_linear_params_t *p, const mt_s8_quant_t *q,
    const mt_s8_update_t *u, const int8_t *x, const int8_t *dy, int8_t *w, float *w_scale,
    int32_t *bias, const uint8_t *mask, mt_grad_stats_t *w_stats, mt_grad_stats_t *b_stats,
    void *scratch);

#endif
