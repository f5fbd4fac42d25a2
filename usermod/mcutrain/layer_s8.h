// int8 fully quantized training for Linear and Conv layers (Deutel et al. 2024, after
// kernels/quant.h and conv2d_s8.h): the binding side. A layer keeps
// - int8 weights with an fp32 scale per output channel (layer.weight_scale), updated in place
//   by the kernels with no float copy;
// - an fp32 bias in real units (it is out_c floats), turned into the kernels' int32 units of
//   s_x * s_w[o] before each pass and back after each update;
// - range trackers of its output's real range (widened at once to a wider observation,
//   narrowed by an exponential moving average, momentum MT_S8_RANGE_MOMENTUM: a range that
//   lagged behind growing outputs clamped them, the loss no longer saw the growth the
//   gradient kept pushing, and the weights ran away; bench/int8_stability.py) and of its
//   input error's magnitude relative to its output error's scale (mt_s8_error_observe, a
//   moving average), which give the int8 scales of the next pass: no float activation or
//   error is ever stored. A tracker without an observation (the first pass) is filled by
//   running that pass once more first;
// - the gradient standardization divisors sigma_w, sigma_b (mt.SGD(standardize=True)):
//   moving averages of earlier steps' gradient RMS, seeded by a statistics-only pass on the
//   first step;
// - a random state for stochastic rounding of the new weights (mt.SGD(rounding=...)).
// The update is plain SGD (lr, weight decay) on the real-valued gradient, or on the gradient
// over its running RMS with standardize=True. The new weights round to nearest even by
// default; mt.SGD(rounding="stochastic") is what training from scratch wants: an update
// under half a quantization step then still moves a weight with the right probability,
// where nearest rounding loses it for good (digits CNN: 95.3% against 88-89% test
// accuracy), for about 4 more instructions per updated weight on the Cortex-M4 (11 against
// 7 in the fixed-point update pass). Standardization keeps every step near lr whatever the
// loss, so it cannot anneal and ends noisier (about 90% on digits); it is there for the
// paper's scheme.
// Momentum and Adam need float state per weight, which this scheme avoids, so int8 layers
// refuse them.
#ifndef MCUTRAIN_LAYER_S8_H
#define MCUTRAIN_LAYER_S8_H

#include "layer.h"
#include "kernels/quant.h"

#define MT_S8_RANGE_MOMENTUM (0.9f)
// Keep a channel's weight scale while its largest new weight stays within [1/2, 1] of the
// int8 range: small steps then leave the other weights exactly as they were.
#define MT_S8_RESCALE_BELOW (0.5f)

// Input errors are tracked relative to the output error's scale (every int8 layer's
// backward does this). Errors grow and shrink with each sample's loss, by orders of
// magnitude from one sample to the next; the loss quantizes each sample's error with its
// own scale and dx is linear in dy, so |dx| in units of dy's scale follows every sample
// where a moving average of absolute magnitudes lags and clips or rounds errors away
// (Fashion-MNIST CNN trained in int8: 76.6% -> 79.2% test accuracy; digits 95.5% -> 96.6%).
static inline void mt_s8_error_observe(mt_range_tracker_t *t, float absmax, float dy_scale) {
    mt_range_observe(t, 0.0f, absmax / dy_scale, MT_S8_RANGE_MOMENTUM);
}

// The magnitude to quantize this pass's input error for, from the tracker: 0 if every error
// so far was 0, else never below what mt_qparams_symmetric accepts.
static inline float mt_s8_error_absmax(const mt_range_tracker_t *t, float dy_scale) {
    const float a = t->max * dy_scale, least = 127.0f * MT_QUANT_MIN_SCALE;
    return a > 0.0f && a < least ? least : a;
}

typedef struct {
    mt_s8_quant_t q;               // the current pass's scales (x, y, dy, dx)
    mt_range_tracker_t y_range;    // output (pre-activation) range
    mt_range_tracker_t dx_range;   // input error magnitude in units of dy's scale (max only)
    mt_ema_t sigma_w, sigma_b;     // gradient standardization divisors
    int32_t *bias_q;               // the bias in kernel units, or NULL without bias
    mt_rng_t rng;                  // stochastic rounding of updated weights
    int out_c;
} mt_s8_layer_t;

// The int8 parameters one backward kernel call works on: the layer's own (mt_s8_view_of),
// or compact copies of the k output channels a partial update selected
// (layer_s8_partial.c).
typedef struct {
    int8_t *weight;
    float *weight_scale;
    int32_t *bias_q;               // NULL without bias
    int out_c;                     // the layer's output channels, or k
} mt_s8_view_t;

