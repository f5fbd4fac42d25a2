// The int8 kernel table of Conv2d and Conv1d (layer_conv.h): kernels/conv2d_s8.h bound to
// the layer's parameters, run by the int8 protocol of layer_s8.c.
#include "py/runtime.h"
#include "layer_conv.h"
#include "kernels/conv2d_s8.h"
#include "kernels/checked_size.h"

static int core_forward(mt_layer_obj_t *layer, const int8_t *x, int8_t *y, mt_range_t *y_range, void *scratch) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)layer;
    return mt_conv2d_s8_forward(&self->p, &self->s8->q, x, layer->weight->data, layer->weight_scale->data,
        self->s8->bias_q, y, y_range, scratch);
}

// The layer's geometry for a view of out_c output channels (layer_s8.h).
static mt_conv2d_params_t view_params(const mt_layer_obj_t *layer, int out_c) {
    return mt_conv_compact_params(&((const mt_conv_obj_t *)layer)->p, out_c);
}

static int core_grad_input(mt_layer_obj_t *layer, const mt_s8_view_t *v, const int8_t *dy, int8_t *dx,
    float *dx_absmax, void *scratch) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)layer;
    mt_conv2d_params_t p = view_params(layer, v->out_c);
    return mt_conv2d_s8_grad_input(&p, &self->s8->q, dy, v->weight, v->weight_scale, dx, dx_absmax, scratch);
}

static int core_update(mt_layer_obj_t *layer, const mt_s8_view_t *v, const mt_s8_update_t *u, const int8_t *x,
    const int8_t *dy, mt_grad_stats_t *w_stats, mt_grad_stats_t *b_stats, void *scratch, size_t scratch_bytes) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)layer;
    mt_conv2d_params_t p = view_params(layer, v->out_c);
    return mt_conv2d_s8_update(&p, &self->s8->q, u, x, dy, v->weight, v->weight_scale, v->bias_q, NULL, w_stats,
        b_stats, scratch, scratch_bytes);
}

static size_t core_scratch_bytes(const mt_layer_obj_t *layer, int out_c) {
    mt_conv2d_params_t p = view_params(layer, out_c);
    return mt_conv2d_s8_scratch_bytes(&p);
}

const mt_s8_kernels_t mt_conv_s8_core = {
    core_forward, core_grad_input, core_update, core_scratch_bytes, mt_conv_layer_is_depthwise,
};

// int8 and mixed layers: int8 weights with per-channel scales, an fp32 bias (layer_s8.h).
void mt_conv_s8_init(mt_layer_obj_t *self_in, const mt_shape_t *wshape, int fan_in, bool bias) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)self_in;
    self->s8 = m_new0(mt_s8_layer_t, 1);
    mt_s8_layer_init(self->s8, self_in, wshape, fan_in, bias, "Conv.weight");
}

// The bias in kernel units.
size_t mt_conv_s8_state_bytes(const mt_layer_obj_t *self_in) {
    const mt_conv_obj_t *self = (const mt_conv_obj_t *)self_in;
    return self->s8->bias_q ? (size_t)self->p.out_c * sizeof(int32_t) : 0;
}

static size_t s8_scratch_floats(const mt_layer_obj_t *self_in) {
    return mt_s8_scratch_floats(self_in, &mt_conv_s8_core);
}

static void s8_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_s8_forward(((mt_conv_obj_t *)self_in)->s8, self_in, x, pass, &mt_conv_s8_core);
}

static void s8_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_s8_backward(((mt_conv_obj_t *)self_in)->s8, self_in, x, dy, dx, pass, &mt_conv_s8_core);
}

const mt_conv_kernels_t mt_conv_s8_kernels = {
    .init = mt_conv_s8_init,
    .state_bytes = mt_conv_s8_state_bytes,
    .scratch_floats = s8_scratch_floats,
    .forward = s8_forward,
    .backward = s8_backward,
};
