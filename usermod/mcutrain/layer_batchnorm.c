// mt.BatchNorm2d(num_features, eps=1e-5, momentum=0.1, dtype=mt.float32) over the last
// (channel) dim: batch statistics when training, running ones in predict(); fold_into(conv)
// folds it into the preceding layer for inference. The dtype-specific work is in the kernel
// tables of layer_batchnorm.h: float16 keeps float16 activations and errors, int8 int8 ones
// (layer_batchnorm_s8.c); gamma, beta and the statistics are float32 in every dtype.
#include "py/runtime.h"
#include "layer_batchnorm.h"

static void bn_plan(mt_layer_obj_t *self_in, const mt_shape_t *in) {
    mt_batchnorm_obj_t *self = (mt_batchnorm_obj_t *)self_in;
    if (in->ndim < 2 || in->dim[in->ndim - 1] != self->p.channels) {
        mt_layer_raise_expects(self_in, "expects %d channels (last dim)", self->p.channels, in);
    }
    self->p.rows = (int)(mt_shape_size(in) / (size_t)self->p.channels);
    self_in->out_shape = *in;
    self_in->state_bytes = 2 * self->p.channels * sizeof(float);
}

static void bn_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x_t, const mt_pass_t *pass) {
    mt_batchnorm_obj_t *self = (mt_batchnorm_obj_t *)self_in;
    if (pass->training && self->p.rows < 2) {
        // The batch variance of one value is 0: the output would be beta whatever x is.
        mt_layer_raise_shape(self_in, "training needs more than 1 value per channel", &self_in->in_shape);
    }
    self->batch_stats = pass->training;
    self->k->forward(self, x_t, pass);
}

static void bn_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_batchnorm_obj_t *self = (mt_batchnorm_obj_t *)self_in;
    self->k->backward(self, x, dy, dx, pass);
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
    .dtypes = MT_BATCHNORM_DTYPES,
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
    uint8_t dtype = mt_layer_dtype_arg(args[ARG_dtype].u_obj, MT_BATCHNORM_DTYPES, false, "BatchNorm2d");
    mt_batchnorm_obj_t *self = mp_obj_malloc(mt_batchnorm_obj_t, type);
    mt_layer_init(&self->base);
    self->base.dtype = dtype;
    self->k = mt_batchnorm_kernels_for(dtype);
    self->p = (mt_batchnorm_params_t) { .rows = 0, .channels = (int)c, .eps = eps, .momentum = momentum };
    self->base.weight = filled((int)c, 1.0f, "BatchNorm2d.weight");
    self->base.bias = filled((int)c, 0.0f, "BatchNorm2d.bias");
    self->base.extra_params[0] = filled((int)c, 0.0f, "BatchNorm2d.running_mean");
    self->base.extra_params[1] = filled((int)c, 1.0f, "BatchNorm2d.running_var");
    self->saved = m_new0(float, 2 * c);
    self->batch_stats = true;
    self->y_range.count = self->dx_range.count = 0;
    if (self->k->init != NULL) {
        self->k->init(self);
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
    const mt_batchnorm_kernels_t *k = mt_batchnorm_kernels_for(dtype);
    if (k->fold == NULL) {
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
    k->fold(&self->p, gamma, beta, mean, var, layer->weight->data, row_len, layer->bias->data);
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
    call, mt_layer_call,
    attr, bn_attr,
    protocol, &bn_ops,
    locals_dict, &mt_layer_locals_dict
    );
