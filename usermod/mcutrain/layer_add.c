// mt.Add(): y = a + b for two same-shape tensors, the join of a residual connection
// used on its own (mt.Residual uses the same kernels inside a model). int8 operands may have
// different scales: their sum is requantized (kernels/add_s8.h) to the moving-average range
// of the sums seen so far (the first call measures it).
#include "py/runtime.h"
#include "tensor.h"
#include "layer_s8.h"
#include "kernels/activation_f32.h"
#include "kernels/activation_f16.h"

typedef struct {
    mp_obj_base_t base;
    mt_tensor_obj_t *output;
    mt_range_tracker_t range;      // int8: the sum's real range
} mt_add_obj_t;

static mp_obj_t add_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    (void)args;
    mp_arg_check_num(n_args, n_kw, 0, 0, false);
    mt_add_obj_t *self = mp_obj_malloc(mt_add_obj_t, type);
    self->output = NULL;
    self->range.count = 0;
    return MP_OBJ_FROM_PTR(self);
}

// A float32, float16 or int8 operand.
static mt_tensor_obj_t *operand(mp_obj_t obj, const char *what) {
    mt_tensor_obj_t *t = mt_tensor_get(obj, what);
    if (t->dtype != MT_FLOAT32 && t->dtype != MT_FLOAT16 && t->dtype != MT_INT8) {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("%s must be float32, float16 or int8, not %q"), what,
            mt_dtype_qstr(t->dtype));
    }
    return t;
}

// forward(a, b) -> a + b (both float32, float16 or int8), in a buffer planned once per shape.
static mp_obj_t add_forward(mp_obj_t self_in, mp_obj_t a_in, mp_obj_t b_in) {
    mt_add_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mt_tensor_obj_t *a = operand(a_in, "Add.forward: a");
    mt_tensor_obj_t *b = operand(b_in, "Add.forward: b");
    if (!mt_shape_equal(&a->shape, &b->shape)) {
        char sa[64], sb[64];
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("Add: shapes %s and %s differ"),
            mt_shape_str(&a->shape, sa, sizeof(sa)), mt_shape_str(&b->shape, sb, sizeof(sb)));
    }
    if (a->dtype != b->dtype) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("Add: dtypes %q and %q differ; convert one with mt.Convert"),
            mt_dtype_qstr(a->dtype), mt_dtype_qstr(b->dtype));
    }
    if (self->output == NULL || !mt_shape_equal(&self->output->shape, &a->shape) || self->output->dtype != a->dtype) {
        self->output = mt_tensor_new(&a->shape, a->dtype, "Add");
    }
    if (a->dtype == MT_INT8) {
        mt_s8_add_tracked(&self->range, a, b, self->output, true, "Add");
    } else if (a->dtype == MT_FLOAT16) {
        mt_add_f16(a->data, b->data, self->output->data, a->size);
    } else {
        mt_add_f32(a->data, b->data, self->output->data, a->size);
    }
    return MP_OBJ_FROM_PTR(self->output);
}
static MP_DEFINE_CONST_FUN_OBJ_3(add_forward_obj, add_forward);

// backward(dy) -> (dy, dy): each input's gradient is the output's (int8: in dy's scale).
static mp_obj_t add_backward(mp_obj_t self_in, mp_obj_t dy_in) {
    (void)self_in;
    operand(dy_in, "Add.backward: dy");
    mp_obj_t items[2] = { dy_in, dy_in };
    return mp_obj_new_tuple(2, items);
}
static MP_DEFINE_CONST_FUN_OBJ_2(add_backward_obj, add_backward);

static const mp_rom_map_elem_t add_locals_dict_table[] = {
    { MP_ROM_QSTR(MP_QSTR_forward), MP_ROM_PTR(&add_forward_obj) },
    { MP_ROM_QSTR(MP_QSTR_backward), MP_ROM_PTR(&add_backward_obj) },
};
static MP_DEFINE_CONST_DICT(add_locals_dict, add_locals_dict_table);

MP_DEFINE_CONST_OBJ_TYPE(
    mt_add_type,
    MP_QSTR_Add,
    MP_TYPE_FLAG_NONE,
    make_new, add_make_new,
    locals_dict, &add_locals_dict
    );
