// mt.ReLU(), mt.ReLU6() and mt.Softmax() (over the last dimension), in their input's dtype.
// ReLU and ReLU6 run in place when the layer before them does not need its output kept, and
// a Sequential folds them into a Conv or Linear layer before them (mt_act_fold): then their
// forward (and, unless they end the Sequential, their backward) costs nothing of its own.
// int8 Softmax (kernels/softmax_s8.h) outputs scale 1/256, zero point -128, and quantizes its
// input error to a tracked symmetric scale (momentum MT_S8_RANGE_MOMENTUM, as layer_s8.c).
#include "py/runtime.h"
#include "layer.h"
#include "layer_s8.h"
#include "kernels/activation_f32.h"
#include "kernels/activation_f16.h"
#include "kernels/activation_s8.h"
#include "kernels/quant.h"
#include "kernels/softmax_s8.h"

typedef struct {
    mt_layer_obj_t base;
} mt_activation_obj_t;

typedef struct {
    mt_layer_obj_t base;
    mt_range_tracker_t dx_range;   // int8: the input error's magnitude, relative (layer_s8.h)
} mt_softmax_obj_t;

static void same_shape_plan(mt_layer_obj_t *self, const mt_shape_t *in) {
    self->out_shape = *in;
}

static bool is_f16(const mt_layer_obj_t *self) {
    return self->in_dtype == MT_FLOAT16;
}

// int8: the clamp [lo, hi] of the integers that is ReLU (six: ReLU6) in the tensor's
// quantization (kernels/activation_s8.h); hi = 128 for ReLU lets saturated outputs pass
// their error.
static void s8_bounds(float scale, int32_t zero_point, bool six, int32_t *lo, int32_t *hi) {
    *lo = zero_point;
    *hi = 128;
    if (six) {
        int32_t top = zero_point + mt_round_half_even(6.0f / scale);
        *hi = top < MT_S8_ACT_MAX ? top : MT_S8_ACT_MAX;
    }
}

static void s8_forward(mt_layer_obj_t *self, const mt_tensor_obj_t *x, bool six) {
    int32_t lo, hi;
    s8_bounds(x->scale, x->zero_point, six, &lo, &hi);
    self->output->scale = x->scale;
    self->output->zero_point = x->zero_point;
    mt_clamp_s8_forward(x->data, self->output->data, self->output->size, lo, hi > MT_S8_ACT_MAX ? MT_S8_ACT_MAX : hi);
}

static void s8_backward(mt_layer_obj_t *self, const mt_tensor_obj_t *dy, mt_tensor_obj_t *dx, bool six) {
    int32_t lo, hi;
    s8_bounds(self->output->scale, self->output->zero_point, six, &lo, &hi);
    mt_clamp_s8_grad_input(self->output->data, dy->data, dx->data, self->output->size, lo, hi);
    dx->scale = dy->scale;
    dx->zero_point = 0;
}

// ReLU and ReLU6 clamp their input, to [0, inf) or [0, 6]; they differ only in the kernels.
typedef struct {
    void (*f32_forward)(const float *x, float *y, size_t n);
    void (*f32_grad_input)(const float *y, const float *dy, float *dx, size_t n);
    void (*f16_forward)(const uint16_t *x, uint16_t *y, size_t n);
    void (*f16_grad_input)(const uint16_t *y, const uint16_t *dy, uint16_t *dx, size_t n);
} clamp_kernels_t;

static const clamp_kernels_t clamp_kernels[2] = {
    { mt_relu_f32_forward, mt_relu_f32_grad_input, mt_relu_f16_forward, mt_relu_f16_grad_input },
    { mt_relu6_f32_forward, mt_relu6_f32_grad_input, mt_relu6_f16_forward, mt_relu6_f16_grad_input },
};

static bool is_relu6(const mt_layer_obj_t *self) {
    return self->base.type->name == MP_QSTR_ReLU6;
}

static void clamp_forward(mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    (void)pass;
    if (self->act_folded) {
        return;  // the layer before clamped its output, which is ours (in place)
    }
    const clamp_kernels_t *k = &clamp_kernels[is_relu6(self)];
    if (self->in_dtype == MT_INT8) {
        s8_forward(self, x, is_relu6(self));
    } else if (is_f16(self)) {
        k->f16_forward(x->data, self->output->data, self->output->size);
    } else {
        k->f32_forward(x->data, self->output->data, self->output->size);
    }
}

static void clamp_backward(mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    (void)x;
    (void)pass;
    if (dx == NULL) {
        return;
    }
    const clamp_kernels_t *k = &clamp_kernels[is_relu6(self)];
    if (self->in_dtype == MT_INT8) {
        s8_backward(self, dy, dx, is_relu6(self));
    } else if (is_f16(self)) {
        k->f16_grad_input(self->output->data, dy->data, dx->data, self->output->size);
    } else {
        k->f32_grad_input(self->output->data, dy->data, dx->data, self->output->size);
    }
}