static inline mt_s8_view_t mt_s8_view_of(mt_s8_layer_t *s, mt_layer_obj_t *layer) {
    return (mt_s8_view_t) { layer->weight->data, layer->weight_scale->data, s->bias_q, s->out_c };
}

// The kernels of one layer type, bound to its parameters (mt_conv_s8_core in layer_conv_s8.c,
// mt_linear_s8_core in layer_linear_s8.c): the int8 and mixed kernel tables run them. The
// backward calls run on a view; with a compact one, a depthwise layer's x and dx hold the
// view's channels only.
typedef struct {
    int (*forward)(mt_layer_obj_t *layer, const int8_t *x, int8_t *y, mt_range_t *y_range, void *scratch);
    int (*grad_input)(mt_layer_obj_t *layer, const mt_s8_view_t *v, const int8_t *dy, int8_t *dx,
        float *dx_absmax, void *scratch);
    int (*update)(mt_layer_obj_t *layer, const mt_s8_view_t *v, const mt_s8_update_t *u, const int8_t *x,
        const int8_t *dy, mt_grad_stats_t *w_stats, mt_grad_stats_t *b_stats, void *scratch, size_t scratch_bytes);
    // Scratch bytes of the three calls on a view of out_c channels.
    size_t (*scratch_bytes)(const mt_layer_obj_t *layer, int out_c);
    // Whether each output channel sees only its own input channel (depthwise).
    bool (*depthwise)(const mt_layer_obj_t *layer);
} mt_s8_kernels_t;

// Parameters of a new int8 layer: weights drawn as for fp32 (PyTorch's bounds) and
// quantized per output channel; an fp32 bias.
void mt_s8_layer_init(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_shape_t *wshape, int fan_in, bool bias,
    const char *what);
void mt_s8_forward(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_tensor_obj_t *x, const mt_pass_t *pass,
    const mt_s8_kernels_t *k);
void mt_s8_backward(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass, const mt_s8_kernels_t *k);
// The forward pass on raw int8 input with parameters xq, into y (mt_s8_forward's core; the
// output's parameters are then s->q.y).
void mt_s8_forward_into(mt_s8_layer_t *s, mt_layer_obj_t *layer, const int8_t *x, mt_qparams_t xq, int8_t *y,
    const mt_pass_t *pass, const mt_s8_kernels_t *k);
// y = a + b (int8 tensors of one size, each in its own scale), requantized to the range
// `range` tracks; a first pass measures it when it has none, and with observe the sum then
// updates it (mt.Add, mt.Residual). ValueError naming `who` if a scale is out of range.
void mt_s8_add_tracked(mt_range_tracker_t *range, const mt_tensor_obj_t *a, const mt_tensor_obj_t *b,
    mt_tensor_obj_t *y, bool observe, const char *who);
struct _mt_int8_sgd_t;
// The two halves of mt_s8_backward on a view (layer_s8_partial.c runs them on compact
// ones): dx from dy with the error range tracking, then the update of the view's
// parameters (bias_q only; the caller turns it back into the fp32 bias).
void mt_s8_grad_input_tracked(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_s8_view_t *v, const int8_t *dy,
    float dy_scale, mt_tensor_obj_t *dx, int8_t *dx_data, void *scratch, const mt_s8_kernels_t *k);
void mt_s8_update_view(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_s8_view_t *v,
    const struct _mt_int8_sgd_t *sgd, const int8_t *x, const int8_t *dy, void *scratch, size_t scratch_bytes,
    const mt_s8_kernels_t *k);
// Partial updates (layer_s8_partial.c): the backward pass of a layer whose policy is
// ChannelRatio or TopK, and the scratch bytes it needs (0 for other policies).
void mt_s8_backward_partial(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_tensor_obj_t *x,
    const mt_tensor_obj_t *dy, mt_tensor_obj_t *dx, const mt_pass_t *pass, const mt_s8_kernels_t *k);
size_t mt_s8_partial_scratch_bytes(const mt_layer_obj_t *layer, const mt_s8_kernels_t *k);
// BiasOnly: the fp32 bias takes the step; weights and scales stay as they are.
void mt_s8_bias_only(mt_s8_layer_t *s, mt_layer_obj_t *layer, const struct _mt_int8_sgd_t *sgd,
    const mt_tensor_obj_t *dy);
// The scratch floats of an int8 layer: its kernels', or a partial update's if larger.
size_t mt_s8_scratch_floats(const mt_layer_obj_t *layer, const mt_s8_kernels_t *k);

// The int8 update settings of the pass's optimizer; NULL for a frozen layer; raises if the
// optimizer cannot train int8 (or mixed) layers.
const struct _mt_int8_sgd_t *mt_s8_sgd(const mt_layer_obj_t *layer, const mt_pass_t *pass);

#endif
