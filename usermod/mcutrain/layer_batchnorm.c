// mt.BatchNorm2d(num_features, eps=1e-5, momentum=0.1, dtype=mt.float32) over the last
// (channel) dim: batch statistics when training, running ones in predict(); fold_into(conv)
// folds it into the preceding layer for inference. A float16 layer has float16 activations
// and errors but keeps gamma, beta and the statistics in float32 (kernels/batchnorm_f16.h).
// An int8 layer (kernels/batchnorm_s8.h) has int8 activations and errors, float parameters
// and statistics; its output is quantized to a tracked range (layer.quant_range) and its
// input error to a tracked symmetric scale (momentum MT_S8_RANGE_MOMENTUM, a first pass
// measuring, as layer_s8.c). Like the other int8 layers it updates during backward, with the
// optimizer's int8 settings (mt.SGD without momentum): plain SGD with decoupled weight decay
// on the float gamma and beta (standardize= and rounding= concern int8 weights only).
#include <math.h>

#include "py/runtime.h"
#include "layer.h"
#include "layer_s8.h"
#include "grad_sink.h"
#include "kernels/batchnorm_f32.h"
#include "kernels/batchnorm_f16.h"
#include "kernels/batchnorm_s8.h"

typedef struct {
    mt_layer_obj_t base;
    mt_batchnorm_params_t p;
    float *saved;              // batch mean[C] and 1/sqrt(var + eps)[C] for backward (int8:
                               // the mean in units of the input's scale); running ones after
                               // an inference forward
    bool batch_stats;          // the last forward normalized with batch statistics
    mt_range_tracker_t y_range;    // int8: output range
    mt_range_tracker_t dx_range;   // int8: input error magnitude, relative (layer_s8.h)
} mt_batchnorm_obj_t;

static void bn_plan(mt_layer_obj_t *self_in, const mt_shape_t *in) {
    mt_batchnorm_obj_t *self = (mt_batchnorm_obj_t *)self_in;
    if (in->ndim < 2 || in->dim[in->ndim - 1] != self->p.channels) {
        mt_layer_raise_expects(self_in, "expects %d channels (last dim)", self->p.channels, in);
    }
    self->p.rows = (int)(mt_shape_size(in) / (size_t)self->p.channels);
    self_in->out_shape = *in;
    self_in->state_bytes = 2 * self->p.channels * sizeof(float);
}

NORETURN static void raise_s8(const char *what) {
    mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("BatchNorm2d: int8 %s range is not finite or too small"),
        what);
}

static mt_qparams_t qparams_of(const mt_tensor_obj_t *t) {
    mt_qparams_t q = { t->scale, t->zero_point };
    return q;
}

static void bn_forward_s8(mt_batchnorm_obj_t *self, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
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

// For backward after an inference forward: the running statistics it normalized with.
static void save_running(mt_batchnorm_obj_t *self) {
    const float *running_mean = self->base.extra_params[0]->data, *running_var = self->base.extra_params[1]->data;
    for (int c = 0; c < self->p.channels; c++) {
        self->saved[c] = running_mean[c];
        self->saved[self->p.channels + c] = 1.0f / sqrtf(running_var[c] + self->p.eps);
    }
}

static void bn_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x_t, const mt_pass_t *pass) {
    mt_batchnorm_obj_t *self = (mt_batchnorm_obj_t *)self_in;
    if (pass->training && self->p.rows < 2) {
        // The batch variance of one value is 0: the output would be beta whatever x is.
        mt_layer_raise_shape(self_in, "training needs more than 1 value per channel", &self_in->in_shape);
    }
    self->batch_stats = pass->training;
    if (!pass->training && self_in->dtype != MT_INT8) {
        save_running(self);
    }
    if (self_in->dtype == MT_INT8) {
        bn_forward_s8(self, x_t, pass);
        return;
    }
    float *gamma = self_in->weight->data, *beta = self_in->bias->data;
    float *running_mean = self_in->extra_params[0]->data, *running_var = self_in->extra_params[1]->data;
    float *mean = self->saved, *inv_std = self->saved + self->p.channels;
    const void *x = x_t->data;
    void *y = self_in->output->data;
    if (self_in->dtype == MT_FLOAT16) {
        if (pass->training) {
            mt_batchnorm_f16_forward_train(&self->p, x, gamma, beta, y, mean, inv_std, running_mean, running_var);
        } else {
            mt_batchnorm_f16_forward_eval(&self->p, x, gamma, beta, running_mean, running_var, y);
        }
    } else if (pass->training) {
        mt_batchnorm_f32_forward_train(&self->p, x, gamma, beta, y, mean, inv_std, running_mean, running_var);
    } else {
        mt_batchnorm_f32_forward_eval(&self->p, x, gamma, beta, running_mean, running_var, y);
    }
}