/******************************************************************************/
// Folding into the layer before (layer.h)

static uint8_t act_kind(const mt_layer_obj_t *layer) {
    qstr name = mt_layer_name(layer);
    return name == MP_QSTR_ReLU ? MT_ACT_RELU : name == MP_QSTR_ReLU6 ? MT_ACT_RELU6 : MT_ACT_NONE;
}

bool mt_act_can_fold(const mt_layer_obj_t *producer, const mt_layer_obj_t *act) {
    qstr name = mt_layer_name(producer);
    // In place: the activation's output is the producer's, clamped where it lies.
    return act_kind(act) != MT_ACT_NONE && act->in_place
           && (name == MP_QSTR_Conv2d || name == MP_QSTR_Conv1d || name == MP_QSTR_Linear)
           && producer->out_dtype == act->in_dtype;
}

void mt_act_fold(mt_layer_obj_t *producer, mt_layer_obj_t *act, bool masks_dy) {
    producer->act = act_kind(act);
    producer->act_masks_dy = masks_dy;
    act->act_folded = true;
}

void mt_act_s8_bounds(const mt_layer_obj_t *layer, float y_scale, int32_t y_zp, int32_t *lo, int32_t *hi) {
    *lo = MT_S8_ACT_MIN;
    *hi = MT_S8_ACT_MAX;
    if (layer->act == MT_ACT_NONE || layer->out_dtype != MT_INT8) {
        return;  // mixed layers clamp their float output (mt_act_forward): ReLU6's 6 is exact there
    }
    s8_bounds(y_scale, y_zp, layer->act == MT_ACT_RELU6, lo, hi);
    *hi = *hi > MT_S8_ACT_MAX ? MT_S8_ACT_MAX : *hi;
}

void mt_act_forward(mt_layer_obj_t *producer) {
    mt_tensor_obj_t *y = producer->output;
    const clamp_kernels_t *k = &clamp_kernels[producer->act == MT_ACT_RELU6];
    if (producer->out_dtype == MT_FLOAT16) {
        k->f16_forward(y->data, y->data, y->size);
    } else if (producer->out_dtype == MT_FLOAT32) {
        k->f32_forward(y->data, y->data, y->size);
    }
    // int8: clamped by the kernels (mt_act_s8_bounds).
}

void mt_act_mask_dy(mt_layer_obj_t *producer, mt_tensor_obj_t *dy) {
    const mt_tensor_obj_t *y = producer->output;
    const clamp_kernels_t *k = &clamp_kernels[producer->act == MT_ACT_RELU6];
    if (producer->out_dtype == MT_INT8) {
        int32_t lo, hi;
        s8_bounds(y->scale, y->zero_point, producer->act == MT_ACT_RELU6, &lo, &hi);
        mt_clamp_s8_grad_input(y->data, dy->data, dy->data, y->size, lo, hi);
    } else if (producer->out_dtype == MT_FLOAT16) {
        k->f16_grad_input(y->data, dy->data, dy->data, y->size);
    } else {
        k->f32_grad_input(y->data, dy->data, dy->data, y->size);
    }
}

static int softmax_cols(const mt_layer_obj_t *self) {
    return self->out_shape.dim[self->out_shape.ndim - 1];
}

static void softmax_plan(mt_layer_obj_t *self, const mt_shape_t *in) {
    self->out_shape = *in;
    if (self->in_dtype == MT_INT8 && in->dim[in->ndim - 1] > MT_SOFTMAX_S8_MAX_COLS) {
        mt_layer_raise_expects(self, "int8 takes at most %d classes", MT_SOFTMAX_S8_MAX_COLS, in);
    }
}

static size_t softmax_scratch_floats(const mt_layer_obj_t *self) {
    // int8: one row's exponentials.
    return self->in_dtype == MT_INT8 ? (size_t)softmax_cols(self) : 0;
}

// dx from dy (int8) and the layer's int8 output, to the tracked error scale.
static void softmax_backward_s8(mt_softmax_obj_t *self, const mt_tensor_obj_t *dy, mt_tensor_obj_t *dx) {
    mt_layer_obj_t *base = &self->base;
    int cols = softmax_cols(base), rows = (int)(base->output->size / (size_t)cols);
    const int8_t *y = base->output->data;
    // acc units: s_dy / 65536 (a power of two: exact).
    const float unit = dy->scale * (1.0f / 65536.0f);
    float absmax = (float)mt_softmax_s8_grad_absmax(y, dy->data, rows, cols) * unit;
    bool observed = false;
    if (self->dx_range.count == 0) {
        mt_s8_error_observe(&self->dx_range, absmax, dy->scale);
        observed = true;
    }
    mt_qparams_t qp;
    mt_requant_t m;
    if (mt_qparams_symmetric(mt_s8_error_absmax(&self->dx_range, dy->scale), &qp) != 0
        || mt_quant_multiplier(unit / qp.scale, &m) != 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("Softmax: int8 input gradient: a quantization scale is out of range"));
    }
    mt_softmax_s8_grad_input(y, dy->data, dx->data, rows, cols, m);
    // An all-zero error says nothing about the range (layer_s8.c).
    if (!observed && absmax > 0.0f) {
        mt_s8_error_observe(&self->dx_range, absmax, dy->scale);
    }
    dx->scale = qp.scale;
    dx->zero_point = 0;
}

