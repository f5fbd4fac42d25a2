// mt.Residual(body, shortcut=None): y = body(x) + shortcut(x), the shortcut being the
// identity when None (ResNet blocks; a 1x1 stride-2 conv shortcut when shapes change).
// int8: the sum is requantized (kernels/add_s8.h) to a tracked output range, and in backward
// the body's and the shortcut's input errors, each in its own scale, to a tracked symmetric
// one; both trackers are moving averages (momentum MT_S8_RANGE_MOMENTUM) whose first
// observation comes from a measuring pass, as in layer_s8.c.
#include <string.h>

#include "py/runtime.h"
#include "layer.h"
#include "plan_arena.h"
#include "kernels/activation_f32.h"
#include "kernels/activation_f16.h"
#include "kernels/add_s8.h"
#include "layer_s8.h"

typedef struct {
    mt_layer_obj_t base;
    mt_layer_obj_t *children[2];   // body, shortcut (NULL: identity)
    mt_tensor_obj_t shortcut_grad; // the shortcut's input gradient, added into dx (data NULL if none)
    mt_range_tracker_t y_range;    // int8: the sum's real range
    mt_range_tracker_t dx_range;   // int8: the summed input error's magnitude, relative (layer_s8.h)
} mt_residual_obj_t;

// a + b in the dtype both have.
static void add(uint8_t dtype, const void *a, const void *b, void *y, size_t n) {
    if (dtype == MT_FLOAT16) {
        mt_add_f16(a, b, y, n);
    } else {
        mt_add_f32(a, b, y, n);
    }
}

static size_t res_children(const mt_layer_obj_t *self_in, mt_layer_obj_t *const **children) {
    const mt_residual_obj_t *self = (const mt_residual_obj_t *)self_in;
    *children = self->children;
    return self->children[1] ? 2 : 1;
}

static void res_plan(mt_layer_obj_t *self_in, const mt_shape_t *in) {
    mt_residual_obj_t *self = (mt_residual_obj_t *)self_in;
    mt_layer_obj_t *body = self->children[0], *shortcut = self->children[1];
    uint8_t in_dtype = self_in->in_dtype;
    mt_layer_plan(body, in, in_dtype, false, false);
    const mt_shape_t *other = in;
    uint8_t other_dtype = in_dtype;
    if (shortcut) {
        mt_layer_plan(shortcut, in, in_dtype, false, false);
        other = &shortcut->out_shape;
        other_dtype = shortcut->out_dtype;
    }
    if (!mt_shape_equal(&body->out_shape, other)) {
        char a[64], b[64];
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("Residual: body gives %s, shortcut %s: add a shortcut that matches"),
            mt_shape_str(&body->out_shape, a, sizeof(a)), mt_shape_str(other, b, sizeof(b)));
    }
    if (body->out_dtype != other_dtype) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("Residual: body gives %q, shortcut %q: convert one with mt.Convert"),
            mt_dtype_qstr(body->out_dtype), mt_dtype_qstr(other_dtype));
    }
    if (!((MT_DTYPES_FLOAT | MT_DTYPE_BIT(MT_INT8)) & MT_DTYPE_BIT(other_dtype))) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("Residual: %q is not supported yet"),
            mt_dtype_qstr(other_dtype));
    }
    if ((in_dtype == MT_INT8) != (other_dtype == MT_INT8)) {
        // The two input errors of an int8 sum meet in the input's dtype.
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("Residual: int8 branches need an int8 input, not %q (convert in both)"),
            mt_dtype_qstr(in_dtype));
    }
    self_in->out_shape = body->out_shape;
    self_in->out_dtype = other_dtype;
    self_in->output = mt_plan_tensor(self_in->output, &self_in->out_shape, other_dtype, "Residual");
    mt_tensor_header_init(&self->shortcut_grad, NULL, in_dtype);
    if (shortcut && !mt_plan_inference()) {
        size_t bytes = mt_shape_bytes(in, in_dtype, "Residual: gradient");
        self->shortcut_grad.data = mt_plan_alloc(bytes, "Residual shortcut gradient");
    }
}

NORETURN static void raise_s8(const char *what) {
    mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("Residual: int8 %s: a quantization scale is out of range"),
        what);
}

// k for scales (a, b) into y, or ValueError.
static void add_s8_make(float a, float b, float y, mt_add_s8_t *k, const char *what) {
    if (mt_add_s8_make(a, b, y, k) != 0) {
        raise_s8(what);
    }
}

// dx = dx + other (symmetric int8 errors in their own scales), in place, requantized to the
// tracked error magnitude (relative to dy_scale, the scale of the error both branches got).
static void res_backward_s8(mt_residual_obj_t *self, mt_tensor_obj_t *dx, const mt_tensor_obj_t *other, size_t n,
    float dy_scale) {
    mt_add_s8_t k;
    mt_range_t range;
    add_s8_make(dx->scale, other->scale, 1.0f, &k, "input gradient");
    mt_add_s8(&k, dx->data, 0, other->data, 0, NULL, 0, -MT_S8_SYM_MAX, MT_S8_SYM_MAX, n, &range);
    float absmax = -range.min > range.max ? -range.min : range.max;
    bool observed = false;
    if (self->dx_range.count == 0) {
        mt_s8_error_observe(&self->dx_range, absmax, dy_scale);
        observed = true;
    }
    mt_qparams_t qp;
    if (mt_qparams_symmetric(mt_s8_error_absmax(&self->dx_range, dy_scale), &qp) != 0) {
        raise_s8("input gradient range");
    }
    add_s8_make(dx->scale, other->scale, qp.scale, &k, "input gradient");
    mt_add_s8(&k, dx->data, 0, other->data, 0, dx->data, 0, -MT_S8_SYM_MAX, MT_S8_SYM_MAX, n, NULL);
    // An all-zero error says nothing about the range (layer_s8.c).
    if (!observed && absmax > 0.0f) {
        mt_s8_error_observe(&self->dx_range, absmax, dy_scale);
    }
    dx->scale = qp.scale;
    dx->zero_point = 0;
}

