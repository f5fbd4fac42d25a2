// mt.distillation(temperature, alpha): a loss object for train_step whose target is
// (labels, teacher), teacher the teacher model's logits, a Tensor (batch, classes) of
// float32 or float16 (as mt.Dataset(..., teacher=True) gives them).
#include <math.h>

#include "py/runtime.h"
#include "loss.h"
#include "kernels/distill_f32.h"
#include "kernels/half.h"

typedef struct {
    mt_loss_obj_t base;
    mt_distill_params_t params;
} mt_distill_obj_t;

// float16 teacher logits are widened this many at a time on the stack: no buffer to plan.
#define TEACHER_SPAN (32)

// The target's teacher Tensor, checked against the output (batch, classes); its labels
// go into labels[batch].
static const mt_tensor_obj_t *distill_target(const mt_tensor_obj_t *out, mp_obj_t target, int32_t *labels) {
    if (!mp_obj_is_type(target, &mp_type_tuple) && !mp_obj_is_type(target, &mp_type_list)) {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("distillation: target must be (labels, teacher logits), not %s"), mp_obj_get_type_str(target));
    }
    size_t len;
    mp_obj_t *items;
    mp_obj_get_array(target, &len, &items);
    if (len != 2) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("distillation: target must be (labels, teacher logits), got %d items"), (int)len);
    }
    mt_tensor_obj_t *teacher = mt_tensor_get(items[1], "distillation: teacher logits");
    if (teacher->dtype != MT_FLOAT32 && teacher->dtype != MT_FLOAT16) {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("distillation: teacher logits must be float32 or float16, not %q"), mt_dtype_qstr(teacher->dtype));
    }
    if (!mt_shape_equal(&teacher->shape, &out->shape)) {
        char a[64], b[64];
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("distillation: teacher logits have shape %s, the output %s"),
            mt_shape_str(&teacher->shape, a, sizeof(a)), mt_shape_str(&out->shape, b, sizeof(b)));
    }
    mt_labels_from_obj(items[0], labels, out->shape.dim[0], out->shape.dim[1]);
    return teacher;
}

// n teacher logits from index at: float32 ones in place, float16 ones widened into tmp.
static const float *teacher_span(const mt_tensor_obj_t *teacher, size_t at, int n, float *tmp) {
    if (teacher->dtype == MT_FLOAT32) {
        return (const float *)teacher->data + at;
    }
    mt_f16_to_f32_array((const uint16_t *)teacher->data + at, tmp, (size_t)n);
    return tmp;
}

// One row's loss from its student logits s (fp32), the teacher's row starting at index
// row_at; with ds (which may be s), the row's gradient of the batch mean (scale = 1 / rows).
static float distill_row(const mt_distill_params_t *p, const float *s, const mt_tensor_obj_t *teacher,
    size_t row_at, int classes, int label, float scale, float *ds) {
    float tmp[TEACHER_SPAN];
    int span = teacher->dtype == MT_FLOAT32 ? classes : TEACHER_SPAN;
    mt_distill_row_t row;
    mt_distill_row_begin(&row);
    for (int at = 0; at < classes; at += span) {
        int n = classes - at < span ? classes - at : span;
        mt_distill_row_max_f32(&row, s + at, teacher_span(teacher, row_at + (size_t)at, n, tmp), n);
    }
    for (int at = 0; at < classes; at += span) {
        int n = classes - at < span ? classes - at : span;
        mt_distill_row_sums_f32(&row, p, s + at, teacher_span(teacher, row_at + (size_t)at, n, tmp), n);
    }
    for (int at = 0; at < classes; at += span) {
        int n = classes - at < span ? classes - at : span;
        mt_distill_row_finish_f32(&row, p, s + at, teacher_span(teacher, row_at + (size_t)at, n, tmp), at, n, label,
            scale, ds ? ds + at : NULL);
    }
    return mt_distill_row_loss(&row, p);
}

