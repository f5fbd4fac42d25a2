// mt.MaxPool2d and mt.AvgPool2d(kernel_size, stride=None, padding=0) on (N, H, W, C),
// and mt.GlobalAvgPool(): (N, H, W, C) or (N, L, C) -> (N, C).
#include "py/runtime.h"
#include "layer.h"
#include "kernels/pool_f32.h"
#include "kernels/pool_f16.h"
#include "kernels/pool_s8.h"

typedef struct {
    mt_layer_obj_t base;
    mt_pool2d_params_t p;
} mt_pool_obj_t;

#define POOL_MAX_AREA (1 << 23)

static bool is_max(const mt_layer_obj_t *self) {
    return self->base.type->name == MP_QSTR_MaxPool2d;
}

static void pool_plan(mt_layer_obj_t *self_in, const mt_shape_t *in) {
    mt_pool2d_params_t *p = &((mt_pool_obj_t *)self_in)->p;
    p->batch = in->dim[0];
    p->in_h = in->dim[1];
    p->in_w = in->dim[2];
    p->channels = in->dim[3];
    if (p->in_h + 2 * p->pad_h < p->kernel_h || p->in_w + 2 * p->pad_w < p->kernel_w) {
        mt_layer_raise_shape(self_in, "kernel is larger than the padded input", in);
    }
    p->out_h = (p->in_h + 2 * p->pad_h - p->kernel_h) / p->stride_h + 1;
    p->out_w = (p->in_w + 2 * p->pad_w - p->kernel_w) / p->stride_w + 1;
    self_in->out_shape = (mt_shape_t) { .ndim = 4, .dim = { p->batch, p->out_h, p->out_w, p->channels } };
}

static void pool_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    (void)pass;
    const mt_pool2d_params_t *p = &((mt_pool_obj_t *)self_in)->p;
    void *y = self_in->output->data;
    if (self_in->in_dtype == MT_INT8) {
        self_in->output->scale = x->scale;   // the maximum and the mean keep the quantization
        self_in->output->zero_point = x->zero_point;
        if (is_max(self_in)) {
            mt_maxpool2d_s8_forward(p, x->data, y);
        } else {
            mt_avgpool2d_s8_forward(p, x->data, y, x->zero_point);
        }
    } else if (self_in->in_dtype == MT_FLOAT16) {
        if (is_max(self_in)) {
            mt_maxpool2d_f16_forward(p, x->data, y);
        } else {
            mt_avgpool2d_f16_forward(p, x->data, y);
        }
    } else if (is_max(self_in)) {
        mt_maxpool2d_f32_forward(p, x->data, y);
    } else {
        mt_avgpool2d_f32_forward(p, x->data, y);
    }
}

static void pool_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    (void)pass;
    const mt_pool2d_params_t *p = &((mt_pool_obj_t *)self_in)->p;
    if (dx == NULL) {
        return;
    }
    if (self_in->in_dtype == MT_INT8) {
        if (is_max(self_in)) {
            mt_maxpool2d_s8_grad_input(p, x->data, dy->data, dx->data);
            dx->scale = dy->scale;
        } else {
            // dy / area spread over each window (pool_s8.h): the scale carries the division.
            mt_avgpool2d_s8_grad_input(p, dy->data, dx->data);
            dx->scale = dy->scale * (float)mt_avgpool2d_s8_cover(p) / (float)(p->kernel_h * p->kernel_w);
        }
        dx->zero_point = 0;
    } else if (self_in->in_dtype == MT_FLOAT16) {
        if (is_max(self_in)) {
            mt_maxpool2d_f16_grad_input(p, x->data, dy->data, dx->data);
        } else {
            mt_avgpool2d_f16_grad_input(p, dy->data, dx->data);
        }
    } else if (is_max(self_in)) {
        mt_maxpool2d_f32_grad_input(p, x->data, dy->data, dx->data);
    } else {
        mt_avgpool2d_f32_grad_input(p, dy->data, dx->data);
    }
}

