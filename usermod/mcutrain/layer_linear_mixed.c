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

// A partial update's buffers for up to kmax of n rows (after the mixed layer's own
// scratch): magnitudes and a mask over n rows, then the selected rows' dy.
typedef struct {
    size_t mag, taken, dy, end;
} partial_layout_t;

static partial_layout_t partial_layout(const mt_linear_params_t *p, int kmax) {
    bool of = false;
    size_t n = (size_t)p->out_features;
    partial_layout_t l;
    l.mag = 0;
    l.taken = n;
    l.dy = mt_add_size(l.taken, (n + 3) / 4, &of);
    l.end = mt_add_size(l.dy, mt_mul_size((size_t)p->batch, (size_t)kmax, &of), &of);
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

// The selected rows' int8 weights, scales and bias to the front, in place, and back.
static void rows_to_front(mt_layer_obj_t *layer, const int32_t *sel, int k, int in) {
    mt_rows_to_front(layer->weight->data, (size_t)in, sel, k);
    mt_rows_to_front(layer->weight_scale->data, sizeof(float), sel, k);
    if (layer->bias) {
        mt_rows_to_front(layer->bias->data, sizeof(float), sel, k);
    }
}

static void rows_back(mt_layer_obj_t *layer, const int32_t *sel, int k, int in) {
    mt_rows_back(layer->weight->data, (size_t)in, sel, k);
    mt_rows_back(layer->weight_scale->data, sizeof(float), sel, k);
    if (layer->bias) {
        mt_rows_back(layer->bias->data, sizeof(float), sel, k);
    }
}

// A partial update: the same row-at-a-time pass on the selected rows (a copy of their
// error; their weights, scales and bias swapped to the front in place and back after), so
// the other rows' error is dropped and their weights stay bit-identical.
static void backward_partial(mt_linear_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass, const mt_int8_sgd_t *sgd) {
    mt_layer_obj_t *layer = &self->base;
    float *base = pass->scratch + own_floats(self);
    partial_layout_t l = partial_layout(&self->p, mt_update_max_selected(layer));
    int n = self->p.out_features, in = self->p.in_features, k;
    const int32_t *sel = mt_update_select(layer, dy->data, self->p.batch, pass, base + l.mag,
        (uint8_t *)(base + l.taken), &k);
    float *dy_sel = base + l.dy;
    mt_gather_columns_f32(dy->data, self->p.batch, n, sel, k, dy_sel);
    mt_linear_params_t q = self->p;
    q.out_features = k;
    // No Python error can happen between the swaps: the kernels return nothing.
    rows_to_front(layer, sel, k, in);
    if (dx != NULL) {
        mt_linear_mixed_grad_input(&q, dy_sel, layer->weight->data, layer->weight_scale->data, dx->data);
    }
    mt_linear_mixed_update(&q, x->data, dy_sel, layer->weight->data, layer->weight_scale->data,
        layer->bias ? layer->bias->data : NULL, sgd->lr, sgd->weight_decay, MT_S8_RESCALE_BELOW,
        sgd->stochastic_rounding ? &self->s8->rng : NULL, pass->scratch + kernel_floats(self));
    rows_back(layer, sel, k, in);
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
