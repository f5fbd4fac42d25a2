// mt.Conv2d and mt.Conv1d(in_channels, out_channels, kernel_size, stride=1, padding=0,
// groups=1, bias=True, dtype=mt.float32). Conv1d runs the 2-D kernels with a height of one.
// The dtype-specific work is in the kernel tables of layer_conv.h.
#include "py/runtime.h"
#include "layer_conv.h"
#include "kernels/checked_size.h"

static void conv_plan(mt_layer_obj_t *self_in, const mt_shape_t *in) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)self_in;
    mt_conv2d_params_t *p = &self->p;
    int c = in->dim[in->ndim - 1];
    if (c != p->in_c) {
        mt_layer_raise_expects(self_in, "expects %d input channels (last dim)", p->in_c, in);
    }
    p->batch = in->dim[0];
    p->in_h = self->is_1d ? 1 : in->dim[1];
    p->in_w = in->dim[in->ndim - 2];
    p->out_h = mt_conv_out_size(p->in_h, p->kernel_h, p->stride_h, p->pad_h, p->pad_h);
    p->out_w = mt_conv_out_size(p->in_w, p->kernel_w, p->stride_w, p->pad_w, p->pad_w);
    if (p->in_h + 2 * p->pad_h < p->kernel_h || p->in_w + 2 * p->pad_w < p->kernel_w) {
        mt_layer_raise_shape(self_in, "kernel is larger than the padded input", in);
    }
    if (self->k->state_bytes != NULL) {
        self_in->state_bytes += self->k->state_bytes(self_in);
    }
    mt_shape_t *out = &self_in->out_shape;
    out->ndim = in->ndim;
    out->dim[0] = p->batch;
    if (self->is_1d) {
        out->dim[1] = p->out_w;
        out->dim[2] = p->out_c;
    } else {
        out->dim[1] = p->out_h;
        out->dim[2] = p->out_w;
        out->dim[3] = p->out_c;
    }
}

static size_t conv_scratch(const mt_layer_obj_t *self_in) {
    // The kernels' size helpers saturate (kernels/checked_size.h): one check here.
    size_t floats = ((const mt_conv_obj_t *)self_in)->k->scratch_floats(self_in);
    mt_size_check(floats, sizeof(float), qstr_str(mt_layer_name(self_in)));
    return floats;
}

static void conv_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    ((mt_conv_obj_t *)self_in)->k->forward(self_in, x, pass);
}

static void conv_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    ((mt_conv_obj_t *)self_in)->k->backward(self_in, x, dy, dx, pass);
}

static uint64_t conv_macs(const mt_layer_obj_t *self_in, mt_macs_kind_t kind, bool need_dx) {
    (void)kind;
    (void)need_dx;
    const mt_conv2d_params_t *p = &((const mt_conv_obj_t *)self_in)->p;
    return (uint64_t)p->batch * p->out_h * p->out_w * p->out_c * p->kernel_h * p->kernel_w * (p->in_c / p->groups);
}

static mp_obj_t pair_or_int(int h, int w, bool is_1d) {
    if (is_1d) {
        return MP_OBJ_NEW_SMALL_INT(w);
    }
    mp_obj_t items[2] = { MP_OBJ_NEW_SMALL_INT(h), MP_OBJ_NEW_SMALL_INT(w) };
    return mp_obj_new_tuple(2, items);
}

static mp_obj_t conv_config(const mt_layer_obj_t *self_in) {
    const mt_conv_obj_t *self = (const mt_conv_obj_t *)self_in;
    const mt_conv2d_params_t *p = &self->p;
    mp_obj_t dict = mt_new_ordered_dict(8);
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_in_channels), MP_OBJ_NEW_SMALL_INT(p->in_c));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_out_channels), MP_OBJ_NEW_SMALL_INT(p->out_c));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_kernel_size), pair_or_int(p->kernel_h, p->kernel_w, self->is_1d));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_stride), pair_or_int(p->stride_h, p->stride_w, self->is_1d));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_padding), pair_or_int(p->pad_h, p->pad_w, self->is_1d));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_groups), MP_OBJ_NEW_SMALL_INT(p->groups));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_bias), mp_obj_new_bool(self_in->bias != NULL));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_dtype), MP_OBJ_NEW_QSTR(mt_layer_dtype_qstr(self_in)));
    return dict;
}

static const mt_layer_ops_t conv2d_ops = {
    .magic = MT_LAYER_MAGIC,
    .input_ndim = 4,
    .dtypes = MT_CONV_DTYPES,
    .plan = conv_plan,
    .scratch_floats = conv_scratch,
    .forward = conv_forward,
    .backward = conv_backward,
    .macs = conv_macs,
    .config = conv_config,
};

static const mt_layer_ops_t conv1d_ops = {
    .magic = MT_LAYER_MAGIC,
    .input_ndim = 3,
    .dtypes = MT_CONV_DTYPES,
    .plan = conv_plan,
    .scratch_floats = conv_scratch,
    .forward = conv_forward,
    .backward = conv_backward,
    .macs = conv_macs,
    .config = conv_config,
};