static mp_obj_t pool_config(const mt_layer_obj_t *self_in) {
    const mt_pool2d_params_t *p = &((const mt_pool_obj_t *)self_in)->p;
    mp_obj_t dict = mt_new_ordered_dict(3);
    mp_obj_t k[2] = { MP_OBJ_NEW_SMALL_INT(p->kernel_h), MP_OBJ_NEW_SMALL_INT(p->kernel_w) };
    mp_obj_t s[2] = { MP_OBJ_NEW_SMALL_INT(p->stride_h), MP_OBJ_NEW_SMALL_INT(p->stride_w) };
    mp_obj_t pad[2] = { MP_OBJ_NEW_SMALL_INT(p->pad_h), MP_OBJ_NEW_SMALL_INT(p->pad_w) };
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_kernel_size), mp_obj_new_tuple(2, k));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_stride), mp_obj_new_tuple(2, s));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_padding), mp_obj_new_tuple(2, pad));
    return dict;
}

static const mt_layer_ops_t pool_ops = {
    .magic = MT_LAYER_MAGIC,
    .input_ndim = 4,
    .dtypes = MT_DTYPES_FLOAT | MT_DTYPE_BIT(MT_INT8),
    .plan = pool_plan,
    .forward = pool_forward,
    .backward = pool_backward,
    .config = pool_config,
};

static mp_obj_t pool_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_kernel_size, ARG_stride, ARG_padding, ARG_dtype };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_kernel_size, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_stride, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_padding, MP_ARG_OBJ, {.u_obj = MP_OBJ_NEW_SMALL_INT(0)} },
        { MP_QSTR_dtype, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mt_pool_obj_t *self = mp_obj_malloc(mt_pool_obj_t, type);
    mt_layer_init(&self->base);
    self->base.dtype = mt_layer_dtype_arg(args[ARG_dtype].u_obj, 0xff, true, qstr_str(type->name));
    mt_pool2d_params_t *p = &self->p;
    mt_parse_pair(args[ARG_kernel_size].u_obj, &p->kernel_h, &p->kernel_w, "pool: kernel_size", 1);
    if (args[ARG_stride].u_obj == mp_const_none) {
        p->stride_h = p->kernel_h;
        p->stride_w = p->kernel_w;
    } else {
        mt_parse_pair(args[ARG_stride].u_obj, &p->stride_h, &p->stride_w, "pool: stride", 1);
    }
    mt_parse_pair(args[ARG_padding].u_obj, &p->pad_h, &p->pad_w, "pool: padding", 0);
    // int8 average pooling sums a window of 8-bit values in int32: keep area * 255 in range.
    if (p->kernel_h > POOL_MAX_AREA / p->kernel_w) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("pool: kernel_size %d x %d is over %d values"),
            p->kernel_h, p->kernel_w, POOL_MAX_AREA);
    }
    // PyTorch's rule: a window must never lie entirely in the padding.
    if (2 * p->pad_h > p->kernel_h || 2 * p->pad_w > p->kernel_w) {
        mp_raise_ValueError(MP_ERROR_TEXT("pool: padding must be at most half the kernel size"));
    }
    return MP_OBJ_FROM_PTR(self);
}

static void pool_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_pool_obj_t *self = MP_OBJ_TO_PTR(self_in);
    const mt_pool2d_params_t *p = &self->p;
    mp_printf(print, "%s((%d, %d), stride=(%d, %d), padding=(%d, %d)", mp_obj_get_type_str(self_in),
        p->kernel_h, p->kernel_w, p->stride_h, p->stride_w, p->pad_h, p->pad_w);
    if (self->base.dtype != MT_DTYPE_ANY) {
        mp_printf(print, ", dtype=%q", mt_dtype_qstr(self->base.dtype));
    }
    mp_print_str(print, ")");
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_maxpool2d_type,
    MP_QSTR_MaxPool2d,
    MP_TYPE_FLAG_NONE,
    make_new, pool_make_new,
    print, pool_print,
    call, mt_layer_call,
    attr, mt_layer_attr,
    protocol, &pool_ops,
    locals_dict, &mt_layer_locals_dict
    );

