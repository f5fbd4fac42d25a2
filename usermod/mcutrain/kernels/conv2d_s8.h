// int8 2-D convolution, fully quantized training (quant.h describes the scheme); Conv1d is
// the case in_h = kernel_h = 1. Geometry, layouts and groups are those of conv2d_f32.h
// (x, y, dy, dx NHWC; weight OHWI int8; bias int32, out_c), with the same parameter struct.
//
// Calls, per training step of a layer (all take `scratch`, at least
// mt_conv2d_s8_scratch_bytes(p) bytes, 8-byte aligned, shared by all layers):
//   forward:    y = requant(conv(x - zp_x, w) + bias), clamped to [act_min, act_max];
//               reports the real range of the pre-activation outputs.
//   grad_input: dx from dy and the weights (before the update changes them), reporting
//               the real absmax of dx for the error range tracker.
//   update:     the weight gradient from x and dy, standardized, applied to w, w_scale and
//               bias in place (no float copy of the weights), for all output channels or a
//               mask of them; reports gradient statistics for the standardization.
// Each returns 0, or -1 (leaving its outputs untouched) if a scale makes a requantization
// multiplier unrepresentable (M >= 2^30), which valid quantization parameters never do.
//
// Forward. acc[o] = bias[o] + sum over the patch of (x - zp_x) * w[o] (int32; padding reads
// real 0, i.e. zp_x); y = clamp(zp_y + requant(acc, s_x * s_w[o] / s_y), act_min, act_max).
// y_range gets min and max over all outputs of s_x * s_w[o] * acc: the real value before
// activation and saturation (apply the activation to it, e.g. min = max(min, 0) for ReLU).
//
// Input gradient. The per-output-channel weight scales differ along the sum over o, so the
// kernel folds their ratios into the weights: w'[o] = w[o] * r[o] with r[o] =
// round(2^rb * s_w[o] / max_o s_w[o]) (an integer <= 2^rb), acc = sum dy * w' exactly in
// int32, dx = clamp(requant(acc, s_dy * max s_w / (2^rb * s_dx)), -127, 127). rb = 8 when
// 127 * 127 * 2^rb * (taps * out_c / groups) < 2^31, else the largest rb that keeps sums in
// int32. The only approximation is r[o]: each term's real error is at most
// s_dy * max(s_w) * 2^-(rb+1) * |dy_q * w_q|, i.e. relative 2^-9 of the largest-scale term
// (below the weight's own quantization error of 2^-8). Depthwise needs no fold (each input
// channel sees one output channel) and is exact. dx_absmax gets max |acc| times the unit.
//
// Update (fused weight gradient and SGD step; Deutel et al. 2024 keep no float master copy).
// For each selected output channel o and each weight k of its row:
//   acc[k] = sum over output pixels of dy_q * (x_q - zp_x)            (int32, exact)
//   g = acc * s_dy * s_x                                               (real gradient)
//   c = lr * s_dy * s_x / (sigma_w + eps)   (gradient standardization g / sigma; sigma <= 0
//       turns it off, plain SGD: c = lr * s_dy * s_x), decay = 1 - lr * weight_decay,
//   v[k] = s_w[o] * decay * w_q[k] - c * acc[k]                        (the new real weight)
// and the row is written by the first of these that applies (mt_s8_update_row, quant.c):
//   1. Skip: decay == 1, every acc[k] == 0 and sum dy[o] == 0 (no error reached the row):
//      weights, scale and bias stay exactly as they are, and no random number is drawn.
//   2. Fixed point at the kept scale, when decay == 1, rescale_below < 1 and
//      m = round_half_even(2^32 * (c / s_w[o])) (float32 c / s_w[o], one quantum's step per
//      accumulator unit in Q32) lies in (-2^31, 2^31):
//        r[k] = w_q[k] + floor((R[k] - acc[k] * m) / 2^32)         (exact 64-bit integers)
//      with R[k] = 2^31 (nearest, ties toward +infinity) or, with u->rng, R[k] = the
//      xorshift32 state after one more step, all 32 bits (stochastic: the fraction below
//      the quantum rounds up with its own probability; one draw per weight, k in order, rows
//      in order). The scale is kept, and w_q = r, if every |r[k]| <= 127 and some |r[k]| >=
//      L = ceil(rescale_below * 127) (rescale_below = 0.5: L = 64); the bias becomes
//      b - round_half_even((c_b * sum dy[o]) / (s_x * s_w[o])), saturated. One pass, no
//      float: on the Cortex-M4 one SMMLSR (nearest) or SMLAL (stochastic) per weight and
//      the range check as the sticky Q flag of two QADDs (7 and 11 instructions a weight).
//      m's rounding moves a step by at most |acc| * 2^-33 quanta.
//   3. Otherwise the float rule, with the same draws as 2 (the row's rng state is rewound):
//        new scale s = max_k |v[k]| / top, where top = 112 (MT_S8_RESCALE_TOP, headroom for
//        the next steps) when rescale_below < 1, else 127; after 2 failed the scale always
//        changes, otherwise it is kept while max_k |v[k]| lies in [rescale_below * 127 *
//        s_w[o], 127 * s_w[o]] (the case of weight decay and of steps over half a quantum
//        per accumulator unit; rescale_below >= 1 rescales every row, to max |v| / 127);
//        s_w[o] stays if max |v| == 0;
//        w_q[k] = clamp(round(v[k] / s), -127, 127), nearest even or stochastic: floor(t + u)
//        with u = (state >> 8) * 2^-24 of the next xorshift32 state (mt_rng_uniform);
//        bias (units s_x * s_w): b = round((s_x * s_w_old[o] * b_q - c_b * sum dy[o]) /
//        (s_x * s_new[o])), c_b = lr * s_dy / (sigma_b + eps) (or lr * s_dy), nearest even.
//      The float steps are evaluated exactly in this order, with no fused multiply-add.
// The numpy reference (mcutrain.reference.quantized) mirrors every step, so device results
// are bit exact against it on every target, with both roundings.
//
// Standardization divisor: the caller chooses sigma. The kernel reports w_stats / b_stats,
// sums over this step's accumulators (quant.h), so sigma_w = mt_grad_stats_rms(w_stats,
// s_dy * s_x) is the RMS of the real weight gradient g, and sigma_b =
// mt_grad_stats_rms(b_stats, s_dy) that of the bias gradient. Two ways to use them:
//   - per step, exact: call with u == NULL (statistics only, nothing written) and then
//     with sigma from those statistics: the weight gradient is computed twice;
//   - lagged (one pass; the engine's default): sigma is an mt_ema_t of earlier steps' RMS
//     (seeded by one statistics-only call on the first step), updated after each call.
// The RMS (not the centred standard deviation) is used: the two agree for zero-mean
// gradients, and the RMS keeps sum(g_hat^2) = count, bounding the step, where a gradient
// with a common offset would make g / std explode.
//
// Partial updates: mask (out_c bytes, NULL = all) selects the output channels to update;
// the others cost nothing (no gradient is computed for them), keep their weights, scale
// and bias, and are left out of the statistics. Depthwise layers compute all channels'
// (cheap) sums but update and count only the selected ones.
//
// Speed/memory. Scratch is sized from the layer's own int8 tensors: its weights, input,
// output and their errors ("the layer's bytes"), so that it never dominates a small
// layer's memory.
//   forward and input gradient widen the weights to int16 panels (2 bytes a weight, plus a
//   few rows of the patch or error). When that panel would exceed the layer's bytes at its
//   batch, the weights are packed a block of channel pairs at a time (output channels in
//   the forward, input channels in the input gradient; at least one pair), each block one
//   more pass packing the patches or errors. Results do not depend on the blocks.
//   update works on blocks of output channels; its scratch holds a copy of one sample's x
//   (one group's channels) transposed to channel pairs (about 4 bytes per padded input
//   pixel per channel pair, i.e. 2 per input value), the int32 gradient rows of one block
//   (block * kh * kw * in_c/groups * 4 bytes) and dy of one tile. Every block is one more
//   pass over x, so bigger is faster. Blocks grow while its scratch stays within the larger
//   of the layer's bytes for one sample and what forward and input gradient take (none of
//   it grows with the batch);
//   the update uses whatever block scratch_bytes allows (at least 3 channels:
//   mt_conv2d_s8_update_scratch_bytes(p, 3) is the minimum).
// Example, 16x16x16 input, 3x3, pad 1, 32 filters, batch 1 (Cortex-M4 instruction counts
// under QEMU, kernels -O2; fp32 forward 1.57 M, input gradient 1.73 M, update 1.78 M):
// forward 1.12 M and input gradient 1.17 M with 12 KB (one block each), update 1.27 M with
// the layer's 29 KB (2 passes; the requantizing write-back of 4608 weights included).
//
// Cortex-M4 (any core with __ARM_FEATURE_DSP): the GEMMs run SMLAD on int16 panels (1.48
// multiply-adds per instruction in the inner loop), packing uses SXTAB16/PKHBT, and the
// requantization SMMLA + SSAT; the portable C (host, RV32, M0+) gives bit-identical results.
#ifndef MCUTRAIN_KERNELS_CONV2D_S8_H
#define MCUTRAIN_KERNELS_CONV2D_S8_H

