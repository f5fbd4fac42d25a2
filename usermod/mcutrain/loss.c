// mt.cross_entropy and mt.mse: loss objects for train_step, also callable directly.
#include "py/runtime.h"
#include "py/binary.h"
#include "loss.h"
#include "kernels/loss_f32.h"

void mt_labels_from_obj(mp_obj_t obj, int32_t *labels, int n, int classes) {
    mp_buffer_info_t info;
    if (mp_obj_is_int(obj)) {
        if (n != 1) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("labels: one int for a batch of %d"), n);
        }
        labels[0] = (int32_t)mp_obj_get_int(obj);
    } else if (mp_obj_is_type(obj, &mp_type_list) || mp_obj_is_type(obj, &mp_type_tuple)) {
        size_t len;
        mp_obj_t *items;
        mp_obj_get_array(obj, &len, &items);
        if ((int)len != n) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("labels: %d given for a batch of %d"), (int)len, n);
        }
        for (int i = 0; i < n; i++) {
            labels[i] = (int32_t)mp_obj_get_int(items[i]);
        }
    } else if (obj != mp_const_none && mp_get_buffer(obj, &info, MP_BUFFER_READ)
               && info.typecode != 'f' && info.typecode != 'd') {
        size_t item = mp_binary_get_size('@', info.typecode, NULL);
        if ((int)(info.len / item) != n) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("labels: %d given for a batch of %d"), (int)(info.len / item), n);
        }
        for (int i = 0; i < n; i++) {
            labels[i] = (int32_t)mp_obj_get_int(mp_binary_get_val_array(info.typecode, info.buf, i));
        }
    } else {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("labels must be an int, a list of ints or an int array, not %s"),
            mp_obj_get_type_str(obj));
    }
    for (int i = 0; i < n; i++) {
        if (labels[i] < 0 || labels[i] >= classes) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("label %d is outside [0, %d)"), (int)labels[i], classes);
        }
    }
}

static float cross_entropy_compute(const mt_tensor_obj_t *out, mp_obj_t target, float *dout, int32_t *labels) {
    int rows = out->shape.dim[0];
    int classes = (int)(out->size / (size_t)rows);
    mt_labels_from_obj(target, labels, rows, classes);
    return mt_cross_entropy_f32(out->data, labels, rows, classes, dout);
}

static float mse_compute(const mt_tensor_obj_t *out, mp_obj_t target, float *dout, int32_t *labels) {
    (void)labels;
    mt_tensor_obj_t *t = mt_tensor_get_f32(target, "mse: target");
    if (t->size != out->size) {
        char a[64], b[64];
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("mse: target shape %s, output shape %s"),
            mt_shape_str(&t->shape, a, sizeof(a)), mt_shape_str(&out->shape, b, sizeof(b)));
    }
    return mt_mse_f32(out->data, t->data, (int)out->size, dout);
}

const mt_loss_obj_t *mt_loss_get(mp_obj_t obj) {
    if (!mp_obj_is_type(obj, &mt_loss_type)) {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("loss must be mt.cross_entropy or mt.mse, not %s"), mp_obj_get_type_str(obj));
    }
    return MP_OBJ_TO_PTR(obj);
}

// Scratch for a direct call: the gradient and labels of `out`, freed right after.
static float call_loss(const mt_loss_obj_t *loss, const mt_tensor_obj_t *out, mp_obj_t target, mt_tensor_obj_t **grad) {
    if (out->shape.ndim < 2 && loss->takes_labels) {
        mp_raise_ValueError(MP_ERROR_TEXT("cross_entropy: output must be (batch, classes)"));
    }
    *grad = mt_tensor_new(&out->shape, MT_FLOAT32, "loss gradient");
    int32_t *labels = m_new(int32_t, out->shape.dim[0]);
    float value = loss->compute(out, target, (*grad)->data, labels);
    m_del(int32_t, labels, out->shape.dim[0]);
    return value;
}

// loss(output, target) -> mean loss
static mp_obj_t loss_call(mp_obj_t self_in, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 2, 2, false);
    const mt_loss_obj_t *loss = MP_OBJ_TO_PTR(self_in);
    mt_tensor_obj_t *grad;
    float value = call_loss(loss, mt_tensor_get_f32(args[0], "loss: output"), args[1], &grad);
    m_del_obj(mt_tensor_obj_t, grad);
    return mp_obj_new_float_from_f(value);
}

// loss.backward(output, target) -> gradient of the mean loss with respect to output
static mp_obj_t loss_backward(mp_obj_t self_in, mp_obj_t out_in, mp_obj_t target) {
    const mt_loss_obj_t *loss = MP_OBJ_TO_PTR(self_in);
    mt_tensor_obj_t *grad;
    call_loss(loss, mt_tensor_get_f32(out_in, "loss: output"), target, &grad);
    return MP_OBJ_FROM_PTR(grad);
}
static MP_DEFINE_CONST_FUN_OBJ_3(loss_backward_obj, loss_backward);

static void loss_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    const mt_loss_obj_t *loss = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "<loss %q>", loss->name);
}

static const mp_rom_map_elem_t loss_locals_dict_table[] = {
    { MP_ROM_QSTR(MP_QSTR_backward), MP_ROM_PTR(&loss_backward_obj) },
};
static MP_DEFINE_CONST_DICT(loss_locals_dict, loss_locals_dict_table);

MP_DEFINE_CONST_OBJ_TYPE(
    mt_loss_type,
    MP_QSTR_Loss,
    MP_TYPE_FLAG_NONE,
    call, loss_call,
    print, loss_print,
    locals_dict, &loss_locals_dict
    );

const mt_loss_obj_t mt_cross_entropy_obj = {
    { &mt_loss_type }, MP_QSTR_cross_entropy, true, cross_entropy_compute,
};
const mt_loss_obj_t mt_mse_obj = {
    { &mt_loss_type }, MP_QSTR_mse, false, mse_compute,
};
