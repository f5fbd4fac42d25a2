// The float16 kernel table of BatchNorm2d (layer_batchnorm.h): float16 activations and
// errors; gamma, beta and the statistics stay float32 (kernels/batchnorm_f16.h).
#include "py/runtime.h"
#include "layer_batchnorm.h"
#include "kernels/batchnorm_f16.h"

static void f16_forward(mt_batchnorm_obj_t *self, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_layer_obj_t *base = &self->base;
    float *gamma = base->weight->data, *beta = base->bias->data;
    float *running_mean = base->extra_params[0]->data, *running_var = base->extra_params[1]->data;
    if (pass->training) {
        mt_batchnorm_f16_forward_train(&self->p, x->data, gamma, beta, base->output->data, self->saved,
            self->saved + self->p.channels, running_mean, running_var);
    } else {
        mt_batchnorm_save_running(self);
        mt_batchnorm_f16_forward_eval(&self->p, x->data, gamma, beta, running_mean, running_var, base->output->data);
    }
}

static void f16_pass(mt_batchnorm_obj_t *self, const void *x, const void *dy, void *dx, float alpha, float *dgamma,
    float *dbeta) {
    const float *gamma = self->base.weight->data, *mean = self->saved, *inv_std = self->saved + self->p.channels;
    if (self->batch_stats) {
        mt_batchnorm_f16_backward(&self->p, x, dy, gamma, mean, inv_std, dx, alpha, dgamma, dbeta);
    } else {
        mt_batchnorm_f16_backward_eval(&self->p, x, dy, gamma, mean, inv_std, dx, alpha, dgamma, dbeta);
    }
}

static void f16_backward(mt_batchnorm_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_batchnorm_float_backward(self, x, dy, dx, pass, f16_pass);
}

static void f16_fold(const mt_batchnorm_params_t *p, const float *gamma, const float *beta, const float *mean,
    const float *var, void *weight, int row_len, void *bias) {
    mt_batchnorm_f16_fold(p, gamma, beta, mean, var, weight, row_len, bias);
}

const mt_batchnorm_kernels_t mt_batchnorm_f16_kernels = {
    .forward = f16_forward,
    .backward = f16_backward,
    .fold = f16_fold,
};
