// Scale / zero-point maths for int8 fully quantized training (FQT), after Deutel et al. 2024
// ("On-Device Training of Fully Quantized Deep Neural Networks on Cortex-M Microcontrollers",
// arXiv 2407.10734), with the requantization arithmetic of TFLite / CMSIS-NN.
//
// The scheme (all int8 layers follow it; the layer kernels are conv2d_s8.h and linear_s8.h):
//
// - Tensors: real = scale * (q - zero_point), one scale per tensor.
//   * activations x, y: int8 asymmetric, q in [-128, 127], zero point in [-128, 127] so that
//     real 0 is exact (padding and ReLU clamp to it);
//   * weights: int8 symmetric (zero point 0), q in [-127, 127], one scale per output channel
//     (per-tensor is all scales equal);
//   * errors dy, dx (gradients flowing backward): int8 symmetric, q in [-127, 127];
//   * bias: int32 in units of s_x * s_w[o] (so it adds straight into the accumulator); when
//     s_x or s_w[o] change, mt_rescale_bias_s32() re-expresses it.
// - Rounding: float -> int rounds to nearest, ties to even (mt_round_half_even), or
//   stochastically (mt_round_stochastic: floor(x + u), u uniform in [0, 1) with 24 bits,
//   drawn from an explicit xorshift32 state). Every conversion saturates to its range.
// - Requantization (int32 accumulator -> int8) multiplies by a real M > 0 held as a Q31
//   multiplier and a shift, M = multiplier * 2^(shift - 31), multiplier in [2^30, 2^31).
//   mt_quant_multiplier() builds it from a float exactly (a float has 24 mantissa bits, so
//   the Q31 multiplier is the float's mantissa: no double maths and no rounding).
//   mt_requantize() is exact: round(acc * M) with one rounding of the exact 64-bit product,
//   ties toward +infinity (CMSIS-NN's "single rounding"; the Cortex-M4 kernels do it, with the
//   output zero point, in one SMMLA and one ASR).
// - Forward: acc = bias[o] + sum (x - zp_x) * w (int32), y = clamp(zp_y + requant(acc,
//   s_x * s_w[o] / s_y), act_min, act_max); the kernels also report the real range of the
//   pre-activation outputs, min/max over o of s_x * s_w[o] * acc, for range tracking.
// - Backward: see conv2d_s8.h (input gradient with per-channel weight scales, and the fused
//   weight update with gradient standardization and per-channel requantization).
// - Range tracking: mt_range_observe() keeps an exponential moving average of min and max
//   (the first observation is taken as is), mt_range_observe_widening() takes a wider range
//   at once (a layer's outputs); mt_qparams_asymmetric / _symmetric turn a range into a scale
//   and zero point for the next step.
//
// Floats here are IEEE single precision with no double maths, and every function is
// deterministic, so the numpy reference (host/mcutrain/reference/quantized.py) reproduces
// each result bit for bit.
#ifndef MCUTRAIN_KERNELS_QUANT_H
#define MCUTRAIN_KERNELS_QUANT_H

#include <stddef.h>
#include <stdint.h>

#define MT_S8_ACT_MIN (-128)   // activations
#define MT_S8_ACT_MAX 127
#define MT_S8_SYM_MAX 127      // weights and errors: [-127, 127]
// Where a rescaled weight row puts its largest |w| when the update keeps scales between
// rescales (rescale_below < 1, conv2d_s8.h): below 127, so that the next small steps fit
// the kept scale (at 127 every step up would rescale again). 0.18 bits of the range.
#define MT_S8_RESCALE_TOP 112.0f

// Scales below this (or not finite) are rejected by the qparams functions: multipliers
// built from them would leave the int32 range.
#define MT_QUANT_MIN_SCALE 1e-30f

// The narrowest activation range (after widening it to include 0) that
// mt_qparams_asymmetric() quantizes: a near-constant activation (a blank sample through
// BatchNorm leaves ~1e-5 of rounding residue) would otherwise get a scale so small that
// every bias, in units of s_x * s_w, leaves the int32 range. 2^-10: real activations span
// far more, so normal ranges are unaffected.
#define MT_QUANT_MIN_RANGE 0.0009765625f

// Every int32 bias is saturated to [-2^30, 2^30] (mt_bias_clamp_s32), so that adding the
// products of one output (each |(x - zp) * w| <= 255 * 127) cannot overflow the accumulator.
#define MT_S8_BIAS_MAX 1073741824

