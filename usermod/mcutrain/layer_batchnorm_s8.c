// The int8 kernel table of BatchNorm2d (layer_batchnorm.h, kernels/batchnorm_s8.h): int8
// activations and errors, float parameters and statistics. Its output is quantized to a
// tracked range (layer.quant_range) and its input error to a tracked symmetric scale
// (momentum MT_S8_RANGE_MOMENTUM, a first pass measuring, as layer_s8.c). Like the other
// int8 layers it updates during backward, with the optimizer's int8 settings (mt.SGD
// without momentum): plain SGD with decoupled weight decay on the float gamma and beta
// (standardize= and rounding= concern int8 weights only).
#include "py/runtime.h"
#include "layer_batchnorm.h"
#include "layer_s8.h"
#include "grad_sink.h"
#include "kernels/batchnorm_s8.h"

NORETURN static void raise_s8(const char *what) {
    mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("BatchNorm2d: int8 %s range is not finite or too small"),
        what);
}

static mt_qparams_t qparams_of(const mt_tensor_obj_t *t) {
    mt_qparams_t q = { t->scale, t->zero_point };
    return q;
}

static void s8_init(mt_batchnorm_obj_t *self) {
    self->base.quant_range = &self->y_range;
}

static void s8_forward(mt_batchnorm_obj_t *self, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_layer_obj_t *base = &self->base;
    mt_range_t range;
    mt_batchnorm_s8_prepare(&self->p, x->data, qparams_of(x), base->weight->data, base->bias->data,
        pass->training, base->extra_params[0]->data, base->extra_params[1]->data, self->saved,
        self->saved + self->p.channels, &range);
    // The range comes from the statistics, so measuring the first one costs nothing extra;
    // later ones quantize with the range tracked before them, as the other int8 layers.
    bool observed = false;
    if (self->y_range.count == 0) {
        mt_range_observe(&self->y_range, range.min, range.max, MT_S8_RANGE_MOMENTUM);
        observed = true;
    }
    mt_qparams_t yq;
    if (self->y_range.count == 0 || mt_qparams_asymmetric(self->y_range.min, self->y_range.max, &yq) != 0) {
        raise_s8("output");
    }
    mt_batchnorm_s8_forward(&self->p, x->data, qparams_of(x), base->weight->data, base->bias->data, self->saved,
        self->saved + self->p.channels, base->output->data, yq);
    if (pass->training && !observed) {
        mt_range_observe(&self->y_range, range.min, range.max, MT_S8_RANGE_MOMENTUM);
    }
    base->output->scale = yq.scale;
    base->output->zero_point = yq.zero_point;
}

// The int8 input gradient, to the tracked error scale.
static void grad_input(mt_batchnorm_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx) {
    const float *gamma = self->base.weight->data, *mean_q = self->saved, *inv_std = self->saved + self->p.channels;
    float absmax;
    bool observed = false;
    if (self->dx_range.count == 0) {
        mt_batchnorm_s8_backward(&self->p, x->data, qparams_of(x), dy->data, dy->scale, gamma, mean_q, inv_std,
            NULL, 1.0f, &absmax, 1.0f, 0.0f, NULL, NULL);
        mt_s8_error_observe(&self->dx_range, absmax, dy->scale);
        observed = true;
    }
    mt_qparams_t qp;
    if (mt_qparams_symmetric(mt_s8_error_absmax(&self->dx_range, dy->scale), &qp) != 0) {
        raise_s8("input gradient");
    }
    mt_batchnorm_s8_backward(&self->p, x->data, qparams_of(x), dy->data, dy->scale, gamma, mean_q, inv_std,
        dx->data, qp.scale, &absmax, 1.0f, 0.0f, NULL, NULL);
    // An all-zero error says nothing about the range (layer_s8.c).
    if (!observed && absmax > 0.0f) {
        mt_s8_error_observe(&self->dx_range, absmax, dy->scale);
    }
    dx->scale = qp.scale;
    dx->zero_point = 0;
}

static void s8_backward(mt_batchnorm_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_layer_obj_t *base = &self->base;
    if (!self->batch_stats) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%q: int8 backward after forward(training=False) is not supported"),
            mt_layer_name(base));
    }
    const mt_int8_sgd_t *sgd = NULL;
    if (base->trainable) {
        sgd = pass->optim ? mt_optim_int8_sgd(pass->optim) : NULL;
        if (sgd == NULL) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("%q: int8 layers update in backward(dy, opt): need SGD without momentum"), mt_layer_name(base));
        }
    }
    if (dx != NULL) {
        grad_input(self, x, dy, dx);  // with gamma as in forward: before the update
    }
    if (sgd != NULL) {
        float *gamma = base->weight->data;
        mt_batchnorm_s8_backward(&self->p, x->data, qparams_of(x), dy->data, dy->scale, gamma, self->saved,
            self->saved + self->p.channels, NULL, 1.0f, NULL, 1.0f - sgd->lr * sgd->weight_decay, -sgd->lr,
            gamma, base->bias->data);
    }
}

const mt_batchnorm_kernels_t mt_batchnorm_s8_kernels = {
    .init = s8_init,
    .forward = s8_forward,
    .backward = s8_backward,
};