#include <stddef.h>
#include <stdint.h>
#include "conv2d_f32.h"
#include "quant.h"

// Scratch bytes for all three calls (4-byte aligned).
size_t mt_conv2d_s8_scratch_bytes(const mt_conv2d_params_t *p);

// Scratch for an update with output-channel blocks of `block` channels (rounded up to a
// multiple of 3); block = out_c / groups: one pass over x.
size_t mt_conv2d_s8_update_scratch_bytes(const mt_conv2d_params_t *p, int block);

// y (overwritten); bias and y_range may be NULL.
int mt_conv2d_s8_forward(const mt_conv2d_params_t *p, const mt_s8_quant_t *q, const int8_t *x,
    const int8_t *w, const float *w_scale, const int32_t *bias, int8_t *y, mt_range_t *y_range,
    void *scratch);

// dx (overwritten); dx_absmax may be NULL. Call it before the update.
int mt_conv2d_s8_grad_input(const mt_conv2d_params_t *p, const mt_s8_quant_t *q,
    const int8_t *dy, const int8_t *w, const float *w_scale, int8_t *dx, float *dx_absmax,
    void *scratch);

// Updates w, w_scale and bias (may be NULL) in place; u == NULL computes only the
// statistics. mask, w_stats and b_stats may be NULL. Returns -1 (nothing written) if
// scratch_bytes is below mt_conv2d_s8_update_scratch_bytes(p, 3).
int mt_conv2d_s8_update(const mt_conv2d_params_t *p, const mt_s8_quant_t *q,
    const mt_s8_update_t *u, const int8_t *x, const int8_t *dy, int8_t *w, float *w_scale,
    int32_t *bias, const uint8_t *mask, mt_grad_stats_t *w_stats, mt_grad_stats_t *b_stats,
    void *scratch, size_t scratch_bytes);

#endif
