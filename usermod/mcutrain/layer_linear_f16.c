// The float16 kernel table of Linear (layer_linear.h): fp16 activations and errors,
// gradients summed in fp32 and added either into the fp16 weights or velocity (fused SGD)
// or into an fp32 buffer (.grad, Adam).
#include "py/runtime.h"
#include "layer_linear.h"
#include "kernels/linear_f16.h"

static size_t f16_scratch_floats(const mt_layer_obj_t *self_in) {
    return mt_linear_f16_scratch_floats(&((const mt_linear_obj_t *)self_in)->p);
}

static void f16_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_linear_obj_t *self = (mt_linear_obj_t *)self_in;
    void *bias = self_in->bias ? self_in->bias->data : NULL;
    mt_linear_f16_forward(&self->p, x->data, self_in->weight->data, bias, self_in->output->data, pass->scratch);
}

static void f16_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_linear_obj_t *self = (mt_linear_obj_t *)self_in;
    if (dx != NULL) {
        mt_linear_f16_grad_input(&self->p, dy->data, self_in->weight->data, dx->data, pass->scratch);
    }
    if (!self_in->trainable) {
        return;
    }
    mt_grad_dest_t dw, db;
    mt_grad_begin_params(pass, self_in, &dw, &db);
    if (dw.dtype == MT_FLOAT16) {
        mt_linear_f16_grad_weight(&self->p, x->data, dy->data, dw.alpha, dw.data, db.data, pass->scratch, dw.rng);
    } else {
        mt_linear_f16_grad_weight_f32(&self->p, x->data, dy->data, dw.alpha, dw.data, db.data, pass->scratch);
    }
    mt_grad_end_params(pass, self_in);
}

const mt_linear_kernels_t mt_linear_f16_kernels = {
    .init = mt_linear_float_init,
    .scratch_floats = f16_scratch_floats,
    .forward = f16_forward,
    .backward = f16_backward,
};