static float distill_compute(const mt_loss_obj_t *self, const mt_tensor_obj_t *out, mp_obj_t target, float *dout,
    int32_t *labels) {
    const mt_distill_params_t *p = &((const mt_distill_obj_t *)self)->params;
    const mt_tensor_obj_t *teacher = distill_target(out, target, labels);
    int rows = out->shape.dim[0], classes = out->shape.dim[1];
    float inv_rows = 1.0f / (float)rows, loss = 0.0f;
    for (int r = 0; r < rows; r++) {
        size_t at = (size_t)r * (size_t)classes;
        loss += distill_row(p, (const float *)out->data + at, teacher, at, classes, labels[r], inv_rows,
            dout ? dout + at : NULL);
    }
    return loss * inv_rows;
}

typedef struct {
    const mt_distill_params_t *params;
    const mt_tensor_obj_t *teacher;
    const int32_t *labels;
    int rows, classes;
} distill_ctx_t;

// A row of a float16 or int8 output, widened into buf (chunks are rows: mt_loss_buf_floats).
static float distill_chunk(const void *ctx_in, float *buf, size_t at, size_t n, bool grad) {
    const distill_ctx_t *ctx = ctx_in;
    (void)n;
    float inv_rows = 1.0f / (float)ctx->rows;
    int label = ctx->labels[at / (size_t)ctx->classes];
    return distill_row(ctx->params, buf, ctx->teacher, at, ctx->classes, label, inv_rows, grad ? buf : NULL) * inv_rows;
}

static float distill_narrow(const mt_loss_obj_t *self, const mt_tensor_obj_t *out, mp_obj_t target,
    mt_tensor_obj_t *dout, int32_t *labels, float *buf) {
    distill_ctx_t ctx = { &((const mt_distill_obj_t *)self)->params, distill_target(out, target, labels), labels,
                          out->shape.dim[0], out->shape.dim[1] };
    return mt_loss_run_chunks(out, dout, buf, (size_t)ctx.classes, distill_chunk, &ctx);
}

static void distill_print_params(const mt_loss_obj_t *self, const mp_print_t *print) {
    const mt_distill_params_t *p = &((const mt_distill_obj_t *)self)->params;
    mp_printf(print, " temperature=%g alpha=%g", (double)p->temperature, (double)p->alpha);
}

// mt.distillation(temperature=4.0, alpha=0.5) -> a Loss: alpha weighs the hard-label
// cross-entropy, 1 - alpha the teacher's softened targets.
static mp_obj_t distillation(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_temperature, ARG_alpha };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_temperature, MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_alpha, MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args, pos_args, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mt_distill_params_t params = { 4.0f, 0.5f };
    if (args[ARG_temperature].u_obj != MP_OBJ_NULL) {
        params.temperature = mp_obj_get_float_to_f(args[ARG_temperature].u_obj);
    }
    if (args[ARG_alpha].u_obj != MP_OBJ_NULL) {
        params.alpha = mp_obj_get_float_to_f(args[ARG_alpha].u_obj);
    }
    // NaN fails every comparison, so these reject it too.
    if (!(params.temperature > 0.0f && params.temperature <= 3.0e38f)) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("distillation: temperature must be positive and finite, not %g"), (double)params.temperature);
    }
    if (!(params.alpha >= 0.0f && params.alpha <= 1.0f)) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("distillation: alpha must be in [0, 1], not %g"), (double)params.alpha);
    }
    mt_distill_obj_t *self = m_new_obj(mt_distill_obj_t);
    self->base = (mt_loss_obj_t) {
        { &mt_loss_type }, MP_QSTR_distillation, true, distill_compute, distill_narrow, distill_print_params,
    };
    self->params = params;
    return MP_OBJ_FROM_PTR(self);
}
MP_DEFINE_CONST_FUN_OBJ_KW(mt_distillation_obj, 0, distillation);
