// int8 depthwise convolution (groups == in_c == out_c), the kernel conv2d_s8.c hands these
// layers to, with the same calls, arguments and results (conv2d_s8.h describes them; CMSIS-NN
// keeps arm_depthwise_conv_s8_opt apart from arm_convolve_s8 the same way).
//
// Layout. Each channel sees one filter, so the kernels work a group of 4 channels at a time
// on "planes": the group's channels of a band of rows gathered out of NHWC once into int16
// rows (x - zp_x exactly, padding 0), one plane per channel (on Cortex-M4 one word load and
// two SXTAB16 split 4 channels and subtract the zero point). In a plane horizontally adjacent
// pixels are adjacent halfwords, so a pair of taps of one channel is one 32-bit load and one
// SMLAD; the weights are widened once per group to int16 rows of an even length (kw rounded
// up, zero padded). The forward correlates the x plane with the filter; the input gradient
// correlates a plane of dy (dilated by the stride, offset by kernel - 1 - padding) with the
// flipped filter; the update sums dy * x per tap over a plane of each. A layer taller than
// wide runs transposed (its columns as the planes' rows) when that fits the scratch below:
// per-row costs then spread over the long side (the keyword-spotting maps are 25x5).
//
// Cortex-M4: 3x3 filters at unit column stride run output pairs in one assembly loop (each
// kernel row's words (x_o, x_o+1), (x_o+2, x_o+3) against (w0, w1), (w1, w2): 6 products in
// 4 instructions, 24 instructions a pair; on the input gradient's rows the requantization
// is fused into that loop), other shapes one SMLAD per tap pair; the epilogue requantizes
// with SMMLA + SSAT (zero point folded, mt_s8_rq_c) and tracks each channel's accumulator
// range in registers. Portable C (host, RV32) uses int16 multiply-adds on the same planes;
// both give bit-identical results (and equal the numpy reference).
//
// Scratch: the requantization constants and range of every channel, one group's int16
// weights and one band (planes and int32 accumulators for the forward and input gradient;
// planes of x and dy and a group's tap sums for the update). Bands hold at least 4 rows,
// more while the scratch stays within what these layers took before the planes (C * (32 +
// 5 * taps) bytes, 8-byte rounded) plus 256 bytes.
//
// Instructions per layer call (qemu-m4f, Conv2d(32, 32, 3, padding=1, groups=32, dtype=int8)
// on (1, 25, 5, 32), warm): forward 168 K, backward without update (input gradient) 169 K,
// update 136 K (before this file: 538 K, 554 K, 449 K; float32: 79 K, 77 K, 87 K). About 40
// instructions an output: ~14 multiply-add (9 products), ~14 requantize and track the
// range, ~7 gather; the rest is the layer's own work. qemu-rv32: 327 K, 310 K, 566 K
// (soft-float fp32: 5.69 M, 5.62 M, 6.17 M).
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