typedef struct {
    float scale;            // > 0
    int32_t zero_point;     // in [-128, 127]; 0 for symmetric tensors
} mt_qparams_t;

// M = multiplier * 2^(shift - 31); multiplier in [2^30, 2^31), or 0 for M = 0 (or M below
// 2^-62, which rounds every int32 to 0).
typedef struct {
    int32_t multiplier;
    int32_t shift;          // <= 30 (M < 2^30)
} mt_requant_t;

// Random state for stochastic rounding (xorshift32, Marsaglia 2003). Any state but 0.
typedef struct {
    uint32_t state;
} mt_rng_t;

// A real range, as the kernels report it and the trackers keep it.
typedef struct {
    float min, max;
} mt_range_t;

// Exponential moving average of a range; count == 0 means no observation yet.
typedef struct _mt_range_tracker_t {
    float min, max;
    int32_t count;
} mt_range_tracker_t;

// ---- rounding ------------------------------------------------------------------------------

// Nearest integer, ties to even, saturated to int32 (NaN gives 0).
int32_t mt_round_half_even(float x);

// xorshift32 step; returns the new state.
uint32_t mt_rng_next(mt_rng_t *rng);

// Uniform in [0, 1): the top 24 bits of the next state times 2^-24 (exact in a float).
float mt_rng_uniform(mt_rng_t *rng);

// floor(x + u) with u = mt_rng_uniform(rng): rounds up with probability frac(x) (up to
// the float rounding of x + u), saturated to int32. rng == NULL rounds to nearest even.
int32_t mt_round_stochastic(float x, mt_rng_t *rng);

// ---- quantize / dequantize -----------------------------------------------------------------

// q[i] = clamp(round(x[i] / scale) + zero_point, qmin, qmax), rounding to nearest even, or
// stochastically if rng is not NULL (one draw per element, in order).
void mt_quantize_s8(const float *x, int8_t *q, size_t n, mt_qparams_t qp, int qmin, int qmax,
    mt_rng_t *rng);

// x[i] = scale * (q[i] - zero_point).
void mt_dequantize_s8(const int8_t *q, float *x, size_t n, mt_qparams_t qp);

// Per output channel, symmetric: w is (channels, row_len) row-major; scale[o] =
// max |w[o]| / 127 (1 if the row is all zeros), q = round(w / scale[o]) in [-127, 127].
void mt_quantize_weights_s8(const float *w, int8_t *q, float *scale, int channels, int row_len);

// b saturated to [-MT_S8_BIAS_MAX, MT_S8_BIAS_MAX].
int32_t mt_bias_clamp_s32(int32_t b);

// q[o] = round(b[o] / (x_scale * w_scale[o])), saturated to +-MT_S8_BIAS_MAX.
void mt_quantize_bias_s32(const float *b, int32_t *q, int channels, float x_scale,
    const float *w_scale);

// Re-expresses a bias in new units after the input's scale changed from old_x_scale to
// new_x_scale (weight scales unchanged): b = round(b * (old_x_scale / new_x_scale)),
// saturated to +-MT_S8_BIAS_MAX.
void mt_rescale_bias_s32(int32_t *b, int channels, float old_x_scale, float new_x_scale);

// The smallest input scale at which every bias fits without saturating:
// max over o of (|b[o]| / w_scale[o]) * 2^-30 (0 for no bias). A layer that chooses its own
// input scale (dtype="mixed") never goes below it.
float mt_bias_min_x_scale(const float *b, int channels, const float *w_scale);

// ---- scale and zero point ------------------------------------------------------------------

// Asymmetric int8 parameters covering [min, max], widened to include 0 so that real 0 is
// exact: scale = (max - min) / 255, zero_point = -128 - round(min / scale), clamped. A
// degenerate range (max == min == 0) gives scale 1. Returns 0, or -1 if min or max is not
// finite or scale would be below MT_QUANT_MIN_SCALE; else a range narrower than
// MT_QUANT_MIN_RANGE is widened upward to it (max = min + MT_QUANT_MIN_RANGE).
int mt_qparams_asymmetric(float min, float max, mt_qparams_t *out);

// Raises qp's scale to least (if larger and finite), the zero point following the range's
// min as in mt_qparams_asymmetric: the range then still covers [min(min, 0), old max].
void mt_qparams_raise_scale(mt_qparams_t *qp, float min, float least);

