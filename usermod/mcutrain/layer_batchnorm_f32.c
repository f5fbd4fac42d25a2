// The float32 kernel table of BatchNorm2d (layer_batchnorm.h), and what float16 shares.
#include <math.h>

#include "py/runtime.h"
#include "layer_batchnorm.h"

void mt_batchnorm_save_running(mt_batchnorm_obj_t *self) {
    const float *running_mean = self->base.extra_params[0]->data, *running_var = self->base.extra_params[1]->data;
    for (int c = 0; c < self->p.channels; c++) {
        self->saved[c] = running_mean[c];
        self->saved[self->p.channels + c] = 1.0f / sqrtf(running_var[c] + self->p.eps);
    }
}

void mt_batchnorm_float_backward(mt_batchnorm_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass, mt_batchnorm_float_pass_t kernel) {
    mt_layer_obj_t *base = &self->base;
    if (dx != NULL) {
        // dx needs gamma as it was in the forward pass, and a fused update may change
        // gamma as soon as its gradient pass begins (weight decay): dx goes first.
        kernel(self, x->data, dy->data, dx->data, 1.0f, NULL, NULL);
    }
    if (!base->trainable) {
        return;
    }
    // gamma and beta are fp32 in every dtype, so their destinations are fp32 too.
    mt_grad_dest_t dgamma, dbeta;
    mt_grad_begin_params(pass, base, &dgamma, &dbeta);
    kernel(self, x->data, dy->data, NULL, dgamma.alpha, dgamma.data, dbeta.data);
    mt_grad_end_params(pass, base);
}

static void f32_forward(mt_batchnorm_obj_t *self, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_layer_obj_t *base = &self->base;
    float *gamma = base->weight->data, *beta = base->bias->data;
    float *running_mean = base->extra_params[0]->data, *running_var = base->extra_params[1]->data;
    if (pass->training) {
        mt_batchnorm_f32_forward_train(&self->p, x->data, gamma, beta, base->output->data, self->saved,
            self->saved + self->p.channels, running_mean, running_var);
    } else {
        mt_batchnorm_save_running(self);
        mt_batchnorm_f32_forward_eval(&self->p, x->data, gamma, beta, running_mean, running_var, base->output->data);
    }
}

static void f32_pass(mt_batchnorm_obj_t *self, const void *x, const void *dy, void *dx, float alpha, float *dgamma,
    float *dbeta) {
    const float *gamma = self->base.weight->data, *mean = self->saved, *inv_std = self->saved + self->p.channels;
    if (self->batch_stats) {
        mt_batchnorm_f32_backward(&self->p, x, dy, gamma, mean, inv_std, dx, alpha, dgamma, dbeta);
    } else {
        mt_batchnorm_f32_backward_eval(&self->p, x, dy, gamma, mean, inv_std, dx, alpha, dgamma, dbeta);
    }
}

static void f32_backward(mt_batchnorm_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_batchnorm_float_backward(self, x, dy, dx, pass, f32_pass);
}

static void f32_fold(const mt_batchnorm_params_t *p, const float *gamma, const float *beta, const float *mean,
    const float *var, void *weight, int row_len, void *bias) {
    mt_batchnorm_f32_fold(p, gamma, beta, mean, var, weight, row_len, bias);
}

const mt_batchnorm_kernels_t mt_batchnorm_f32_kernels = {
    .forward = f32_forward,
    .backward = f32_backward,
    .fold = f32_fold,
};