static void softmax_forward(mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    int cols = softmax_cols(self), rows = (int)(self->output->size / (size_t)cols);
    if (self->in_dtype == MT_INT8) {
        mt_softmax_s8_forward(x->data, x->scale, self->output->data, rows, cols, pass->scratch);
        self->output->scale = MT_SOFTMAX_S8_SCALE;
        self->output->zero_point = MT_SOFTMAX_S8_ZERO_POINT;
    } else if (is_f16(self)) {
        mt_softmax_f16_forward(x->data, self->output->data, rows, cols);
    } else {
        mt_softmax_f32_forward(x->data, self->output->data, rows, cols);
    }
}

static void softmax_backward(mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    (void)x;
    (void)pass;
    if (dx == NULL) {
        return;
    }
    int cols = softmax_cols(self), rows = (int)(self->output->size / (size_t)cols);
    if (self->in_dtype == MT_INT8) {
        softmax_backward_s8((mt_softmax_obj_t *)self, dy, dx);
    } else if (is_f16(self)) {
        mt_softmax_f16_grad_input(self->output->data, dy->data, dx->data, rows, cols);
    } else {
        mt_softmax_f32_grad_input(self->output->data, dy->data, dx->data, rows, cols);
    }
}

static const mt_layer_ops_t relu_ops = {
    .magic = MT_LAYER_MAGIC,
    .flags = MT_LAYER_MAY_RUN_IN_PLACE | MT_LAYER_NEEDS_OUTPUT,
    .dtypes = MT_DTYPES_FLOAT | MT_DTYPE_BIT(MT_INT8),
    .plan = same_shape_plan,
    .forward = clamp_forward,
    .backward = clamp_backward,
};

static const mt_layer_ops_t relu6_ops = {
    .magic = MT_LAYER_MAGIC,
    .flags = MT_LAYER_MAY_RUN_IN_PLACE | MT_LAYER_NEEDS_OUTPUT,
    .dtypes = MT_DTYPES_FLOAT | MT_DTYPE_BIT(MT_INT8),
    .plan = same_shape_plan,
    .forward = clamp_forward,
    .backward = clamp_backward,
};

static const mt_layer_ops_t softmax_ops = {
    .magic = MT_LAYER_MAGIC,
    .flags = MT_LAYER_NEEDS_OUTPUT,
    .dtypes = MT_DTYPES_FLOAT | MT_DTYPE_BIT(MT_INT8),
    .plan = softmax_plan,
    .scratch_floats = softmax_scratch_floats,
    .forward = softmax_forward,
    .backward = softmax_backward,
};

static mp_obj_t activation_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    mt_activation_obj_t *self = mp_obj_malloc(mt_activation_obj_t, type);
    mt_layer_init(&self->base);
    self->base.dtype = mt_layer_parse_any_dtype(n_args, n_kw, args, qstr_str(type->name));
    return MP_OBJ_FROM_PTR(self);
}

static mp_obj_t softmax_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    mt_softmax_obj_t *self = mp_obj_malloc(mt_softmax_obj_t, type);
    mt_layer_init(&self->base);
    self->base.dtype = mt_layer_parse_any_dtype(n_args, n_kw, args, qstr_str(type->name));
    self->dx_range.count = 0;
    return MP_OBJ_FROM_PTR(self);
}

static void activation_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_layer_print_simple(print, MP_OBJ_TO_PTR(self_in));
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_relu_type,
    MP_QSTR_ReLU,
    MP_TYPE_FLAG_NONE,
    make_new, activation_make_new,
    print, activation_print,
    call, mt_layer_call,
    attr, mt_layer_attr,
    protocol, &relu_ops,
    locals_dict, &mt_layer_locals_dict
    );

MP_DEFINE_CONST_OBJ_TYPE(
    mt_relu6_type,
    MP_QSTR_ReLU6,
    MP_TYPE_FLAG_NONE,
    make_new, activation_make_new,
    print, activation_print,
    call, mt_layer_call,
    attr, mt_layer_attr,
    protocol, &relu6_ops,
    locals_dict, &mt_layer_locals_dict
    );

MP_DEFINE_CONST_OBJ_TYPE(
    mt_softmax_type,
    MP_QSTR_Softmax,
    MP_TYPE_FLAG_NONE,
    make_new, softmax_make_new,
    print, activation_print,
    call, mt_layer_call,
    attr, mt_layer_attr,
    protocol, &softmax_ops,
    locals_dict, &mt_layer_locals_dict
    );