static mp_obj_t conv_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_in_channels, ARG_out_channels, ARG_kernel_size, ARG_stride, ARG_padding, ARG_groups, ARG_bias, ARG_dtype };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_in_channels, MP_ARG_REQUIRED | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_out_channels, MP_ARG_REQUIRED | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_kernel_size, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_stride, MP_ARG_OBJ, {.u_obj = MP_OBJ_NEW_SMALL_INT(1)} },
        { MP_QSTR_padding, MP_ARG_OBJ, {.u_obj = MP_OBJ_NEW_SMALL_INT(0)} },
        { MP_QSTR_groups, MP_ARG_INT, {.u_int = 1} },
        { MP_QSTR_bias, MP_ARG_BOOL, {.u_bool = true} },
        { MP_QSTR_dtype, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    bool is_1d = type->name == MP_QSTR_Conv1d;
    const char *name = is_1d ? "Conv1d" : "Conv2d";
    bool mixed;
    uint8_t dtype = mt_layer_weights_dtype_arg(args[ARG_dtype].u_obj, MT_CONV_DTYPES, name, &mixed);
    mp_int_t in = args[ARG_in_channels].u_int, out = args[ARG_out_channels].u_int;
    mp_int_t groups = args[ARG_groups].u_int;
    if (in < 1 || out < 1 || in > 0xffff || out > 0xffff) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%s: in_channels and out_channels must be positive, not %d and %d"), name, (int)in, (int)out);
    }
    if (groups < 1 || in % groups != 0 || out % groups != 0) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%s: groups=%d must divide in_channels=%d and out_channels=%d"), name, (int)groups, (int)in, (int)out);
    }
    mt_conv_obj_t *self = mp_obj_malloc(mt_conv_obj_t, type);
    mt_layer_init(&self->base);
    self->base.dtype = dtype;
    self->k = mt_conv_kernels_for(dtype, mixed);
    self->is_1d = is_1d;
    mt_conv2d_params_t *p = &self->p;
    p->in_c = (int)in;
    p->out_c = (int)out;
    p->groups = (int)groups;
    if (is_1d) {
        p->kernel_h = p->stride_h = 1;
        p->pad_h = 0;
        p->kernel_w = (int)mp_obj_get_int(args[ARG_kernel_size].u_obj);
        p->stride_w = (int)mp_obj_get_int(args[ARG_stride].u_obj);
        p->pad_w = (int)mp_obj_get_int(args[ARG_padding].u_obj);
        if (p->kernel_w < 1 || p->stride_w < 1 || p->pad_w < 0 || p->kernel_w > 0xffff || p->stride_w > 0xffff || p->pad_w > 0xffff) {
            mp_raise_ValueError(MP_ERROR_TEXT("Conv1d: kernel_size and stride must be >= 1, padding >= 0"));
        }
    } else {
        mt_parse_pair(args[ARG_kernel_size].u_obj, &p->kernel_h, &p->kernel_w, "Conv2d: kernel_size", 1);
        mt_parse_pair(args[ARG_stride].u_obj, &p->stride_h, &p->stride_w, "Conv2d: stride", 1);
        mt_parse_pair(args[ARG_padding].u_obj, &p->pad_h, &p->pad_w, "Conv2d: padding", 0);
    }
    mt_shape_t wshape;
    if (is_1d) {
        wshape = (mt_shape_t) { .ndim = 3, .dim = { p->out_c, p->kernel_w, p->in_c / p->groups } };
    } else {
        wshape = (mt_shape_t) { .ndim = 4, .dim = { p->out_c, p->kernel_h, p->kernel_w, p->in_c / p->groups } };
    }
    // Before any int product of the kernel's sizes: the weight's size, checked.
    mt_shape_bytes(&wshape, MT_FLOAT32, is_1d ? "Conv1d.weight" : "Conv2d.weight");
    int fan_in = p->kernel_h * p->kernel_w * (p->in_c / p->groups);
    self->s8 = NULL;
    self->k->init(&self->base, &wshape, fan_in, args[ARG_bias].u_bool);
    return MP_OBJ_FROM_PTR(self);
}

static void conv_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_conv_obj_t *self = MP_OBJ_TO_PTR(self_in);
    const mt_conv2d_params_t *p = &self->p;
    if (self->is_1d) {
        mp_printf(print, "Conv1d(%d, %d, %d, stride=%d, padding=%d, groups=%d", p->in_c, p->out_c,
            p->kernel_w, p->stride_w, p->pad_w, p->groups);
    } else {
        mp_printf(print, "Conv2d(%d, %d, (%d, %d), stride=(%d, %d), padding=(%d, %d), groups=%d", p->in_c,
            p->out_c, p->kernel_h, p->kernel_w, p->stride_h, p->stride_w, p->pad_h, p->pad_w, p->groups);
    }
    if (mt_layer_dtype_qstr(&self->base) != MP_QSTR_float32) {
        mp_printf(print, ", dtype=%q", mt_layer_dtype_qstr(&self->base));
    }
    mp_print_str(print, ")");
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_conv2d_type,
    MP_QSTR_Conv2d,
    MP_TYPE_FLAG_NONE,
    make_new, conv_make_new,
    print, conv_print,
    call, mt_layer_call,
    attr, mt_layer_attr,
    protocol, &conv2d_ops,
    locals_dict, &mt_layer_locals_dict
    );

MP_DEFINE_CONST_OBJ_TYPE(
    mt_conv1d_type,
    MP_QSTR_Conv1d,
    MP_TYPE_FLAG_NONE,
    make_new, conv_make_new,
    print, conv_print,
    call, mt_layer_call,
    attr, mt_layer_attr,
    protocol, &conv1d_ops,
    locals_dict, &mt_layer_locals_dict
    );
