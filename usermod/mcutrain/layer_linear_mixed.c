// The mixed kernel table of Linear (layer_linear.h, layer_mixed.h): the int8 kernels
// forward; backward, the float32 pass on the int8 weights a row at a time
// (kernels/linear_mixed.h), which is the same step without a float weight matrix.
#include "py/runtime.h"
#include "layer_linear.h"
#include "layer_mixed.h"
#include "grad_sink.h"
#include "partial_update.h"
#include "kernels/select_f32.h"
#include "kernels/select_s8.h"
#include "kernels/linear_s8.h"
#include "kernels/linear_mixed.h"
#include "kernels/checked_size.h"

// The int8 kernels' scratch; the float32 row-at-a-time pass needs none of its own.
static size_t kernel_floats(const mt_linear_obj_t *self) {
    return mt_size_bytes_to_floats(mt_linear_s8_scratch_bytes(&self->p));
}

// A partial update's compact buffers for up to kmax of n rows (after the mixed layer's own
// scratch): magnitudes and a mask over n rows, then dy, int8 weights, scales and bias of
// the selected rows.
typedef struct {
    size_t mag, taken, dy, w, scale, bias, end;
} partial_layout_t;

static partial_layout_t partial_layout(const mt_linear_params_t *p, int kmax) {
    bool of = false;
    size_t n = (size_t)p->out_features, k = (size_t)kmax;
    partial_layout_t l;
    l.mag = 0;
    l.taken = n;
    l.dy = mt_add_size(l.taken, (n + 3) / 4, &of);
    l.w = mt_add_size(l.dy, mt_mul_size((size_t)p->batch, k, &of), &of);
    l.scale = mt_add_size(l.w, (mt_mul_size(k, (size_t)p->in_features, &of) + 3) / 4, &of);
    l.bias = mt_add_size(l.scale, k, &of);
    l.end = mt_add_size(l.bias, k, &of);
    return l;
}

static size_t own_floats(const mt_linear_obj_t *self) {
    return mt_mixed_scratch_floats(&self->base, kernel_floats(self), (size_t)self->p.in_features);
}

static size_t mixed_scratch_floats(const mt_layer_obj_t *self_in) {
    const mt_linear_obj_t *self = (const mt_linear_obj_t *)self_in;
    size_t floats = own_floats(self);
    if (self_in->update.kind == MT_UPDATE_CHANNELS || self_in->update.kind == MT_UPDATE_TOPK) {
        bool of = false;
        floats = mt_add_size(floats, partial_layout(&self->p, mt_update_max_selected(self_in)).end, &of);
    }
    return floats;
}

static void mixed_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_linear_obj_t *self = (mt_linear_obj_t *)self_in;
    mt_mixed_forward(self->s8, self_in, x, pass, &mt_linear_s8_core, kernel_floats(self));
}

// A partial update: the same row-at-a-time pass on compact copies of the selected rows
// (their error, int8 weights, scales and bias), which then go back in place; the other
// rows' error is dropped and their weights stay bit-identical.
static void backward_partial(mt_linear_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass, const mt_int8_sgd_t *sgd) {
    mt_layer_obj_t *layer = &self->base;
    float *base = pass->scratch + own_floats(self);
    partial_layout_t l = partial_layout(&self->p, mt_update_max_selected(layer));
    int n = self->p.out_features, in = self->p.in_features, k;
    const int32_t *sel = mt_update_select(layer, dy->data, self->p.batch, pass, base + l.mag,
        (uint8_t *)(base + l.taken), &k);
    float *dy_sel = base + l.dy, *scale = base + l.scale, *bias = layer->bias ? base + l.bias : NULL;
    int8_t *w = (int8_t *)(base + l.w);
    mt_gather_columns_f32(dy->data, self->p.batch, n, sel, k, dy_sel);
    mt_gather_rows(layer->weight->data, (size_t)in, sel, k, w);
    mt_gather_rows(layer->weight_scale->data, sizeof(float), sel, k, scale);
    mt_linear_params_t q = self->p;
    q.out_features = k;
    if (dx != NULL) {
        mt_linear_mixed_grad_input(&q, dy_sel, w, scale, dx->data);
    }
    if (bias) {
        mt_gather_rows(layer->bias->data, sizeof(float), sel, k, bias);
    }
    mt_linear_mixed_update(&q, x->data, dy_sel, w, scale, bias, sgd->lr, sgd->weight_decay, MT_S8_RESCALE_BELOW,
        sgd->stochastic_rounding ? &self->s8->rng : NULL, pass->scratch + kernel_floats(self));
    mt_scatter_rows(w, (size_t)in, sel, k, layer->weight->data);
    mt_scatter_rows(scale, sizeof(float), sel, k, layer->weight_scale->data);
    if (bias) {
        mt_scatter_rows(bias, sizeof(float), sel, k, layer->bias->data);
    }
}

static void mixed_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_linear_obj_t *self = (mt_linear_obj_t *)self_in;
    const mt_int8_sgd_t *sgd = mt_s8_sgd(self_in, pass);
    if (sgd != NULL && mt_update_is_partial(self_in, pass)) {
        backward_partial(self, x, dy, dx, pass, sgd);
        return;
    }
    if (dx != NULL) {
        mt_linear_mixed_grad_input(&self->p, dy->data, self_in->weight->data, self_in->weight_scale->data, dx->data);
    }
    if (sgd == NULL || mt_update_bias_only(pass, self_in, dy->data, self->p.batch)) {
        return;
    }
    mt_linear_mixed_update(&self->p, x->data, dy->data, self_in->weight->data, self_in->weight_scale->data,
        self_in->bias ? self_in->bias->data : NULL, sgd->lr, sgd->weight_decay, MT_S8_RESCALE_BELOW,
        sgd->stochastic_rounding ? &self->s8->rng : NULL, pass->scratch + kernel_floats(self));
}

const mt_linear_kernels_t mt_linear_mixed_kernels = {
    .init = mt_linear_s8_init,
    .state_bytes = mt_linear_s8_state_bytes,
    .scratch_floats = mixed_scratch_floats,
    .forward = mixed_forward,
    .backward = mixed_backward,
};
