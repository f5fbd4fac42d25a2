// The float16 kernel table of Conv2d and Conv1d (layer_conv.h): fp16 activations and
// errors, gradients summed in fp32 and added either into the fp16 weights or velocity
// (fused SGD) or into an fp32 buffer (.grad, Adam).
#include "py/runtime.h"
#include "layer_conv.h"
#include "kernels/conv2d_f16.h"
#include "kernels/checked_size.h"
#include "layer_f16_partial.h"
#include "partial_update.h"

// The layer restricted to its first k output channels (a partial update's compact layer).
static mt_conv2d_params_t compact_params(const mt_layer_obj_t *layer, int k) {
    return mt_conv_compact_params(&((const mt_conv_obj_t *)layer)->p, k);
}

static void partial_grad_input(const mt_layer_obj_t *layer, int k, const uint16_t *dy, const uint16_t *w,
    uint16_t *dx, float *scratch) {
    mt_conv2d_params_t q = compact_params(layer, k);
    mt_conv2d_f16_grad_input(&q, dy, w, dx, scratch);
}

static void partial_grad_weight(const mt_layer_obj_t *layer, int k, const uint16_t *x, const uint16_t *dy, float *dw,
    float *db, float *scratch) {
    mt_conv2d_params_t q = compact_params(layer, k);
    mt_conv2d_f16_grad_weight_f32(&q, x, dy, 1.0f, dw, db, scratch);
}

static size_t partial_kernel_floats(const mt_layer_obj_t *layer, int k) {
    mt_conv2d_params_t q = compact_params(layer, k);
    return mt_conv2d_f16_scratch_floats(&q);
}

static const mt_f16_partial_ops_t partial_ops = {
    partial_grad_input, partial_grad_weight, partial_kernel_floats, mt_conv_layer_is_depthwise,
};

static size_t f16_scratch_floats(const mt_layer_obj_t *self_in) {
    const mt_conv_obj_t *self = (const mt_conv_obj_t *)self_in;
    size_t full = mt_conv2d_f16_scratch_floats(&self->p);
    if (self_in->update.kind == MT_UPDATE_BIAS_ONLY) {
        full = mt_max_size(full, (size_t)self->p.out_c);
    }
    return mt_max_size(full, mt_f16_partial_scratch_floats(self_in, &partial_ops));
}

static void f16_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)self_in;
    void *bias = self_in->bias ? self_in->bias->data : NULL;
    mt_conv2d_f16_forward(&self->p, x->data, self_in->weight->data, bias, self_in->output->data, pass->scratch);
}

static void f16_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)self_in;
    if (self_in->trainable && mt_update_is_partial(self_in, pass)) {
        mt_f16_backward_partial(self_in, x, dy, dx, pass, &partial_ops);
        return;
    }
    if (dx != NULL) {
        mt_conv2d_f16_grad_input(&self->p, dy->data, self_in->weight->data, dx->data, pass->scratch);
    }
    if (!self_in->trainable
        || mt_update_bias_only_f16(pass, self_in, dy->data, self->p.batch * self->p.out_h * self->p.out_w,
            pass->scratch)) {
        return;
    }
    mt_grad_dest_t dw, db;
    mt_grad_begin_params(pass, self_in, &dw, &db);
    if (dw.dtype == MT_FLOAT16) {
        mt_conv2d_f16_grad_weight(&self->p, x->data, dy->data, dw.alpha, dw.data, db.data, pass->scratch, dw.rng);
    } else {
        mt_conv2d_f16_grad_weight_f32(&self->p, x->data, dy->data, dw.alpha, dw.data, db.data, pass->scratch);
    }
    mt_grad_end_params(pass, self_in);
}

const mt_conv_kernels_t mt_conv_f16_kernels = {
    .init = mt_conv_float_init,
    .scratch_floats = f16_scratch_floats,
    .forward = f16_forward,
    .backward = f16_backward,
};
