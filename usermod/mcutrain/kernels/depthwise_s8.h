// int8 depthwise convolution (groups == in_c == out_c), the kernel conv2d_s8.c hands these
// layers to, with the same calls, arguments and results (conv2d_s8.h describes them; CMSIS-NN
// keeps arm_depthwise_conv_s8_opt apart from arm_convolve_s8 the same way).
//
// Layout. Each channel sees one filter, so the kernels work a group of 4 channels at a time
// on "planes": the group's channels of a band of rows gathered out of NHWC once into int16
// rows (x - zp_x, padding 0, zero columns to the right), one plane per channel. In a plane
// horizontally adjacent pixels are adjacent halfwords, so a pair of taps of one channel is
// one 32-bit load and one SMLAD on Cortex-M4; the weights are widened once per call to int16
// rows of an even length (kw rounded up, zero padded). The input gradient correlates a plane
// of dy (dilated by the stride and padded by kernel - 1 - padding) with the flipped filter;
// the update sums dy * x per tap over a plane of each.
//
// Scratch: the requantization constants and range of every channel, the int16 weights, and
// one band (planes and int32 accumulators for the forward and input gradient; planes of x
// and dy and a group's tap sums for the update). Bands hold at least 8 rows, more while the
// scratch stays within what these layers took before (about C * (32 + 5 * taps) bytes) plus 256 bytes.
#ifndef MCUTRAIN_KERNELS_DEPTHWISE_S8_H
#define MCUTRAIN_KERNELS_DEPTHWISE_S8_H

#include <stddef.h>
#include <stdint.h>
#include "conv2d_f32.h"
#include "quant.h"

// Whether p is a depthwise layer (these kernels take it).
int mt_depthwise_s8_applies(const mt_conv2d_params_t *p);

// Scratch bytes for all three calls (8-byte aligned).
size_t mt_depthwise_s8_scratch_bytes(const mt_conv2d_params_t *p);

int mt_depthwise_s8_forward(const mt_conv2d_params_t *p, const mt_s8_quant_t *q, const int8_t *x,
    const int8_t *w, const float *w_scale, const int32_t *bias, int8_t *y, mt_range_t *y_range,
    void *scratch);

int mt_depthwise_s8_grad_input(const mt_conv2d_params_t *p, const mt_s8_quant_t *q,
    const int8_t *dy, const int8_t *w, const float *w_scale, int8_t *dx, float *dx_absmax,
    void *scratch);

// The statistics are reset by the caller (mt_conv2d_s8_update). Returns -1 (nothing
// written) if scratch_bytes is below mt_depthwise_s8_scratch_bytes(p).
int mt_depthwise_s8_update(const mt_conv2d_params_t *p, const mt_s8_quant_t *q,
    const mt_s8_update_t *u, const int8_t *x, const int8_t *dy, int8_t *w, float *w_scale,
    int32_t *bias, const uint8_t *mask, mt_grad_stats_t *w_stats, mt_grad_stats_t *b_stats,
    void *scratch, size_t scratch_bytes);

#endif
