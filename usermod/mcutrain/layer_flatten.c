// mt.Flatten(): (batch, ...) -> (batch, features) in row-major (channels-last) order.
// Its output is a view of its input, so it costs no memory and no copy forward.
#include <string.h>

#include "py/runtime.h"
#include "layer.h"

typedef struct {
    mt_layer_obj_t base;
} mt_flatten_obj_t;

static void flatten_plan(mt_layer_obj_t *self, const mt_shape_t *in) {
    if (in->ndim < 2) {
        mt_layer_raise_shape(self, "expects a batch dimension and at least one more", in);
    }
    self->out_shape.ndim = 2;
    self->out_shape.dim[0] = in->dim[0];
    self->out_shape.dim[1] = (int32_t)(mt_shape_size(in) / (size_t)in->dim[0]);
}

static void flatten_forward(mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    (void)self;
    (void)x;
    (void)pass;
}

static void flatten_backward(mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    (void)x;
    (void)pass;
    if (dx != NULL && dx->data != dy->data) {
        memcpy(dx->data, dy->data, self->output->size * mt_dtype_size(self->out_dtype));
    }
    if (dx != NULL) {
        dx->scale = dy->scale;
        dx->zero_point = dy->zero_point;
    }
}

static const mt_layer_ops_t flatten_ops = {
    .magic = MT_LAYER_MAGIC,
    .flags = MT_LAYER_VIEW,
    .dtypes = 0xff,
    .plan = flatten_plan,
    .forward = flatten_forward,
    .backward = flatten_backward,
};

static mp_obj_t flatten_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    mt_flatten_obj_t *self = mp_obj_malloc(mt_flatten_obj_t, type);
    mt_layer_init(&self->base);
    self->base.dtype = mt_layer_parse_any_dtype(n_args, n_kw, args, "Flatten");
    return MP_OBJ_FROM_PTR(self);
}

static void flatten_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_layer_print_simple(print, MP_OBJ_TO_PTR(self_in));
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_flatten_type,
    MP_QSTR_Flatten,
    MP_TYPE_FLAG_NONE,
    make_new, flatten_make_new,
    print, flatten_print,
    call, mt_layer_call,
    attr, mt_layer_attr,
    protocol, &flatten_ops,
    locals_dict, &mt_layer_locals_dict
    );
