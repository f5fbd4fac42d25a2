// mt.BatchNorm2d(num_features, eps=1e-5, momentum=0.1) over the last (channel) dim:
// batch statistics when training, running ones in predict(); fold_into(conv) folds it
// into the preceding layer for inference.
#include "py/runtime.h"
#include "layer.h"
#include "kernels/batchnorm_f32.h"

typedef struct {
    mt_layer_obj_t base;
    mt_batchnorm_params_t p;
    float *saved;              // batch mean[C] and 1/sqrt(var + eps)[C] for backward
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

static void bn_forward(mt_layer_obj_t *self_in, const float *x, const mt_pass_t *pass) {
    mt_batchnorm_obj_t *self = (mt_batchnorm_obj_t *)self_in;
    float *gamma = self_in->weight->data, *beta = self_in->bias->data;
    float *running_mean = self_in->extra_params[0]->data, *running_var = self_in->extra_params[1]->data;
    if (pass->training) {
        mt_batchnorm_f32_forward_train(&self->p, x, gamma, beta, self_in->output->data, self->saved,
            self->saved + self->p.channels, running_mean, running_var);
    } else {
        mt_batchnorm_f32_forward_eval(&self->p, x, gamma, beta, running_mean, running_var, self_in->output->data);
    }
}

static void bn_backward(mt_layer_obj_t *self_in, const float *x, const float *dy, float *dx, const mt_pass_t *pass) {
    mt_batchnorm_obj_t *self = (mt_batchnorm_obj_t *)self_in;
    const float *mean = self->saved, *inv_std = self->saved + self->p.channels;
    if (dx != NULL) {
        // dx needs gamma as it was in the forward pass, and a fused update may change
        // gamma as soon as its gradient pass begins (weight decay): dx goes first.
        mt_batchnorm_f32_backward(&self->p, x, dy, self_in->weight->data, mean, inv_std, dx, 1.0f, NULL, NULL);
    }
    if (!self_in->trainable) {
        return;
    }
    float alpha, beta_alpha;
    float *dgamma = mt_grad_begin(pass, self_in->weight, &alpha);
    float *dbeta = mt_grad_begin(pass, self_in->bias, &beta_alpha);
    mt_batchnorm_f32_backward(&self->p, x, dy, self_in->weight->data, mean, inv_std, NULL, alpha, dgamma, dbeta);
    mt_grad_end(pass, self_in->weight);
    mt_grad_end(pass, self_in->bias);
}

static uint64_t bn_macs(const mt_layer_obj_t *self_in, mt_macs_kind_t kind, bool need_dx) {
    (void)kind;
    (void)need_dx;
    return mt_shape_size(&self_in->in_shape);
}

static mp_obj_t bn_config(const mt_layer_obj_t *self_in) {
    const mt_batchnorm_obj_t *self = (const mt_batchnorm_obj_t *)self_in;
    mp_obj_t dict = mt_new_ordered_dict(3);
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_num_features), MP_OBJ_NEW_SMALL_INT(self->p.channels));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_eps), mp_obj_new_float_from_f(self->p.eps));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_momentum), mp_obj_new_float_from_f(self->p.momentum));
    return dict;
}

static const mt_layer_ops_t bn_ops = {
    .magic = MT_LAYER_MAGIC,
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
    enum { ARG_num_features, ARG_eps, ARG_momentum };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_num_features, MP_ARG_REQUIRED | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_eps, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_momentum, MP_ARG_OBJ, {.u_obj = mp_const_none} },
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
    mt_batchnorm_obj_t *self = mp_obj_malloc(mt_batchnorm_obj_t, type);
    mt_layer_init(&self->base);
    self->p = (mt_batchnorm_params_t) { .rows = 0, .channels = (int)c, .eps = eps, .momentum = momentum };
    self->base.weight = filled((int)c, 1.0f, "BatchNorm2d.weight");
    self->base.bias = filled((int)c, 0.0f, "BatchNorm2d.bias");
    self->base.extra_params[0] = filled((int)c, 0.0f, "BatchNorm2d.running_mean");
    self->base.extra_params[1] = filled((int)c, 1.0f, "BatchNorm2d.running_var");
    self->saved = m_new0(float, 2 * c);
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
    if (layer->bias == NULL) {
        layer->bias = filled(self->p.channels, 0.0f, "bias");
    }
    int row_len = (int)(layer->weight->size / (size_t)self->p.channels);
    mt_batchnorm_f32_fold(&self->p, self->base.weight->data, self->base.bias->data,
        self->base.extra_params[0]->data, self->base.extra_params[1]->data, layer->weight->data, row_len,
        layer->bias->data);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(bn_fold_into_obj, bn_fold_into);

static void bn_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_batchnorm_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "BatchNorm2d(%d, eps=%e, momentum=%f)", self->p.channels, (double)self->p.eps,
        (double)self->p.momentum);
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