// Symmetric parameters for |x| <= absmax: scale = absmax / 127 (1 if absmax is 0), zero
// point 0. Returns 0, or -1 as above.
int mt_qparams_symmetric(float absmax, mt_qparams_t *out);

// 0 if qp is usable: scale finite and >= MT_QUANT_MIN_SCALE, zero point in [-128, 127].
int mt_qparams_check(mt_qparams_t qp);

// ---- fixed-point requantization ------------------------------------------------------------

// The multiplier for a real M. Returns 0, or -1 if M is negative, NaN, infinite or at least
// 2^30 (M = 0 and M < 2^-62 give multiplier 0).
int mt_quant_multiplier(float real, mt_requant_t *out);

// round(acc * M) exactly (ties toward +infinity); left shifts for M >= 1 saturate acc first.
int32_t mt_requantize(int32_t acc, mt_requant_t m);

// ---- range tracking ------------------------------------------------------------------------

// First observation: taken as is. Then min = momentum * min + (1 - momentum) * lo, same for
// max (momentum in [0, 1); 0 keeps only the latest range). A non-finite lo or hi is ignored.
void mt_range_observe(mt_range_tracker_t *t, float lo, float hi, float momentum);

// mt_range_observe for a layer's outputs: a range wider at either end is taken at once
// (the other end kept), a narrower one by the moving average.
void mt_range_observe_widening(mt_range_tracker_t *t, float lo, float hi, float momentum);

// Exponential moving average of one value (the gradient standardization's divisor): the
// first observation is taken as is; count == 0 means none yet.
typedef struct {
    float value;
    int32_t count;
} mt_ema_t;

void mt_ema_observe(mt_ema_t *e, float value, float momentum);

// ---- layer quantization state and update step (conv2d_s8.h, linear_s8.h) -------------

// The quantization state of a layer (its input, output, and the errors at both).
typedef struct {
    mt_qparams_t x;             // input activations (asymmetric)     forward, update
    mt_qparams_t y;             // output activations (asymmetric)    forward
    float dy_scale;             // error at the output (symmetric)    grad_input, update
    float dx_scale;             // error at the input (symmetric)     grad_input
    int32_t act_min, act_max;   // fused clamp of y_q, -128 <= act_min <= act_max <= 127:
                                // -128/127 none, zp_y/127 ReLU, zp_y/min(127, zp_y +
                                // round(6 / s_y)) ReLU6
} mt_s8_quant_t;

// One update step.
typedef struct {
    float lr;
    float weight_decay;         // decoupled: weights shrink by (1 - lr * weight_decay)
    float sigma_w;              // standardization divisor of weight gradients (real units)
    float sigma_b;              // same for bias gradients; <= 0: no standardization
    float eps;                  // added to sigma
    float rescale_below;        // in (0, 1]: 1 requantizes every channel to max |w| / 127;
                                // below 1 scales are kept in fixed point (conv2d_s8.h)
    mt_rng_t *rng;              // stochastic rounding of the new weights; NULL: nearest even
} mt_s8_update_t;

// Requantizes float weights v (rows x row_len, real units) into w with one scale per row,
// as the int8 update's float rule did before it kept scales in fixed point (conv2d_s8.h;
// the mixed layers' update): scale[o] is kept while the row's largest |v| lies in
// [rescale_below * 127 * scale[o], 127 * scale[o]], else becomes max |v| / 127; w =
// clamp(round(v / scale), -127, 127), stochastic with rng, else nearest even.
void mt_s8_requantize_rows(const float *v, int8_t *w, float *scale, int rows, int row_len, float rescale_below,
    mt_rng_t *rng);

// ---- gradient statistics (for standardization, see conv2d_s8.h) ----------------------------

// Sums over the gradient accumulators a kernel computed (integers, in units of the
// gradient's scale), accumulated in float in a fixed order so that the reference can
// reproduce them: sum of a, sum of a * a, and the number of elements.
typedef struct {
    float sum;
    float sum_sq;
    int32_t count;
} mt_grad_stats_t;

// Root mean square of the accumulators times unit (the real value of one accumulator step):
// unit * sqrt(sum_sq / count); 0 when count is 0.
float mt_grad_stats_rms(const mt_grad_stats_t *s, float unit);

#endif
