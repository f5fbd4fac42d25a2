// int8 Linear and Conv layers: quantization state, range tracking and the update protocol
// (layer_s8.h). The kernels (conv2d_s8.h, linear_s8.h) do the work.
#include "py/runtime.h"
#include "layer_s8.h"
#include "grad_sink.h"
#include "partial_update.h"
#include "kernels/checked_size.h"
#include "kernels/add_s8.h"
#include "kernels/vector_f32.h"
#include "random.h"

void mt_s8_layer_init(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_shape_t *wshape, int fan_in, bool bias,
    const char *what) {
    int out_c = wshape->dim[0];
    size_t size = mt_shape_size(wshape);
    int row_len = (int)(size / (size_t)out_c);
    // Drawn in fp32 exactly as a float32 layer's, then quantized per output channel: the
    // fp32 copy lives only here.
    mt_tensor_obj_t *w = mt_layer_new_param(wshape, fan_in, MT_FLOAT32, what);
    layer->weight = mt_tensor_new(wshape, MT_INT8, what);
    mt_shape_t cshape = { .ndim = 1, .dim = { out_c } };
    layer->weight_scale = mt_tensor_new(&cshape, MT_FLOAT32, what);
    mt_quantize_weights_s8(w->data, layer->weight->data, layer->weight_scale->data, out_c, row_len);
    m_del(uint8_t, w->data, size * sizeof(float));
    w->data = NULL;
    s->bias_q = NULL;
    if (bias) {
        layer->bias = mt_layer_new_param(&cshape, fan_in, MT_FLOAT32, what);
        s->bias_q = m_new0(int32_t, out_c);
    }
    s->out_c = out_c;
    s->rng.state = mt_random_u32() | 1u;
    s->q = (mt_s8_quant_t) {
        .x = { 1.0f, 0 }, .y = { 1.0f, 0 }, .dy_scale = 1.0f, .dx_scale = 1.0f,
        .act_min = MT_S8_ACT_MIN, .act_max = MT_S8_ACT_MAX,
    };
    s->y_range.count = s->dx_range.count = 0;
    layer->quant_range = &s->y_range;
    s->sigma_w.count = s->sigma_b.count = 0;
}

// The kernels refuse scales whose requantization multipliers they cannot represent.
NORETURN static void raise_kernel(const mt_layer_obj_t *layer, const char *what) {
    mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%q: int8 %s: a quantization scale is out of range"),
        mt_layer_name(layer), what);
}

static void set_qparams(const mt_layer_obj_t *layer, int ok, const char *what) {
    if (ok != 0) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%q: int8 %s range is not finite or below 1e-28"),
            mt_layer_name(layer), what);
    }
}

void mt_s8_forward(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_tensor_obj_t *x, const mt_pass_t *pass,
    const mt_s8_kernels_t *k) {
    mt_qparams_t xq = { x->scale, x->zero_point };
    mt_s8_forward_into(s, layer, x->data, xq, layer->output->data, pass, k);
    layer->output->scale = s->q.y.scale;
    layer->output->zero_point = s->q.y.zero_point;
}

void mt_s8_forward_into(mt_s8_layer_t *s, mt_layer_obj_t *layer, const int8_t *x, mt_qparams_t xq, int8_t *y,
    const mt_pass_t *pass, const mt_s8_kernels_t *k) {
    s->q.x = xq;
    if (s->bias_q) {
        mt_quantize_bias_s32(layer->bias->data, s->bias_q, s->out_c, xq.scale, layer->weight_scale->data);
    }
    mt_range_t range;
    bool observed = false;
    if (s->y_range.count == 0) {
        // No range yet: a first pass measures it.
        s->q.y.scale = 1.0f;
        s->q.y.zero_point = 0;
        if (k->forward(layer, x, y, &range, pass->scratch) != 0) {
            raise_kernel(layer, "forward");
        }
        mt_range_observe(&s->y_range, range.min, range.max, MT_S8_RANGE_MOMENTUM);
        observed = true;
    }
    // Still no range: the first pass saw only inf or NaN (the tracker ignores them).
    set_qparams(layer, s->y_range.count == 0 ? -1 : mt_qparams_asymmetric(s->y_range.min, s->y_range.max, &s->q.y),
        "output");
    // A folded ReLU (layer.h) is the epilogue's clamp, in the output's quantization.
    mt_act_s8_bounds(layer, s->q.y.scale, s->q.y.zero_point, &s->q.act_min, &s->q.act_max);
    if (k->forward(layer, x, y, &range, pass->scratch) != 0) {
        raise_kernel(layer, "forward");
    }
    if (pass->training && !observed) {
        mt_range_observe_widening(&s->y_range, range.min, range.max, MT_S8_RANGE_MOMENTUM);
    }
}

