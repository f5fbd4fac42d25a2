// mt.cross_entropy and mt.mse, and the Loss type every loss object (also
// mt.distillation's) has: usable in train_step, also callable directly.
#include "py/runtime.h"
#include "py/binary.h"
#include "loss.h"
#include "kernels/loss_f32.h"
#include "kernels/half.h"
#include "kernels/quant.h"
#include "kernels/vector_f32.h"

// labels[i] = label, checked as a Python int before it is narrowed (2**32 + 1 is not 1).
static void set_label(int32_t *labels, int i, mp_obj_t label, int classes) {
    mp_int_t v;
    if (!mt_int_get_in_range(label, 0, classes - 1, &v)) {
        vstr_t text;
        mp_print_t print;
        vstr_init_print(&text, 16, &print);
        mp_obj_print_helper(&print, label, PRINT_STR);
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("label %s is outside [0, %d)"),
            vstr_null_terminated_str(&text), classes);
    }
    labels[i] = (int32_t)v;
}

// A float16 Tensor's buffer holds raw 16-bit words: never labels.
static bool is_float_tensor(mp_obj_t obj) {
    return mp_obj_is_type(obj, &mt_tensor_type) && ((mt_tensor_obj_t *)MP_OBJ_TO_PTR(obj))->dtype != MT_INT8;
}

void mt_labels_from_obj(mp_obj_t obj, int32_t *labels, int n, int classes) {
    mp_buffer_info_t info;
    if (mp_obj_is_int(obj)) {
        if (n != 1) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("labels: one int for a batch of %d"), n);
        }
        set_label(labels, 0, obj, classes);
    } else if (mp_obj_is_type(obj, &mp_type_list) || mp_obj_is_type(obj, &mp_type_tuple)) {
        size_t len;
        mp_obj_t *items;
        mp_obj_get_array(obj, &len, &items);
        if ((int)len != n) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("labels: %d given for a batch of %d"), (int)len, n);
        }
        for (int i = 0; i < n; i++) {
            set_label(labels, i, items[i], classes);
        }
    } else if (obj != mp_const_none && !is_float_tensor(obj) && mp_get_buffer(obj, &info, MP_BUFFER_READ)
               && info.typecode != 'f' && info.typecode != 'd') {
        size_t item = mp_binary_get_size('@', info.typecode, NULL);
        if ((int)(info.len / item) != n) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("labels: %d given for a batch of %d"), (int)(info.len / item), n);
        }
        for (int i = 0; i < n; i++) {
            set_label(labels, i, mp_binary_get_val_array(info.typecode, info.buf, i), classes);
        }
    } else {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("labels must be an int, a list of ints or an int array, not %s"),
            mp_obj_get_type_str(obj));
    }
}

static float cross_entropy_compute(const mt_loss_obj_t *self, const mt_tensor_obj_t *out, mp_obj_t target, float *dout, int32_t *labels) {
    (void)self;
    int rows = out->shape.dim[0];
    int classes = (int)(out->size / (size_t)rows);
    mt_labels_from_obj(target, labels, rows, classes);
    return mt_cross_entropy_f32(out->data, labels, rows, classes, dout);
}

static mt_tensor_obj_t *mse_target(const mt_tensor_obj_t *out, mp_obj_t target);

static float mse_compute(const mt_loss_obj_t *self, const mt_tensor_obj_t *out, mp_obj_t target, float *dout,
    int32_t *labels) {
    (void)self;
    (void)labels;
    return mt_mse_f32(out->data, mse_target(out, target)->data, (int)out->size, dout);
}

/******************************************************************************/
// float16 and int8 outputs: the fp32 losses on chunks widened into a small buffer, so a
// large output needs no fp32 copy.

#define LOSS_CHUNK (256)

size_t mt_loss_buf_floats(const mt_shape_t *out) {
    size_t n = mt_shape_size(out), row = n / (size_t)out->dim[0];
    size_t chunk = n < LOSS_CHUNK ? n : LOSS_CHUNK;
    return out->ndim == 2 && row > chunk ? row : chunk;
}

static void widen(const mt_tensor_obj_t *t, size_t at, size_t n, float *buf) {
    if (t->dtype == MT_FLOAT16) {
        mt_f16_to_f32_array((const uint16_t *)t->data + at, buf, n);
    } else {
        mt_qparams_t qp = { t->scale, t->zero_point };
        mt_dequantize_s8((const int8_t *)t->data + at, buf, n, qp);
    }
}

static void narrow(const float *buf, size_t n, mt_tensor_obj_t *t, size_t at) {
    if (t->dtype == MT_FLOAT16) {
        mt_f32_to_f16_array(buf, (uint16_t *)t->data + at, n);
    } else {
        mt_qparams_t qp = { t->scale, 0 };
        mt_quantize_s8(buf, (int8_t *)t->data + at, n, qp, -MT_S8_SYM_MAX, MT_S8_SYM_MAX, NULL);
    }
}

