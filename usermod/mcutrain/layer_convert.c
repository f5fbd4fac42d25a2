// mt.Convert(dtype): converts activations to `dtype` and, in backward, errors back to the
// input's dtype, so float32 data can feed a float16 or int8 model and the model can end in
// float32 logits: Sequential(mt.Convert(mt.float16), ..float16 layers.., mt.Convert(mt.float32)).
// Conversions:
// - float32 <-> float16: nearest even (kernels/half.h);
// - float32 -> int8: quantized (nearest even, saturating) with a scale and zero point from a
//   moving average of the input's range (layer_s8.h; updated in training passes, and by the
//   first pass whatever it is); errors come back dequantized;
// - int8 -> float32: dequantized; errors go back as symmetric int8 with the scale of their
//   largest magnitude;
// - the same dtype copies.
#include <string.h>

#include "py/runtime.h"
#include "layer.h"
#include "layer_s8.h"
#include "kernels/half.h"
#include "kernels/quant.h"
#include "kernels/vector_f32.h"

typedef struct {
    mt_layer_obj_t base;
    mt_range_tracker_t range;   // float32 -> int8: the input's range
} mt_convert_obj_t;

static bool convertible(uint8_t from, uint8_t to) {
    return from == to || ((MT_DTYPES_FLOAT & MT_DTYPE_BIT(from)) && (MT_DTYPES_FLOAT & MT_DTYPE_BIT(to)))
           || (from == MT_FLOAT32 && to == MT_INT8) || (from == MT_INT8 && to == MT_FLOAT32);
}

static void convert_plan(mt_layer_obj_t *self, const mt_shape_t *in) {
    if (!convertible(self->in_dtype, self->dtype)) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("Convert: cannot convert %q to %q yet"),
            mt_dtype_qstr(self->in_dtype), mt_dtype_qstr(self->dtype));
    }
    self->out_shape = *in;
    self->out_dtype = self->dtype;
}

NORETURN static void raise_range(void) {
    mp_raise_ValueError(MP_ERROR_TEXT("Convert: the range to quantize is not finite"));
}

// dst = src converted, n elements; an int8 dst gets its scale and zero point here
// (symmetric from src's largest magnitude if sym, else from the tracked range).
static void convert(const mt_tensor_obj_t *src, mt_tensor_obj_t *dst, size_t n, bool sym,
    const mt_range_tracker_t *range) {
    uint8_t from = src->dtype, to = dst->dtype;
    if (from == to) {
        memcpy(dst->data, src->data, n * mt_dtype_size(to));
        dst->scale = src->scale;
        dst->zero_point = src->zero_point;
    } else if (to == MT_INT8) {
        mt_qparams_t qp;
        int bad = sym ? mt_qparams_symmetric(mt_absmax_f32(src->data, n), &qp)
                      : mt_qparams_asymmetric(range->min, range->max, &qp);
        if (bad) {
            raise_range();
        }
        mt_quantize_s8(src->data, dst->data, n, qp, sym ? -MT_S8_SYM_MAX : MT_S8_ACT_MIN, MT_S8_ACT_MAX, NULL);
        dst->scale = qp.scale;
        dst->zero_point = qp.zero_point;
    } else if (from == MT_INT8) {
        mt_qparams_t qp = { src->scale, src->zero_point };
        mt_dequantize_s8(src->data, dst->data, n, qp);
    } else if (from == MT_FLOAT32) {
        mt_f32_to_f16_array(src->data, dst->data, n);
    } else {
        mt_f16_to_f32_array(src->data, dst->data, n);
    }
}

static void convert_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_convert_obj_t *self = (mt_convert_obj_t *)self_in;
    size_t n = self_in->output->size;
    if (self_in->out_dtype == MT_INT8 && self_in->in_dtype == MT_FLOAT32 && (pass->training || self->range.count == 0)) {
        float lo, hi;
        mt_minmax_f32(x->data, n, &lo, &hi);
        mt_range_observe(&self->range, lo, hi, MT_S8_RANGE_MOMENTUM);
        if (self->range.count == 0) {
            raise_range();  // the first batch had inf or NaN: no range to quantize with
        }
    }
    convert(x, self_in->output, n, false, &self->range);
}

static void convert_backward(mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    (void)x;
    (void)pass;
    if (dx != NULL) {
        convert(dy, dx, self->output->size, true, NULL);
    }
}

static mp_obj_t convert_config(const mt_layer_obj_t *self) {
    mp_obj_t dict = mt_new_ordered_dict(1);
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_dtype), MP_OBJ_NEW_QSTR(mt_dtype_qstr(self->dtype)));
    return dict;
}

static const mt_layer_ops_t convert_ops = {
    .magic = MT_LAYER_MAGIC,
    .flags = MT_LAYER_CONVERTS,
    .dtypes = 0xff,
    .plan = convert_plan,
    .forward = convert_forward,
    .backward = convert_backward,
    .config = convert_config,
};

static mp_obj_t convert_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_dtype };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_dtype, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mt_convert_obj_t *self = mp_obj_malloc(mt_convert_obj_t, type);
    mt_layer_init(&self->base);
    self->base.dtype = mt_dtype_from_obj(args[ARG_dtype].u_obj);  // every dtype, None is an error
    self->range.count = 0;
    if (self->base.dtype == MT_INT8) {
        self->base.quant_range = &self->range;  // the float input's range it quantizes from
    }
    return MP_OBJ_FROM_PTR(self);
}

static void convert_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_convert_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "Convert(%q)", mt_dtype_qstr(self->base.dtype));
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_convert_type,
    MP_QSTR_Convert,
    MP_TYPE_FLAG_NONE,
    make_new, convert_make_new,
    print, convert_print,
    call, mt_layer_call,
    attr, mt_layer_attr,
    protocol, &convert_ops,
    locals_dict, &mt_layer_locals_dict
    );