// The backward in the layer's dtype; the parameter gradients are fp32 either way.
static void bn_backward_kernel(mt_batchnorm_obj_t *self, const void *x, const void *dy, void *dx, float alpha,
    float *dgamma, float *dbeta) {
    const float *gamma = self->base.weight->data, *mean = self->saved, *inv_std = self->saved + self->p.channels;
    if (!self->batch_stats) {
        if (self->base.dtype == MT_FLOAT16) {
            mt_batchnorm_f16_backward_eval(&self->p, x, dy, gamma, mean, inv_std, dx, alpha, dgamma, dbeta);
        } else {
            mt_batchnorm_f32_backward_eval(&self->p, x, dy, gamma, mean, inv_std, dx, alpha, dgamma, dbeta);
        }
        return;
    }
    if (self->base.dtype == MT_FLOAT16) {
        mt_batchnorm_f16_backward(&self->p, x, dy, gamma, mean, inv_std, dx, alpha, dgamma, dbeta);
    } else {
        mt_batchnorm_f32_backward(&self->p, x, dy, gamma, mean, inv_std, dx, alpha, dgamma, dbeta);
    }
}

// The int8 input gradient, to the tracked error scale.
static void bn_backward_s8(mt_batchnorm_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
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

static void bn_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_batchnorm_obj_t *self = (mt_batchnorm_obj_t *)self_in;
    if (self_in->dtype == MT_INT8) {
        if (!self->batch_stats) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("%q: int8 backward after forward(training=False) is not supported"),
                mt_layer_name(self_in));
        }
        const mt_int8_sgd_t *sgd = NULL;
        if (self_in->trainable) {
            sgd = pass->optim ? mt_optim_int8_sgd(pass->optim) : NULL;
            if (sgd == NULL) {
                mp_raise_msg_varg(&mp_type_ValueError,
                    MP_ERROR_TEXT("%q: int8 layers update in backward(dy, opt): need SGD without momentum"), mt_layer_name(self_in));
            }
        }
        if (dx != NULL) {
            bn_backward_s8(self, x, dy, dx);  // with gamma as in forward: before the update
        }
        if (sgd != NULL) {
            float *gamma = self_in->weight->data;
            mt_batchnorm_s8_backward(&self->p, x->data, qparams_of(x), dy->data, dy->scale, gamma, self->saved,
                self->saved + self->p.channels, NULL, 1.0f, NULL, 1.0f - sgd->lr * sgd->weight_decay, -sgd->lr,
                gamma, self_in->bias->data);
        }
        return;
    }
    if (dx != NULL) {
        // dx needs gamma as it was in the forward pass, and a fused update may change
        // gamma as soon as its gradient pass begins (weight decay): dx goes first.
        bn_backward_kernel(self, x->data, dy->data, dx->data, 1.0f, NULL, NULL);
    }
    if (!self_in->trainable) {
        return;
    }
    // gamma and beta are fp32 in every dtype, so their destinations are fp32 too.
    mt_grad_dest_t dgamma, dbeta;
    mt_grad_begin_params(pass, self_in, &dgamma, &dbeta);
    bn_backward_kernel(self, x->data, dy->data, NULL, dgamma.alpha, dgamma.data, dbeta.data);
    mt_grad_end_params(pass, self_in);
}

static uint64_t bn_macs(const mt_layer_obj_t *self_in, mt_macs_kind_t kind, bool need_dx) {
    (void)kind;
    (void)need_dx;
    return mt_shape_size(&self_in->in_shape);
}

static mp_obj_t bn_config(const mt_layer_obj_t *self_in) {
    const mt_batchnorm_obj_t *self = (const mt_batchnorm_obj_t *)self_in;
    mp_obj_t dict = mt_new_ordered_dict(4);
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_num_features), MP_OBJ_NEW_SMALL_INT(self->p.channels));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_eps), mp_obj_new_float_from_f(self->p.eps));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_momentum), mp_obj_new_float_from_f(self->p.momentum));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_dtype), MP_OBJ_NEW_QSTR(mt_dtype_qstr(self_in->dtype)));
    return dict;
}

static const mt_layer_ops_t bn_ops = {
    .magic = MT_LAYER_MAGIC,
    .dtypes = MT_DTYPES_FLOAT | MT_DTYPE_BIT(MT_INT8),
    .plan = bn_plan,
    .forward = bn_forward,
    .backward = bn_backward,
    .macs = bn_macs,
    .config = bn_config,
};

static mt_tensor_obj_t *filled(int n, float value, const char *what) {
    mt_shape_t shape = { .ndim = 1, .dim = { n } };
    mt_tensor_obj_t *t = mt_tensor_new(&shape, MT_FLOAT32, what);
    for (int i = 0; i < n; i++) {
        mt_tensor_f32(t)[i] = value;
    }
    return t;
}

