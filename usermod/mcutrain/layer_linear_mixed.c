// The mixed kernel table of Linear (layer_linear.h, layer_mixed.h): the int8 kernels
// forward; backward, the float32 pass on the int8 weights a row at a time
// (kernels/linear_mixed.h), which is the same step without a float weight matrix.
#include "py/runtime.h"
#include "layer_linear.h"
#include "layer_mixed.h"
#include "grad_sink.h"
#include "kernels/linear_s8.h"
#include "kernels/linear_mixed.h"
#include "kernels/checked_size.h"

// The int8 kernels' scratch; the float32 row-at-a-time pass needs none of its own.
static size_t kernel_floats(const mt_linear_obj_t *self) {
    return mt_size_bytes_to_floats(mt_linear_s8_scratch_bytes(&self->p));
}

static size_t mixed_scratch_floats(const mt_layer_obj_t *self_in) {
    const mt_linear_obj_t *self = (const mt_linear_obj_t *)self_in;
    return mt_mixed_scratch_floats(self_in, kernel_floats(self), (size_t)self->p.in_features);
}

static void mixed_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_linear_obj_t *self = (mt_linear_obj_t *)self_in;
    mt_mixed_forward(self->s8, self_in, x, pass, &mt_linear_s8_core, kernel_floats(self));
}

static void mixed_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_linear_obj_t *self = (mt_linear_obj_t *)self_in;
    const mt_int8_sgd_t *sgd = mt_s8_sgd(self_in, pass);
    if (dx != NULL) {
        mt_linear_mixed_grad_input(&self->p, dy->data, self_in->weight->data, self_in->weight_scale->data, dx->data);
    }
    if (sgd != NULL) {
        mt_linear_mixed_update(&self->p, x->data, dy->data, self_in->weight->data, self_in->weight_scale->data,
            self_in->bias ? self_in->bias->data : NULL, sgd->lr, sgd->weight_decay, MT_S8_RESCALE_BELOW,
            sgd->stochastic_rounding ? &self->s8->rng : NULL, pass->scratch + kernel_floats(self));
    }
}

const mt_linear_kernels_t mt_linear_mixed_kernels = {
    .init = mt_linear_s8_init,
    .state_bytes = mt_linear_s8_state_bytes,
    .scratch_floats = mixed_scratch_floats,
    .forward = mixed_forward,
    .backward = mixed_backward,
};
