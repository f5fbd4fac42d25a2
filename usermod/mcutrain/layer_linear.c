// mt.Linear(in_features, out_features, bias=True, dtype=mt.float32): y = x W^T + b on
// (batch, features). The dtype-specific work is in the kernel tables of layer_linear.h.
#include "py/runtime.h"
#include "layer_linear.h"
#include "kernels/checked_size.h"

static void linear_plan(mt_layer_obj_t *self_in, const mt_shape_t *in) {
    mt_linear_obj_t *self = (mt_linear_obj_t *)self_in;
    if (in->dim[1] != self->p.in_features) {
        mt_layer_raise_expects(self_in, "expects %d input features", self->p.in_features, in);
    }
    self->p.batch = in->dim[0];
    if (self->k->state_bytes != NULL) {
        self_in->state_bytes += self->k->state_bytes(self_in);
    }
    self_in->out_shape.ndim = 2;
    self_in->out_shape.dim[0] = in->dim[0];
    self_in->out_shape.dim[1] = self->p.out_features;
}

static size_t linear_scratch(const mt_layer_obj_t *self_in) {
    // The kernels' size helpers saturate (kernels/checked_size.h): one check here.
    size_t floats = ((const mt_linear_obj_t *)self_in)->k->scratch_floats(self_in);
    mt_size_check(floats, sizeof(float), "Linear");
    return floats;
}

static void linear_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    ((mt_linear_obj_t *)self_in)->k->forward(self_in, x, pass);
}

static void linear_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    ((mt_linear_obj_t *)self_in)->k->backward(self_in, x, dy, dx, pass);
}

static uint64_t linear_macs(const mt_layer_obj_t *self_in, mt_macs_kind_t kind, bool need_dx) {
    (void)kind;
    (void)need_dx;
    const mt_linear_obj_t *self = (const mt_linear_obj_t *)self_in;
    return (uint64_t)self->p.batch * self->p.in_features * self->p.out_features;
}

static mp_obj_t linear_config(const mt_layer_obj_t *self_in) {
    const mt_linear_obj_t *self = (const mt_linear_obj_t *)self_in;
    mp_obj_t dict = mt_new_ordered_dict(4);
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_in_features), MP_OBJ_NEW_SMALL_INT(self->p.in_features));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_out_features), MP_OBJ_NEW_SMALL_INT(self->p.out_features));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_bias), mp_obj_new_bool(self_in->bias != NULL));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_dtype), MP_OBJ_NEW_QSTR(mt_layer_dtype_qstr(self_in)));
    return dict;
}

static const mt_layer_ops_t linear_ops = {
    .magic = MT_LAYER_MAGIC,
    .input_ndim = 2,
    .dtypes = MT_LINEAR_DTYPES,
    .plan = linear_plan,
    .scratch_floats = linear_scratch,
    .forward = linear_forward,
    .backward = linear_backward,
    .macs = linear_macs,
    .config = linear_config,
};

static mp_obj_t linear_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_in_features, ARG_out_features, ARG_bias, ARG_dtype };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_in_features, MP_ARG_REQUIRED | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_out_features, MP_ARG_REQUIRED | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_bias, MP_ARG_BOOL, {.u_bool = true} },
        { MP_QSTR_dtype, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mp_int_t in = args[ARG_in_features].u_int, out = args[ARG_out_features].u_int;
    if (in < 1 || out < 1 || in > 0xffffff || out > 0xffffff) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("Linear: in_features and out_features must be in [1, %d], not %d and %d"), 0xffffff,
            (int)in, (int)out);
    }
    bool mixed;
    uint8_t dtype = mt_layer_weights_dtype_arg(args[ARG_dtype].u_obj, MT_LINEAR_DTYPES, "Linear", &mixed);
    mt_linear_obj_t *self = mp_obj_malloc(mt_linear_obj_t, type);
    mt_layer_init(&self->base);
    self->base.dtype = dtype;
    self->k = mt_linear_kernels_for(dtype, mixed);
    self->p.batch = 0;
    self->p.in_features = (int)in;
    self->p.out_features = (int)out;
    mt_shape_t wshape = { .ndim = 2, .dim = { (int32_t)out, (int32_t)in } };
    self->s8 = NULL;
    self->k->init(&self->base, &wshape, (int)in, args[ARG_bias].u_bool);
    return MP_OBJ_FROM_PTR(self);
}

static void linear_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_linear_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "Linear(%d, %d, bias=%s", self->p.in_features, self->p.out_features,
        self->base.bias ? "True" : "False");
    if (mt_layer_dtype_qstr(&self->base) != MP_QSTR_float32) {
        mp_printf(print, ", dtype=%q", mt_layer_dtype_qstr(&self->base));
    }
    mp_print_str(print, ")");
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_linear_type,
    MP_QSTR_Linear,
    MP_TYPE_FLAG_NONE,
    make_new, linear_make_new,
    print, linear_print,
    call, mt_layer_call,
    attr, mt_layer_attr,
    protocol, &linear_ops,
    locals_dict, &mt_layer_locals_dict
    );
