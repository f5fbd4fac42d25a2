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

// Only the compact path of a partial update needs scratch (see layer_conv_f32.c):
// magnitudes, mask, selected dy columns, weight rows and their gradients.
static size_t f32_scratch_floats(const mt_layer_obj_t *self_in) {
    const mt_linear_obj_t *self = (const mt_linear_obj_t *)self_in;
    if (self_in->update.kind != MT_UPDATE_CHANNELS && self_in->update.kind != MT_UPDATE_TOPK) {
        return 0;
    }
    bool of = false;
    size_t n = (size_t)self->p.out_features, k = (size_t)mt_update_max_selected(self_in);
    size_t floats = mt_add_size(n + (n + 3) / 4 + k, mt_mul_size((size_t)self->p.batch, k, &of), &of);
    return mt_add_size(floats, mt_mul_size(2 * k, (size_t)self->p.in_features, &of), &of);
}

static void f32_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    (void)pass;
    mt_linear_obj_t *self = (mt_linear_obj_t *)self_in;
    void *bias = self_in->bias ? self_in->bias->data : NULL;
    mt_linear_f32_forward(&self->p, x->data, self_in->weight->data, bias, self_in->output->data);
}

// A partial update: only the selected rows' error flows back (see layer_conv_f32.c).
static void backward_partial(mt_linear_obj_t *self, const float *x, const float *dy, float *dx,
    const mt_pass_t *pass) {
    mt_layer_obj_t *layer = &self->base;
    int n = self->p.out_features, row_len = self->p.in_features;
    float *mag = pass->scratch;
    uint8_t *taken = (uint8_t *)(mag + n);
    float *dy_sel = mag + n + (n + 3) / 4;
    int k;
    const int32_t *sel = mt_update_select(layer, dy, self->p.batch, pass, mag, taken, &k);
    float *w_sel = dy_sel + (size_t)self->p.batch * k;
    float *dw_sel = w_sel + (size_t)k * row_len;
    float *db_sel = dw_sel + (size_t)k * row_len;
    mt_linear_params_t q = self->p;
    q.out_features = k;
    mt_gather_columns_f32(dy, self->p.batch, n, sel, k, dy_sel);
    mt_gather_rows_f32(layer->weight->data, row_len, sel, k, w_sel);
    if (dx != NULL) {
        mt_linear_f32_grad_input(&q, dy_sel, w_sel, dx);
    }
    for (size_t i = 0; i < (size_t)k * row_len + (size_t)k; i++) {
        dw_sel[i] = 0.0f;
    }
    mt_linear_f32_grad_weight(&q, x, dy_sel, 1.0f, dw_sel, layer->bias ? db_sel : NULL);
    mt_update_selected_rows(pass, layer, sel, k, row_len, dw_sel, db_sel);
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
