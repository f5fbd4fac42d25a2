// mt.Linear(in_features, out_features, bias=True, dtype=mt.float32): y = x W^T + b on
// (batch, features).
#include "py/runtime.h"
#include "layer.h"
#include "partial_update.h"
#include "kernels/linear_f32.h"
#include "kernels/linear_f16.h"
#include "kernels/linear_s8.h"
#include "kernels/linear_mixed.h"
#include "kernels/select_f32.h"
#include "kernels/checked_size.h"
#include "layer_s8.h"
#include "layer_mixed.h"
#include "grad_sink.h"

typedef struct {
    mt_layer_obj_t base;
    mt_linear_params_t p;
    mt_s8_layer_t *s8;         // int8 only, else NULL
} mt_linear_obj_t;

#define MT_LINEAR_DTYPES (MT_DTYPES_FLOAT | MT_DTYPE_BIT(MT_INT8))

static int s8_forward(mt_layer_obj_t *layer, const int8_t *x, int8_t *y, mt_range_t *y_range, void *scratch) {
    mt_linear_obj_t *self = (mt_linear_obj_t *)layer;
    return mt_linear_s8_forward(&self->p, &self->s8->q, x, layer->weight->data, layer->weight_scale->data,
        self->s8->bias_q, y, y_range, scratch);
}

static int s8_grad_input(mt_layer_obj_t *layer, const int8_t *dy, int8_t *dx, float *dx_absmax, void *scratch) {
    mt_linear_obj_t *self = (mt_linear_obj_t *)layer;
    return mt_linear_s8_grad_input(&self->p, &self->s8->q, dy, layer->weight->data, layer->weight_scale->data, dx,
        dx_absmax, scratch);
}

static int s8_update(mt_layer_obj_t *layer, const mt_s8_update_t *u, const int8_t *x, const int8_t *dy,
    mt_grad_stats_t *w_stats, mt_grad_stats_t *b_stats, void *scratch, size_t scratch_bytes) {
    (void)scratch_bytes;
    mt_linear_obj_t *self = (mt_linear_obj_t *)layer;
    return mt_linear_s8_update(&self->p, &self->s8->q, u, x, dy, layer->weight->data, layer->weight_scale->data,
        self->s8->bias_q, NULL, w_stats, b_stats, scratch);
}

static const mt_s8_kernels_t s8_kernels = { s8_forward, s8_grad_input, s8_update };

static void linear_plan(mt_layer_obj_t *self_in, const mt_shape_t *in) {
    mt_linear_obj_t *self = (mt_linear_obj_t *)self_in;
    if (in->dim[1] != self->p.in_features) {
        mt_layer_raise_expects(self_in, "expects %d input features", self->p.in_features, in);
    }
    self->p.batch = in->dim[0];
    if (self->s8 && self->s8->bias_q) {
        self_in->state_bytes += (size_t)self->p.out_features * sizeof(int32_t);
    }
    self_in->out_shape.ndim = 2;
    self_in->out_shape.dim[0] = in->dim[0];
    self_in->out_shape.dim[1] = self->p.out_features;
}

// Mixed layers run both the int8 kernels (forward) and the float32 ones (backward).
static size_t mixed_kernel_floats(const mt_linear_obj_t *self) {
    return mt_size_bytes_to_floats(mt_linear_s8_scratch_bytes(&self->p));
}

static void linear_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_linear_obj_t *self = (mt_linear_obj_t *)self_in;
    void *bias = self_in->bias ? self_in->bias->data : NULL;
    if (self_in->dtype == MT_INT8) {
        mt_s8_forward(self->s8, self_in, x, pass, &s8_kernels);
    } else if (self->s8 != NULL) {
        mt_mixed_forward(self->s8, self_in, x, pass, &s8_kernels, mixed_kernel_floats(self));
    } else if (self_in->dtype == MT_FLOAT16) {
        mt_linear_f16_forward(&self->p, x->data, self_in->weight->data, bias, self_in->output->data, pass->scratch);
    } else {
        mt_linear_f32_forward(&self->p, x->data, self_in->weight->data, bias, self_in->output->data);
    }
}

// Compact-path scratch (see layer_conv.c): magnitudes, mask, selected dy columns,
// weight rows and their gradients.
// The kernels' size helpers saturate (kernels/checked_size.h): one check in linear_scratch.
static size_t linear_scratch_unchecked(const mt_linear_obj_t *self) {
    const mt_layer_obj_t *self_in = &self->base;
    if (self_in->dtype == MT_FLOAT16) {
        return mt_linear_f16_scratch_floats(&self->p);
    }
    if (self_in->dtype == MT_INT8) {
        return mt_size_bytes_to_floats(mt_linear_s8_scratch_bytes(&self->p));
    }
    if (self->s8 != NULL) {
        return mt_mixed_scratch_floats(self_in, mixed_kernel_floats(self), (size_t)self->p.in_features);
    }
    if (self_in->update.kind != MT_UPDATE_CHANNELS && self_in->update.kind != MT_UPDATE_TOPK) {
        return 0;
    }
    bool of = false;
    size_t n = (size_t)self->p.out_features, k = (size_t)mt_update_max_selected(self_in);
    size_t floats = mt_add_size(n + (n + 3) / 4 + k, mt_mul_size((size_t)self->p.batch, k, &of), &of);
    return mt_add_size(floats, mt_mul_size(2 * k, (size_t)self->p.in_features, &of), &of);
}