static void res_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_residual_obj_t *self = (mt_residual_obj_t *)self_in;
    mt_layer_obj_t *body = self->children[0], *shortcut = self->children[1];
    mt_layer_forward(body, x, pass);
    const mt_tensor_obj_t *other = x;
    if (shortcut) {
        mt_layer_forward(shortcut, x, pass);
        other = shortcut->output;
    }
    if (self_in->out_dtype == MT_INT8) {
        mt_s8_add_tracked(&self->y_range, body->output, other, self_in->output, pass->training, "Residual");
        return;
    }
    add(self_in->out_dtype, body->output->data, other->data, self_in->output->data, self_in->output->size);
}

static void res_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_residual_obj_t *self = (mt_residual_obj_t *)self_in;
    mt_layer_obj_t *body = self->children[0], *shortcut = self->children[1];
    size_t in_size = mt_shape_size(&self_in->in_shape);
    // Both branches receive dy unchanged; their input gradients add up.
    mt_layer_ops(body)->backward(body, x, dy, dx, pass);
    const mt_tensor_obj_t *other = dy;
    if (shortcut) {
        mt_layer_ops(shortcut)->backward(shortcut, x, dy, dx ? &self->shortcut_grad : NULL, pass);
        other = &self->shortcut_grad;
    }
    if (dx == NULL) {
        return;
    }
    if (self_in->in_dtype == MT_INT8) {
        // A float dy (the branches convert back to float32 inside) has no scale of its own.
        res_backward_s8(self, dx, other, in_size, self_in->out_dtype == MT_INT8 ? dy->scale : 1.0f);
    } else {
        add(self_in->in_dtype, dx->data, other->data, dx->data, in_size);
    }
}

static uint64_t res_macs(const mt_layer_obj_t *self_in, mt_macs_kind_t kind, bool need_dx) {
    const mt_residual_obj_t *self = (const mt_residual_obj_t *)self_in;
    uint64_t macs = mt_layer_macs(self->children[0], kind, need_dx);
    if (self->children[1]) {
        macs += mt_layer_macs(self->children[1], kind, need_dx);
    }
    return macs;
}

static size_t res_grad_bytes(const mt_layer_obj_t *self_in) {
    const mt_residual_obj_t *self = (const mt_residual_obj_t *)self_in;
    return self->shortcut_grad.data ? mt_shape_size(&self_in->in_shape) * mt_dtype_size(self_in->in_dtype) : 0;
}

static void res_release(mt_layer_obj_t *self_in) {
    ((mt_residual_obj_t *)self_in)->shortcut_grad.data = NULL;
}

static const mt_layer_ops_t res_ops = {
    .magic = MT_LAYER_MAGIC,
    .flags = MT_LAYER_COMPOSITE,
    .plan = res_plan,
    .forward = res_forward,
    .backward = res_backward,
    .macs = res_macs,
    .children = res_children,
    .grad_bytes = res_grad_bytes,
    .release = res_release,
};

static mp_obj_t res_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_body, ARG_shortcut };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_body, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_shortcut, MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mt_residual_obj_t *self = mp_obj_malloc(mt_residual_obj_t, type);
    mt_layer_init(&self->base);
    self->children[0] = mt_layer_get(args[ARG_body].u_obj, "Residual: body");
    self->children[1] = args[ARG_shortcut].u_obj == mp_const_none ? NULL
        : mt_layer_get(args[ARG_shortcut].u_obj, "Residual: shortcut");
    if (self->children[0] == self->children[1]) {
        mp_raise_ValueError(MP_ERROR_TEXT("Residual: body and shortcut must be different objects"));
    }
    mt_layer_adopt(self->children, 2, "Residual");
    self->base.dtype = MT_DTYPE_ANY;
    mt_tensor_header_init(&self->shortcut_grad, NULL, MT_FLOAT32);
    self->y_range.count = self->dx_range.count = 0;
    return MP_OBJ_FROM_PTR(self);
}

static void res_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    mt_residual_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_print_str(print, "Residual(");
    mp_obj_print_helper(print, MP_OBJ_FROM_PTR(self->children[0]), kind);
    mp_print_str(print, ", shortcut=");
    if (self->children[1]) {
        mp_obj_print_helper(print, MP_OBJ_FROM_PTR(self->children[1]), kind);
    } else {
        mp_print_str(print, "None");
    }
    mp_print_str(print, ")");
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_residual_type,
    MP_QSTR_Residual,
    MP_TYPE_FLAG_NONE,
    make_new, res_make_new,
    print, res_print,
    call, mt_layer_call,
    attr, mt_layer_attr,
    protocol, &res_ops,
    locals_dict, &mt_layer_locals_dict
    );
