// The float32 kernel table of Linear (layer_linear.h), with partial updates.
#include "py/runtime.h"
#include "layer_linear.h"
#include "partial_update.h"
#include "kernels/select_f32.h"
#include "kernels/checked_size.h"

void mt_linear_float_init(mt_layer_obj_t *self, const mt_shape_t *wshape, int fan_in, bool bias) {
    self->weight = mt_layer_new_param(wshape, fan_in, self->dtype, "Linear.weight");
    if (bias) {
        mt_shape_t bshape = { .ndim = 1, .dim = { wshape->dim[0] } };
        self->bias = mt_layer_new_param(&bshape, fan_in, self->dtype, "Linear.bias");
    }
}

// Only a partial update needs scratch: magnitudes and a mask over the rows, then one
// selected row's gradient and its bias's (the rows are done one at a time, with no copy of
// the weights or of dy).
static size_t f32_scratch_floats(const mt_layer_obj_t *self_in) {
    const mt_linear_obj_t *self = (const mt_linear_obj_t *)self_in;
    if (self_in->update.kind != MT_UPDATE_CHANNELS && self_in->update.kind != MT_UPDATE_TOPK) {
        return 0;
    }
    bool of = false;
    size_t n = (size_t)self->p.out_features;
    return mt_add_size(n + (n + 3) / 4, (size_t)self->p.in_features + 1, &of);
}

static void f32_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    (void)pass;
    mt_linear_obj_t *self = (mt_linear_obj_t *)self_in;
    void *bias = self_in->bias ? self_in->bias->data : NULL;
    mt_linear_f32_forward(&self->p, x->data, self_in->weight->data, bias, self_in->output->data);
}

// A partial update: only the selected rows' error flows back (see layer_conv_f32.c), read
// straight from dy and the weights; each selected row's gradient is built and applied in
// turn.
static void backward_partial(mt_linear_obj_t *self, const float *x, const float *dy, float *dx,
    const mt_pass_t *pass) {
    mt_layer_obj_t *layer = &self->base;
    int n = self->p.out_features, in = self->p.in_features, batch = self->p.batch;
    float *mag = pass->scratch;
    uint8_t *taken = (uint8_t *)(mag + n);
    float *row = mag + n + (n + 3) / 4;
    int k;
    const int32_t *sel = mt_update_select(layer, dy, batch, pass, mag, taken, &k);
    if (dx != NULL) {
        mt_rows_grad_input_f32(dy, batch, n, layer->weight->data, in, sel, k, dx);
    }
    for (int j = 0; j < k; j++) {
        mt_row_grad_weight_f32(x, batch, in, dy, n, sel[j], row);
        mt_update_selected_rows(pass, layer, &sel[j], 1, in, row, row + in);
    }
}

static void f32_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x_t, const mt_tensor_obj_t *dy_t,
    mt_tensor_obj_t *dx_t, const mt_pass_t *pass) {
    mt_linear_obj_t *self = (mt_linear_obj_t *)self_in;
    const float *x = x_t->data, *dy = dy_t->data;
    float *dx = dx_t ? dx_t->data : NULL;
    if (self_in->trainable && mt_update_is_partial(self_in, pass)) {
        backward_partial(self, x, dy, dx, pass);
        return;
    }
    if (dx != NULL) {
        mt_linear_f32_grad_input(&self->p, dy, self_in->weight->data, dx);
    }
    if (!self_in->trainable) {
        return;
    }
    if (mt_update_bias_only(pass, self_in, dy, self->p.batch)) {
        return;
    }
    mt_grad_dest_t dw, db;
    mt_grad_begin_params(pass, self_in, &dw, &db);
    mt_linear_f32_grad_weight(&self->p, x, dy, dw.alpha, dw.data, db.data);
    mt_grad_end_params(pass, self_in);
}

const mt_linear_kernels_t mt_linear_f32_kernels = {
    .init = mt_linear_float_init,
    .scratch_floats = f32_scratch_floats,
    .forward = f32_forward,
    .backward = f32_backward,
};