static size_t linear_scratch(const mt_layer_obj_t *self_in) {
    size_t floats = linear_scratch_unchecked((const mt_linear_obj_t *)self_in);
    mt_size_check(floats, sizeof(float), "Linear");
    return floats;
}

// A partial update: only the selected rows' error flows back (see layer_conv.c).
static void linear_backward_partial(mt_linear_obj_t *self, const float *x, const float *dy, float *dx,
    const mt_pass_t *pass) {
    mt_layer_obj_t *layer = &self->base;
    int n = self->p.out_features, row_len = self->p.in_features;
    float *mag = pass->scratch;
    uint8_t *taken = (uint8_t *)(mag + n);
    float *dy_sel = mag + n + (n + 3) / 4;
    int k;
    const int32_t *sel = mt_update_select(layer, dy, self->p.batch, pass, mag, taken, &k);
    float *w_sel = dy_sel + (size_t)self->p.batch * k;
    float *dw_sel = w_sel + (size_t)k * row_len;
    float *db_sel = dw_sel + (size_t)k * row_len;
    mt_linear_params_t q = self->p;
    q.out_features = k;
    mt_gather_columns_f32(dy, self->p.batch, n, sel, k, dy_sel);
    mt_gather_rows_f32(layer->weight->data, row_len, sel, k, w_sel);
    if (dx != NULL) {
        mt_linear_f32_grad_input(&q, dy_sel, w_sel, dx);
    }
    for (size_t i = 0; i < (size_t)k * row_len + (size_t)k; i++) {
        dw_sel[i] = 0.0f;
    }
    mt_linear_f32_grad_weight(&q, x, dy_sel, 1.0f, dw_sel, layer->bias ? db_sel : NULL);
    mt_update_selected_rows(pass, layer, sel, k, row_len, dw_sel, db_sel);
}

// float16: fp16 activations and errors, gradients summed in fp32 and added either into the
// fp16 weights or velocity (fused SGD) or into an fp32 buffer (.grad, Adam).
static void linear_backward_f16(mt_linear_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_layer_obj_t *layer = &self->base;
    if (dx != NULL) {
        mt_linear_f16_grad_input(&self->p, dy->data, layer->weight->data, dx->data, pass->scratch);
    }
    if (!layer->trainable) {
        return;
    }
    mt_grad_dest_t dw, db;
    mt_grad_begin_params(pass, layer, &dw, &db);
    if (dw.dtype == MT_FLOAT16) {
        mt_linear_f16_grad_weight(&self->p, x->data, dy->data, dw.alpha, dw.data, db.data, pass->scratch, dw.rng);
    } else {
        mt_linear_f16_grad_weight_f32(&self->p, x->data, dy->data, dw.alpha, dw.data, db.data, pass->scratch);
    }
    mt_grad_end_params(pass, layer);
}

static void linear_backward_f32(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x_t, const mt_tensor_obj_t *dy_t,
    mt_tensor_obj_t *dx_t, const mt_pass_t *pass) {
    mt_linear_obj_t *self = (mt_linear_obj_t *)self_in;
    const float *x = x_t->data, *dy = dy_t->data;
    float *dx = dx_t ? dx_t->data : NULL;
    if (self_in->trainable && mt_update_is_partial(self_in, pass)) {
        linear_backward_partial(self, x, dy, dx, pass);
        return;
    }
    if (dx != NULL) {
        mt_linear_f32_grad_input(&self->p, dy, self_in->weight->data, dx);
    }
    if (!self_in->trainable) {
        return;
    }
    if (mt_update_bias_only(pass, self_in, dy, self->p.batch)) {
        return;
    }
    mt_grad_dest_t dw, db;
    mt_grad_begin_params(pass, self_in, &dw, &db);
    mt_linear_f32_grad_weight(&self->p, x, dy, dw.alpha, dw.data, db.data);
    mt_grad_end_params(pass, self_in);
}

// mixed (layer_mixed.h): the float32 pass on the int8 weights, a row at a time.
static void linear_backward_mixed(mt_linear_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_layer_obj_t *layer = &self->base;
    const mt_int8_sgd_t *sgd = mt_s8_sgd(layer, pass);
    if (dx != NULL) {
        mt_linear_mixed_grad_input(&self->p, dy->data, layer->weight->data, layer->weight_scale->data, dx->data);
    }
    if (sgd != NULL) {
        mt_linear_mixed_update(&self->p, x->data, dy->data, layer->weight->data, layer->weight_scale->data,
            layer->bias ? layer->bias->data : NULL, sgd->lr, sgd->weight_decay, MT_S8_RESCALE_BELOW,
            sgd->stochastic_rounding ? &self->s8->rng : NULL, pass->scratch + mixed_kernel_floats(self));
    }
}