MP_DEFINE_CONST_OBJ_TYPE(
    mt_avgpool2d_type,
    MP_QSTR_AvgPool2d,
    MP_TYPE_FLAG_NONE,
    make_new, pool_make_new,
    print, pool_print,
    call, mt_layer_call,
    attr, mt_layer_attr,
    protocol, &pool_ops,
    locals_dict, &mt_layer_locals_dict
    );

/******************************************************************************/
// GlobalAvgPool

static void gap_plan(mt_layer_obj_t *self, const mt_shape_t *in) {
    if (in->ndim != 3 && in->ndim != 4) {
        mt_layer_raise_shape(self, "expects (N, H, W, C) or (N, L, C)", in);
    }
    self->out_shape = (mt_shape_t) { .ndim = 2, .dim = { in->dim[0], in->dim[in->ndim - 1] } };
}

static int gap_pixels(const mt_layer_obj_t *self) {
    return (int)(mt_shape_size(&self->in_shape) / (size_t)(self->out_shape.dim[0] * self->out_shape.dim[1]));
}

static void gap_forward(mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    (void)pass;
    int batch = self->out_shape.dim[0], channels = self->out_shape.dim[1];
    if (self->in_dtype == MT_INT8) {
        self->output->scale = x->scale;
        self->output->zero_point = x->zero_point;
        mt_global_avgpool_s8_forward(x->data, self->output->data, batch, gap_pixels(self), channels, x->zero_point);
    } else if (self->in_dtype == MT_FLOAT16) {
        mt_global_avgpool_f16_forward(x->data, self->output->data, batch, gap_pixels(self), channels);
    } else {
        mt_global_avgpool_f32_forward(x->data, self->output->data, batch, gap_pixels(self), channels);
    }
}

static void gap_backward(mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    (void)x;
    (void)pass;
    if (dx == NULL) {
        return;
    }
    int batch = self->out_shape.dim[0], channels = self->out_shape.dim[1];
    if (self->in_dtype == MT_INT8) {
        // dy / pixels exactly: the same integers with a smaller scale.
        mt_global_avgpool_s8_grad_input(dy->data, dx->data, batch, gap_pixels(self), channels);
        dx->scale = dy->scale / (float)gap_pixels(self);
        dx->zero_point = 0;
    } else if (self->in_dtype == MT_FLOAT16) {
        mt_global_avgpool_f16_grad_input(dy->data, dx->data, batch, gap_pixels(self), channels);
    } else {
        mt_global_avgpool_f32_grad_input(dy->data, dx->data, batch, gap_pixels(self), channels);
    }
}

static const mt_layer_ops_t gap_ops = {
    .magic = MT_LAYER_MAGIC,
    .dtypes = MT_DTYPES_FLOAT | MT_DTYPE_BIT(MT_INT8),
    .plan = gap_plan,
    .forward = gap_forward,
    .backward = gap_backward,
};

static mp_obj_t gap_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    mt_pool_obj_t *self = mp_obj_malloc(mt_pool_obj_t, type);
    mt_layer_init(&self->base);
    self->base.dtype = mt_layer_parse_any_dtype(n_args, n_kw, args, "GlobalAvgPool");
    return MP_OBJ_FROM_PTR(self);
}

static void gap_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_layer_print_simple(print, MP_OBJ_TO_PTR(self_in));
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_global_avgpool_type,
    MP_QSTR_GlobalAvgPool,
    MP_TYPE_FLAG_NONE,
    make_new, gap_make_new,
    print, gap_print,
    call, mt_layer_call,
    attr, mt_layer_attr,
    protocol, &gap_ops,
    locals_dict, &mt_layer_locals_dict
    );
