// dtype="mixed" Linear and Conv layers: int8 forward, fp32 backward with QAS (layer_mixed.h).
#include "py/runtime.h"
#include "layer_mixed.h"
#include "grad_sink.h"
#include "partial_update.h"
#include "kernels/vector_f32.h"
#include "kernels/checked_size.h"

// Byte offsets in the scratch after the kernels' part: the int8 output goes after the int8
// input, 4-byte aligned for the kernels' word loads.
static size_t align4(size_t n) {
    return (n + 3) & ~(size_t)3;
}

size_t mt_mixed_scratch_floats(const mt_layer_obj_t *layer, size_t kernel_floats, size_t w_floats) {
    size_t io_bytes = align4(mt_shape_size(&layer->in_shape)) + align4(mt_shape_size(&layer->out_shape));
    size_t io_floats = io_bytes / sizeof(float);
    bool overflow = false;  // kernel_floats may have saturated (kernels/checked_size.h)
    return mt_add_size(kernel_floats, mt_max_size(io_floats, w_floats), &overflow);
}

void mt_mixed_forward(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_tensor_obj_t *x, const mt_pass_t *pass,
    const mt_s8_kernels_t *k, size_t kernel_floats) {
    size_t n_in = mt_shape_size(&layer->in_shape), n_out = mt_shape_size(&layer->out_shape);
    int8_t *xq = (int8_t *)(pass->scratch + kernel_floats);
    int8_t *yq = xq + align4(n_in);
    // The input's own range: a float input needs no tracker to be quantized.
    float lo, hi, probe = 0.0f;
    mt_minmax_f32(x->data, n_in, &lo, &hi);
    const float *xf = x->data;
    for (size_t i = 0; i < n_in; i++) {
        probe += xf[i] * 0.0f;  // NaN if any input is NaN or infinite (min/max skip NaNs)
    }
    mt_qparams_t qp;
    if (probe != 0.0f || mt_qparams_asymmetric(lo, hi, &qp) != 0) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%q: mixed input range is not finite"),
            mt_layer_name(layer));
    }
    if (layer->bias) {
        // This layer picks its own input scale: one at which its bias fits in int32.
        mt_qparams_raise_scale(&qp, lo,
            mt_bias_min_x_scale(layer->bias->data, s->out_c, layer->weight_scale->data));
    }
    mt_quantize_s8(x->data, xq, n_in, qp, MT_S8_ACT_MIN, MT_S8_ACT_MAX, NULL);
    mt_s8_forward_into(s, layer, xq, qp, yq, pass, k);
    mt_dequantize_s8(yq, layer->output->data, n_out, s->q.y);
}

void mt_mixed_backward(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass, mt_f32_backward_t f32_backward, size_t kernel_floats) {
    const mt_int8_sgd_t *sgd = mt_s8_sgd(layer, pass);
    mt_tensor_obj_t *w = layer->weight;
    int rows = s->out_c, row_len = (int)(w->size / (size_t)rows);
    float *w_real = pass->scratch + kernel_floats;
    const float *scale = layer->weight_scale->data;
    const int8_t *q = w->data;
    for (int o = 0; o < rows; o++) {
        for (int i = 0; i < row_len; i++) {
            w_real[o * row_len + i] = scale[o] * (float)q[o * row_len + i];
        }
    }
    // The float32 pass sees float weights: its fused SGD step (the QAS step, layer_mixed.h)
    // lands in w_real and in the fp32 bias.
    void *q_data = w->data;
    w->data = w_real;
    w->dtype = MT_FLOAT32;
    nlr_buf_t nlr;
    if (nlr_push(&nlr) == 0) {
        f32_backward(layer, x, dy, dx, pass);
        nlr_pop();
    } else {
        w->data = q_data;  // the layer keeps its int8 weights whatever happened
        w->dtype = MT_INT8;
        nlr_jump(nlr.ret_val);
    }
    w->data = q_data;
    w->dtype = MT_INT8;
    if (sgd == NULL || layer->update.kind == MT_UPDATE_BIAS_ONLY) {
        return;  // the weights did not move
    }
    mt_rng_t *rng = sgd->stochastic_rounding ? &s->rng : NULL;
    if (!mt_update_is_partial(layer, pass)) {
        mt_s8_requantize_rows(w_real, w->data, layer->weight_scale->data, rows, row_len, MT_S8_RESCALE_BELOW, rng);
        return;
    }
    // Only the rows the partial update changed: requantizing another row could rescale it.
    const mt_update_t *u = &layer->update;
    for (int j = 0; j < u->selected; j++) {
        size_t o = (size_t)u->selection[j];
        mt_s8_requantize_rows(w_real + o * row_len, (int8_t *)w->data + o * row_len,
            (float *)layer->weight_scale->data + o, 1, row_len, MT_S8_RESCALE_BELOW, rng);
    }
}
