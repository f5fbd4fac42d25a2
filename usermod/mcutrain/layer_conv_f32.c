// The float32 kernel table of Conv2d and Conv1d (layer_conv.h), with partial updates.
#include "py/runtime.h"
#include "layer_conv.h"
#include "partial_update.h"
#include "kernels/select_f32.h"
#include "kernels/checked_size.h"

void mt_conv_float_init(mt_layer_obj_t *self, const mt_shape_t *wshape, int fan_in, bool bias) {
    self->weight = mt_layer_new_param(wshape, fan_in, self->dtype, "Conv.weight");
    if (bias) {
        mt_shape_t bshape = { .ndim = 1, .dim = { wshape->dim[0] } };
        self->bias = mt_layer_new_param(&bshape, fan_in, self->dtype, "Conv.bias");
    }
}

static int round_up4(int k) {
    return (k + 3) & ~3;
}

// Compact-path scratch: magnitudes and a mask over N channels, the selected channels of
// dy (and of x and dx when depthwise), their weight rows, gradients, then kernel scratch.
static size_t partial_scratch(const mt_conv_obj_t *self) {
    const mt_conv2d_params_t *p = &self->p;
    size_t n = (size_t)p->out_c, k = (size_t)mt_update_max_selected(&self->base);
    if (!mt_conv_is_depthwise(p)) {
        k = (size_t)round_up4((int)k);
    }
    bool of = false;
    size_t rows_out = mt_shape_size(&self->base.out_shape) / n, rows_in = mt_shape_size(&self->base.in_shape) / (size_t)p->in_c;
    size_t row_len = self->base.weight->size / n;
    size_t floats = n + (n + 3) / 4 + k;
    floats = mt_add_size(floats, mt_mul_size(rows_out, k, &of), &of);
    floats = mt_add_size(floats, mt_mul_size(2 * k, row_len, &of), &of);
    if (mt_conv_is_depthwise(p)) {
        floats = mt_add_size(floats, mt_mul_size(2 * rows_in, k, &of), &of);
    }
    mt_conv2d_params_t q = mt_conv_compact_params(p, (int)k);
    return mt_add_size(floats, mt_conv2d_f32_scratch_floats(&q), &of);
}

static size_t f32_scratch_floats(const mt_layer_obj_t *self_in) {
    const mt_conv_obj_t *self = (const mt_conv_obj_t *)self_in;
    size_t full = mt_conv2d_f32_scratch_floats(&self->p);
    if (self_in->update.kind != MT_UPDATE_CHANNELS && self_in->update.kind != MT_UPDATE_TOPK) {
        return full;
    }
    return mt_max_size(partial_scratch(self), full);
}

static void f32_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)self_in;
    void *bias = self_in->bias ? self_in->bias->data : NULL;
    mt_conv2d_f32_forward(&self->p, x->data, self_in->weight->data, bias, self_in->output->data, pass->scratch);
}

// A partial update: only the selected output channels' error flows back, into both
// gradients, computed by the usual kernels on compact copies of those channels.
static void backward_partial(mt_conv_obj_t *self, const float *x, const float *dy, float *dx,
    const mt_pass_t *pass) {
    mt_layer_obj_t *layer = &self->base;
    const mt_conv2d_params_t *p = &self->p;
    bool depthwise = mt_conv_is_depthwise(p);
    int n = p->out_c, rows_out = p->batch * p->out_h * p->out_w, rows_in = p->batch * p->in_h * p->in_w;
    int row_len = (int)(layer->weight->size / (size_t)n);
    float *mag = pass->scratch;
    uint8_t *taken = (uint8_t *)(mag + n);
    float *dy_sel = mag + n + (n + 3) / 4;
    int k;
    const int32_t *sel = mt_update_select(layer, dy, rows_out, pass, mag, taken, &k);
    // The GEMMs work in blocks of 4 channels: compute k rounded up, the extra channels
    // with zero error (depthwise channels are independent and need no padding).
    int kp = depthwise ? k : round_up4(k);
    float *w_sel = dy_sel + (size_t)rows_out * kp;
    float *dw_sel = w_sel + (size_t)kp * row_len;
    float *db_sel = dw_sel + (size_t)kp * row_len;
    float *x_sel = db_sel + kp;
    float *dx_sel = x_sel + (depthwise ? (size_t)rows_in * k : 0);
    float *kernel_scratch = dx_sel + (depthwise ? (size_t)rows_in * k : 0);
    mt_conv2d_params_t q = mt_conv_compact_params(p, kp);

    mt_gather_columns_padded_f32(dy, rows_out, n, sel, k, kp, dy_sel);
    mt_gather_rows_f32(layer->weight->data, row_len, sel, k, w_sel);
    for (size_t i = (size_t)k * row_len; i < (size_t)kp * row_len; i++) {
        w_sel[i] = 0.0f;
    }
    if (depthwise) {
        // Each channel sees only its own input channel: compact x and dx the same way.
        mt_gather_columns_f32(x, rows_in, n, sel, k, x_sel);
        x = x_sel;
    }
    if (dx != NULL) {
        mt_conv2d_f32_grad_input(&q, dy_sel, w_sel, depthwise ? dx_sel : dx, kernel_scratch);
        if (depthwise) {
            mt_scatter_columns_f32(dx_sel, rows_in, n, sel, k, dx);
        }
    }
    for (size_t i = 0; i < (size_t)kp * row_len + (size_t)kp; i++) {
        dw_sel[i] = 0.0f;
    }
    mt_conv2d_f32_grad_weight(&q, x, dy_sel, 1.0f, dw_sel, layer->bias ? db_sel : NULL, kernel_scratch);
    mt_update_selected_rows(pass, layer, sel, k, row_len, dw_sel, db_sel);
}

void mt_conv_f32_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x_t, const mt_tensor_obj_t *dy_t,
    mt_tensor_obj_t *dx_t, const mt_pass_t *pass) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)self_in;
    const float *x = x_t->data, *dy = dy_t->data;
    float *dx = dx_t ? dx_t->data : NULL;
    if (self_in->trainable && mt_update_is_partial(self_in, pass)) {
        backward_partial(self, x, dy, dx, pass);
        return;
    }
    if (dx != NULL) {
        mt_conv2d_f32_grad_input(&self->p, dy, self_in->weight->data, dx, pass->scratch);
    }
    if (!self_in->trainable) {
        return;
    }
    if (mt_update_bias_only(pass, self_in, dy, self->p.batch * self->p.out_h * self->p.out_w)) {
        return;
    }
    mt_grad_dest_t dw, db;
    mt_grad_begin_params(pass, self_in, &dw, &db);
    mt_conv2d_f32_grad_weight(&self->p, x, dy, dw.alpha, dw.data, db.data, pass->scratch);
    mt_grad_end_params(pass, self_in);
}

const mt_conv_kernels_t mt_conv_f32_kernels = {
    .init = mt_conv_float_init,
    .scratch_floats = f32_scratch_floats,
    .forward = f32_forward,
    .backward = mt_conv_f32_backward,
};