NORETURN static void raise_sum_scale(const char *who) {
    mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s: int8 sum: a quantization scale is out of range"), who);
}

void mt_s8_add_tracked(mt_range_tracker_t *range, const mt_tensor_obj_t *a, const mt_tensor_obj_t *b,
    mt_tensor_obj_t *y, bool observe, const char *who) {
    mt_add_s8_t k;
    mt_range_t seen;
    bool observed = false;
    if (range->count == 0) {
        if (mt_add_s8_make(a->scale, b->scale, 1.0f, &k) != 0) {
            raise_sum_scale(who);
        }
        mt_add_s8(&k, a->data, a->zero_point, b->data, b->zero_point, NULL, 0, MT_S8_ACT_MIN, MT_S8_ACT_MAX,
            y->size, &seen);
        mt_range_observe(range, seen.min, seen.max, MT_S8_RANGE_MOMENTUM);
        observed = true;
    }
    mt_qparams_t qp;
    if (range->count == 0 || mt_qparams_asymmetric(range->min, range->max, &qp) != 0
        || mt_add_s8_make(a->scale, b->scale, qp.scale, &k) != 0) {
        raise_sum_scale(who);
    }
    mt_add_s8(&k, a->data, a->zero_point, b->data, b->zero_point, y->data, qp.zero_point, MT_S8_ACT_MIN,
        MT_S8_ACT_MAX, y->size, &seen);
    if (observe && !observed) {
        mt_range_observe(range, seen.min, seen.max, MT_S8_RANGE_MOMENTUM);
    }
    y->scale = qp.scale;
    y->zero_point = qp.zero_point;
}

const mt_int8_sgd_t *mt_s8_sgd(const mt_layer_obj_t *layer, const mt_pass_t *pass) {
    if (!layer->trainable) {
        return NULL;
    }
    const mt_int8_sgd_t *sgd = pass->optim ? mt_optim_int8_sgd(pass->optim) : NULL;
    if (sgd == NULL) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%q: %q layers update in backward(dy, opt): need mt.SGD without momentum"), mt_layer_name(layer), mt_layer_dtype_qstr(layer));
    }
    return sgd;
}

void mt_s8_grad_input_tracked(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_s8_view_t *v, const int8_t *dy,
    float dy_scale, mt_tensor_obj_t *dx, int8_t *dx_data, void *scratch, const mt_s8_kernels_t *k) {
    float absmax;
    bool observed = false;
    if (s->dx_range.count == 0) {
        s->q.dx_scale = 1.0f;
        if (k->grad_input(layer, v, dy, dx_data, &absmax, scratch) != 0) {
            raise_kernel(layer, "input gradient");
        }
        mt_s8_error_observe(&s->dx_range, absmax, dy_scale);
        observed = true;
    }
    mt_qparams_t qp;
    set_qparams(layer, mt_qparams_symmetric(mt_s8_error_absmax(&s->dx_range, dy_scale), &qp), "input gradient");
    s->q.dx_scale = qp.scale;
    if (k->grad_input(layer, v, dy, dx_data, &absmax, scratch) != 0) {
        // The tracked range has fallen far below this step's errors (after many tiny
        // ones): measure this step's range as on the first step and start again from it.
        s->q.dx_scale = 1.0f;
        if (k->grad_input(layer, v, dy, dx_data, &absmax, scratch) != 0) {
            raise_kernel(layer, "input gradient");
        }
        s->dx_range.count = 0;
        mt_s8_error_observe(&s->dx_range, absmax, dy_scale);
        observed = true;
        set_qparams(layer, mt_qparams_symmetric(mt_s8_error_absmax(&s->dx_range, dy_scale), &qp), "input gradient");
        s->q.dx_scale = qp.scale;
        if (k->grad_input(layer, v, dy, dx_data, &absmax, scratch) != 0) {
            raise_kernel(layer, "input gradient");
        }
    }
    // An all-zero error (a sample already learnt, or every ReLU off) says nothing about
    // the range: leave the tracker as it is rather than let it decay towards zero.
    if (!observed && absmax > 0.0f) {
        mt_s8_error_observe(&s->dx_range, absmax, dy_scale);
    }
    dx->scale = s->q.dx_scale;
    dx->zero_point = 0;
}