static void linear_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x_t, const mt_tensor_obj_t *dy_t,
    mt_tensor_obj_t *dx_t, const mt_pass_t *pass) {
    mt_linear_obj_t *self = (mt_linear_obj_t *)self_in;
    if (self_in->dtype == MT_FLOAT16) {
        linear_backward_f16(self, x_t, dy_t, dx_t, pass);
    } else if (self_in->dtype == MT_INT8) {
        mt_s8_backward(self->s8, self_in, x_t, dy_t, dx_t, pass, &s8_kernels);
    } else if (self->s8 != NULL) {
        linear_backward_mixed(self, x_t, dy_t, dx_t, pass);
    } else {
        linear_backward_f32(self_in, x_t, dy_t, dx_t, pass);
    }
}

static uint64_t linear_macs(const mt_layer_obj_t *self_in, mt_macs_kind_t kind, bool need_dx) {
    (void)kind;
    (void)need_dx;
    const mt_linear_obj_t *self = (const mt_linear_obj_t *)self_in;
    return (uint64_t)self->p.batch * self->p.in_features * self->p.out_features;
}

static mp_obj_t linear_config(const mt_layer_obj_t *self_in) {
    const mt_linear_obj_t *self = (const mt_linear_obj_t *)self_in;
    mp_obj_t dict = mt_new_ordered_dict(4);
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_in_features), MP_OBJ_NEW_SMALL_INT(self->p.in_features));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_out_features), MP_OBJ_NEW_SMALL_INT(self->p.out_features));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_bias), mp_obj_new_bool(self_in->bias != NULL));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_dtype), MP_OBJ_NEW_QSTR(mt_layer_dtype_qstr(self_in)));
    return dict;
}

static const mt_layer_ops_t linear_ops = {
    .magic = MT_LAYER_MAGIC,
    .input_ndim = 2,
    .dtypes = MT_LINEAR_DTYPES,
    .plan = linear_plan,
    .scratch_floats = linear_scratch,
    .forward = linear_forward,
    .backward = linear_backward,
    .macs = linear_macs,
    .config = linear_config,
};

static mp_obj_t linear_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_in_features, ARG_out_features, ARG_bias, ARG_dtype };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_in_features, MP_ARG_REQUIRED | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_out_features, MP_ARG_REQUIRED | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_bias, MP_ARG_BOOL, {.u_bool = true} },
        { MP_QSTR_dtype, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mp_int_t in = args[ARG_in_features].u_int, out = args[ARG_out_features].u_int;
    if (in < 1 || out < 1 || in > 0xffffff || out > 0xffffff) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("Linear: in_features and out_features must be in [1, %d], not %d and %d"), 0xffffff,
            (int)in, (int)out);
    }
    bool mixed;
    uint8_t dtype = mt_layer_weights_dtype_arg(args[ARG_dtype].u_obj, MT_LINEAR_DTYPES, "Linear", &mixed);
    mt_linear_obj_t *self = mp_obj_malloc(mt_linear_obj_t, type);
    mt_layer_init(&self->base);
    self->base.dtype = dtype;
    self->p.batch = 0;
    self->p.in_features = (int)in;
    self->p.out_features = (int)out;
    mt_shape_t wshape = { .ndim = 2, .dim = { (int32_t)out, (int32_t)in } };
    self->s8 = NULL;
    if (dtype == MT_INT8 || mixed) {
        self->s8 = m_new0(mt_s8_layer_t, 1);
        mt_s8_layer_init(self->s8, &self->base, &wshape, (int)in, args[ARG_bias].u_bool, "Linear.weight");
        return MP_OBJ_FROM_PTR(self);
    }
    self->base.weight = mt_layer_new_param(&wshape, (int)in, dtype, "Linear.weight");
    if (args[ARG_bias].u_bool) {
        mt_shape_t bshape = { .ndim = 1, .dim = { (int32_t)out } };
        self->base.bias = mt_layer_new_param(&bshape, (int)in, dtype, "Linear.bias");
    }
    return MP_OBJ_FROM_PTR(self);
}

static void linear_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_linear_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "Linear(%d, %d, bias=%s", self->p.in_features, self->p.out_features,
        self->base.bias ? "True" : "False");
    if (self->base.dtype != MT_FLOAT32 || self->s8 != NULL) {
        mp_printf(print, ", dtype=%q", mt_layer_dtype_qstr(&self->base));
    }
    mp_print_str(print, ")");
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_linear_type,
    MP_QSTR_Linear,
    MP_TYPE_FLAG_NONE,
    make_new, linear_make_new,
    print, linear_print,
    attr, mt_layer_attr,
    protocol, &linear_ops,
    locals_dict, &mt_layer_locals_dict
    );