static mp_obj_t bn_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_num_features, ARG_eps, ARG_momentum, ARG_dtype };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_num_features, MP_ARG_REQUIRED | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_eps, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_momentum, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_dtype, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mp_int_t c = args[ARG_num_features].u_int;
    float eps = args[ARG_eps].u_obj == mp_const_none ? 1e-5f : (float)mp_obj_get_float(args[ARG_eps].u_obj);
    float momentum = args[ARG_momentum].u_obj == mp_const_none ? 0.1f : (float)mp_obj_get_float(args[ARG_momentum].u_obj);
    if (c < 1 || c > 0xffff) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("BatchNorm2d: num_features must be positive, not %d"), (int)c);
    }
    if (!(eps > 0.0f) || !(momentum >= 0.0f && momentum <= 1.0f)) {
        mp_raise_ValueError(MP_ERROR_TEXT("BatchNorm2d: need eps > 0 and momentum in [0, 1]"));
    }
    uint8_t dtype = mt_layer_dtype_arg(args[ARG_dtype].u_obj, MT_DTYPES_FLOAT | MT_DTYPE_BIT(MT_INT8), false,
        "BatchNorm2d");
    mt_batchnorm_obj_t *self = mp_obj_malloc(mt_batchnorm_obj_t, type);
    mt_layer_init(&self->base);
    self->base.dtype = dtype;
    self->p = (mt_batchnorm_params_t) { .rows = 0, .channels = (int)c, .eps = eps, .momentum = momentum };
    self->base.weight = filled((int)c, 1.0f, "BatchNorm2d.weight");
    self->base.bias = filled((int)c, 0.0f, "BatchNorm2d.bias");
    self->base.extra_params[0] = filled((int)c, 0.0f, "BatchNorm2d.running_mean");
    self->base.extra_params[1] = filled((int)c, 1.0f, "BatchNorm2d.running_var");
    self->saved = m_new0(float, 2 * c);
    self->batch_stats = true;
    self->y_range.count = self->dx_range.count = 0;
    if (dtype == MT_INT8) {
        self->base.quant_range = &self->y_range;
    }
    return MP_OBJ_FROM_PTR(self);
}

// fold_into(layer): scales a Conv/Linear's weight rows and rewrites its bias so that
// layer followed by this (inference) batch norm equals the layer alone.
static mp_obj_t bn_fold_into(mp_obj_t self_in, mp_obj_t layer_in) {
    mt_batchnorm_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mt_layer_obj_t *layer = mt_layer_get(layer_in, "fold_into: layer");
    if (layer->weight == NULL || layer->weight->shape.dim[0] != self->p.channels) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("BatchNorm2d.fold_into: %q does not have %d output channels"),
            mt_layer_name(layer), self->p.channels);
    }
    mt_dtype_t dtype = layer->weight->dtype;
    if (dtype != MT_FLOAT32 && dtype != MT_FLOAT16) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("BatchNorm2d.fold_into: %q weights are not supported"),
            mt_dtype_qstr(dtype));
    }
    if (layer->bias == NULL) {
        mt_shape_t shape = { .ndim = 1, .dim = { self->p.channels } };
        layer->bias = mt_tensor_new(&shape, dtype, "bias");  // zeros in either dtype
    }
    int row_len = (int)(layer->weight->size / (size_t)self->p.channels);
    const float *gamma = self->base.weight->data, *beta = self->base.bias->data;
    const float *mean = self->base.extra_params[0]->data, *var = self->base.extra_params[1]->data;
    if (dtype == MT_FLOAT16) {
        mt_batchnorm_f16_fold(&self->p, gamma, beta, mean, var, layer->weight->data, row_len, layer->bias->data);
    } else {
        mt_batchnorm_f32_fold(&self->p, gamma, beta, mean, var, layer->weight->data, row_len, layer->bias->data);
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(bn_fold_into_obj, bn_fold_into);

static void bn_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_batchnorm_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "BatchNorm2d(%d, eps=%e, momentum=%f", self->p.channels, (double)self->p.eps,
        (double)self->p.momentum);
    if (self->base.dtype != MT_FLOAT32) {
        mp_printf(print, ", dtype=%q", mt_dtype_qstr(self->base.dtype));
    }
    mp_print_str(print, ")");
}

// The common layer methods come from mt_layer_attr; fold_into is added here.
static void bn_attr(mp_obj_t self_in, qstr attr, mp_obj_t *dest) {
    if (dest[0] == MP_OBJ_NULL && attr == MP_QSTR_fold_into) {
        dest[0] = MP_OBJ_FROM_PTR(&bn_fold_into_obj);
        dest[1] = self_in;
        return;
    }
    mt_layer_attr(self_in, attr, dest);
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_batchnorm2d_type,
    MP_QSTR_BatchNorm2d,
    MP_TYPE_FLAG_NONE,
    make_new, bn_make_new,
    print, bn_print,
    attr, bn_attr,
    protocol, &bn_ops,
    locals_dict, &mt_layer_locals_dict
    );