void mt_s8_update_view(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_s8_view_t *v, const mt_int8_sgd_t *sgd,
    const int8_t *x, const int8_t *dy, void *scratch, size_t scratch_bytes, const mt_s8_kernels_t *k) {
    float unit_w = s->q.dy_scale * s->q.x.scale;
    mt_grad_stats_t w_stats = { 0 }, b_stats = { 0 };
    if (sgd->standardize && s->sigma_w.count == 0) {
        // Gradient standardization needs a divisor before the first update: this step's.
        if (k->update(layer, v, NULL, x, dy, &w_stats, &b_stats, scratch, scratch_bytes) != 0) {
            raise_kernel(layer, "update");
        }
        mt_ema_observe(&s->sigma_w, mt_grad_stats_rms(&w_stats, unit_w), MT_S8_RANGE_MOMENTUM);
        mt_ema_observe(&s->sigma_b, mt_grad_stats_rms(&b_stats, s->q.dy_scale), MT_S8_RANGE_MOMENTUM);
        w_stats = (mt_grad_stats_t) { 0 };
        b_stats = (mt_grad_stats_t) { 0 };
    }
    // Without standardization the step is plain SGD on the real-valued gradient (sigma 0).
    mt_s8_update_t u = {
        .lr = sgd->lr, .weight_decay = sgd->weight_decay,
        .sigma_w = sgd->standardize ? s->sigma_w.value : 0.0f, .sigma_b = sgd->standardize ? s->sigma_b.value : 0.0f,
        .eps = 1e-8f, .rescale_below = MT_S8_RESCALE_BELOW, .rng = sgd->stochastic_rounding ? &s->rng : NULL,
    };
    // Gradient statistics cost a few instructions per weight: only standardization wants them.
    mt_grad_stats_t *ws = sgd->standardize ? &w_stats : NULL, *bs = sgd->standardize ? &b_stats : NULL;
    if (k->update(layer, v, &u, x, dy, ws, bs, scratch, scratch_bytes) != 0) {
        raise_kernel(layer, "update");
    }
    if (sgd->standardize) {
        // The lagged divisor for the next step (conv2d_s8.h).
        mt_ema_observe(&s->sigma_w, mt_grad_stats_rms(&w_stats, unit_w), MT_S8_RANGE_MOMENTUM);
        mt_ema_observe(&s->sigma_b, mt_grad_stats_rms(&b_stats, s->q.dy_scale), MT_S8_RANGE_MOMENTUM);
    }
}

void mt_s8_backward(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass, const mt_s8_kernels_t *k) {
    if (layer->trainable && mt_update_is_partial(layer, pass)) {
        mt_s8_backward_partial(s, layer, x, dy, dx, pass, k);
        return;
    }
    const mt_int8_sgd_t *sgd = mt_s8_sgd(layer, pass);
    s->q.dy_scale = dy->scale;
    mt_s8_view_t v = mt_s8_view_of(s, layer);
    if (dx != NULL) {
        mt_s8_grad_input_tracked(s, layer, &v, dy->data, dy->scale, dx, dx->data, pass->scratch, k);
    }
    if (sgd == NULL) {
        return;
    }
    if (layer->update.kind == MT_UPDATE_BIAS_ONLY) {
        mt_s8_bias_only(s, layer, sgd, dy);
        return;
    }
    mt_s8_update_view(s, layer, &v, sgd, x->data, dy->data, pass->scratch, pass->scratch_floats * sizeof(float), k);
    if (s->bias_q) {
        mt_bias_s32_to_f32(s->bias_q, layer->bias->data, s->out_c, s->q.x.scale, layer->weight_scale->data);
    }
}

size_t mt_s8_scratch_floats(const mt_layer_obj_t *layer, const mt_s8_kernels_t *k) {
    size_t bytes = k->scratch_bytes(layer, mt_update_structures(layer));
    return mt_size_bytes_to_floats(mt_max_size(bytes, mt_s8_partial_scratch_bytes(layer, k)));
}