// An int8 gradient takes two passes: its scale comes from the whole gradient's largest
// magnitude.
float mt_loss_run_chunks(const mt_tensor_obj_t *out, mt_tensor_obj_t *dout, float *buf, size_t chunk,
    mt_loss_chunk_fn_t fn, const void *ctx) {
    float absmax = 0.0f;
    bool two_pass = dout != NULL && dout->dtype == MT_INT8;
    float loss = 0.0f;
    for (int pass = two_pass ? 0 : 1; pass < 2; pass++) {
        loss = 0.0f;
        for (size_t at = 0; at < out->size; at += chunk) {
            size_t n = out->size - at < chunk ? out->size - at : chunk;
            widen(out, at, n, buf);
            loss += fn(ctx, buf, at, n, dout != NULL);
            if (dout == NULL) {
                continue;
            }
            if (pass == 0) {
                float m = mt_absmax_f32(buf, n);
                absmax = m > absmax ? m : absmax;
            } else {
                narrow(buf, n, dout, at);
            }
        }
        if (pass == 0) {
            mt_qparams_t qp;
            // A gradient below the smallest int8 step (a sample learnt so well that the
            // softmax underflows) quantizes to zeros; do not ask for an unusable scale.
            if (absmax < 127.0f * MT_QUANT_MIN_SCALE) {
                absmax = 0.0f;
            }
            if (mt_qparams_symmetric(absmax, &qp) != 0) {
                mp_raise_ValueError(MP_ERROR_TEXT("loss: the gradient is not finite"));
            }
            dout->scale = qp.scale;
            dout->zero_point = 0;
        }
    }
    return loss;
}

typedef struct {
    const int32_t *labels;
    int rows, classes;
} ce_ctx_t;

static float ce_chunk(const void *ctx_in, float *buf, size_t at, size_t n, bool grad) {
    const ce_ctx_t *ctx = ctx_in;
    size_t r = at / (size_t)ctx->classes;
    float loss = mt_cross_entropy_f32(buf, ctx->labels + r, 1, (int)n, grad ? buf : NULL);
    float inv_rows = 1.0f / (float)ctx->rows;
    if (grad) {
        mt_scale_f32(buf, n, inv_rows);
    }
    return loss * inv_rows;
}

static float cross_entropy_narrow(const mt_loss_obj_t *self, const mt_tensor_obj_t *out, mp_obj_t target,
    mt_tensor_obj_t *dout, int32_t *labels, float *buf) {
    (void)self;
    ce_ctx_t ctx = { labels, out->shape.dim[0], (int)(out->size / (size_t)out->shape.dim[0]) };
    mt_labels_from_obj(target, labels, ctx.rows, ctx.classes);
    return mt_loss_run_chunks(out, dout, buf, (size_t)ctx.classes, ce_chunk, &ctx);
}

typedef struct {
    const float *target;
    size_t size;
} mse_ctx_t;

static float mse_chunk(const void *ctx_in, float *buf, size_t at, size_t n, bool grad) {
    const mse_ctx_t *ctx = ctx_in;
    // mt_mse_f32 gives the chunk's mean and 2 d / n: rescale both to the whole output's.
    float share = (float)n / (float)ctx->size;
    float loss = mt_mse_f32(buf, ctx->target + at, (int)n, grad ? buf : NULL);
    if (grad) {
        mt_scale_f32(buf, n, share);
    }
    return loss * share;
}

// The target has the output's shape, or that shape without a batch of one (as an input
// may): another shape of the same size would pair the wrong values silently.
static bool mse_shape_matches(const mt_shape_t *target, const mt_shape_t *out) {
    if (mt_shape_equal(target, out)) {
        return true;
    }
    if (out->ndim != target->ndim + 1 || out->dim[0] != 1) {
        return false;
    }
    for (int i = 0; i < target->ndim; i++) {
        if (target->dim[i] != out->dim[i + 1]) {
            return false;
        }
    }
    return true;
}

static mt_tensor_obj_t *mse_target(const mt_tensor_obj_t *out, mp_obj_t target) {
    mt_tensor_obj_t *t = mt_tensor_get_f32(target, "mse: target");
    if (!mse_shape_matches(&t->shape, &out->shape)) {
        char a[64], b[64];
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("mse: target shape %s, output shape %s"),
            mt_shape_str(&t->shape, a, sizeof(a)), mt_shape_str(&out->shape, b, sizeof(b)));
    }
    return t;
}

static float mse_narrow(const mt_loss_obj_t *self, const mt_tensor_obj_t *out, mp_obj_t target,
    mt_tensor_obj_t *dout, int32_t *labels, float *buf) {
    (void)self;
    (void)labels;
    mse_ctx_t ctx = { mse_target(out, target)->data, out->size };
    return mt_loss_run_chunks(out, dout, buf, mt_loss_buf_floats(&out->shape), mse_chunk, &ctx);
}

const mt_loss_obj_t *mt_loss_get(mp_obj_t obj) {
    if (!mp_obj_is_type(obj, &mt_loss_type)) {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("loss must be mt.cross_entropy, mt.mse or mt.distillation(...), not %s"), mp_obj_get_type_str(obj));
    }
    return MP_OBJ_TO_PTR(obj);
}

// Scratch for a direct call: the gradient and labels of `out`, freed right after.
static float call_loss(const mt_loss_obj_t *loss, const mt_tensor_obj_t *out, mp_obj_t target, mt_tensor_obj_t **grad) {
    if (out->shape.ndim != 2 && loss->takes_labels) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%q: output must be (batch, classes)"), loss->name);
    }
    *grad = mt_tensor_new(&out->shape, MT_FLOAT32, "loss gradient");
    int32_t *labels = m_new(int32_t, out->shape.dim[0]);
    float value = loss->compute(loss, out, target, (*grad)->data, labels);
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
    mp_printf(print, "<loss %q", loss->name);
    if (loss->print_params != NULL) {
        loss->print_params(loss, print);
    }
    mp_printf(print, ">");
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
    { &mt_loss_type }, MP_QSTR_cross_entropy, true, cross_entropy_compute, cross_entropy_narrow, NULL,
};
const mt_loss_obj_t mt_mse_obj = {
    { &mt_loss_type }, MP_QSTR_mse, false, mse_compute, mse_narrow, NULL,
};
