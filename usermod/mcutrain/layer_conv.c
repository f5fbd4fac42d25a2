// mt.Conv2d and mt.Conv1d(in_channels, out_channels, kernel_size, stride=1, padding=0,
// groups=1, bias=True, dtype=mt.float32). Conv1d runs the 2-D kernels with a height of one.
#include "py/runtime.h"
#include "layer.h"
#include "partial_update.h"
#include "kernels/conv2d_f32.h"
#include "kernels/conv2d_f16.h"
#include "kernels/conv2d_s8.h"
#include "kernels/select_f32.h"
#include "kernels/checked_size.h"
#include "layer_s8.h"
#include "layer_mixed.h"

typedef struct {
    mt_layer_obj_t base;
    mt_conv2d_params_t p;      // channels, kernel, stride, padding, groups fixed at construction
    bool is_1d;
    mt_s8_layer_t *s8;         // int8 only, else NULL
} mt_conv_obj_t;

#define MT_CONV_DTYPES (MT_DTYPES_FLOAT | MT_DTYPE_BIT(MT_INT8))

static int s8_forward(mt_layer_obj_t *layer, const int8_t *x, int8_t *y, mt_range_t *y_range, void *scratch) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)layer;
    return mt_conv2d_s8_forward(&self->p, &self->s8->q, x, layer->weight->data, layer->weight_scale->data,
        self->s8->bias_q, y, y_range, scratch);
}

static int s8_grad_input(mt_layer_obj_t *layer, const int8_t *dy, int8_t *dx, float *dx_absmax, void *scratch) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)layer;
    return mt_conv2d_s8_grad_input(&self->p, &self->s8->q, dy, layer->weight->data, layer->weight_scale->data, dx,
        dx_absmax, scratch);
}

static int s8_update(mt_layer_obj_t *layer, const mt_s8_update_t *u, const int8_t *x, const int8_t *dy,
    mt_grad_stats_t *w_stats, mt_grad_stats_t *b_stats, void *scratch, size_t scratch_bytes) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)layer;
    return mt_conv2d_s8_update(&self->p, &self->s8->q, u, x, dy, layer->weight->data, layer->weight_scale->data,
        self->s8->bias_q, NULL, w_stats, b_stats, scratch, scratch_bytes);
}

static const mt_s8_kernels_t s8_kernels = { s8_forward, s8_grad_input, s8_update };

static void conv_plan(mt_layer_obj_t *self_in, const mt_shape_t *in) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)self_in;
    mt_conv2d_params_t *p = &self->p;
    int c = in->dim[in->ndim - 1];
    if (c != p->in_c) {
        mt_layer_raise_expects(self_in, "expects %d input channels (last dim)", p->in_c, in);
    }
    p->batch = in->dim[0];
    p->in_h = self->is_1d ? 1 : in->dim[1];
    p->in_w = in->dim[in->ndim - 2];
    p->out_h = mt_conv_out_size(p->in_h, p->kernel_h, p->stride_h, p->pad_h, p->pad_h);
    p->out_w = mt_conv_out_size(p->in_w, p->kernel_w, p->stride_w, p->pad_w, p->pad_w);
    if (p->in_h + 2 * p->pad_h < p->kernel_h || p->in_w + 2 * p->pad_w < p->kernel_w) {
        mt_layer_raise_shape(self_in, "kernel is larger than the padded input", in);
    }
    if (self->s8 && self->s8->bias_q) {
        self_in->state_bytes += (size_t)p->out_c * sizeof(int32_t);
    }
    mt_shape_t *out = &self_in->out_shape;
    out->ndim = in->ndim;
    out->dim[0] = p->batch;
    if (self->is_1d) {
        out->dim[1] = p->out_w;
        out->dim[2] = p->out_c;
    } else {
        out->dim[1] = p->out_h;
        out->dim[2] = p->out_w;
        out->dim[3] = p->out_c;
    }
}

static int round_up4(int k) {
    return (k + 3) & ~3;
}

static bool is_depthwise(const mt_conv2d_params_t *p) {
    return p->groups > 1 && p->groups == p->in_c && p->groups == p->out_c;
}

// The convolution restricted to k selected output channels (a partial update).
static mt_conv2d_params_t compact_params(const mt_conv2d_params_t *p, int k) {
    mt_conv2d_params_t q = *p;
    q.out_c = k;
    if (is_depthwise(p)) {
        q.in_c = q.groups = k;
    }
    return q;
}

// Compact-path scratch: magnitudes and a mask over N channels, the selected channels of
// dy (and of x and dx when depthwise), their weight rows, gradients, then kernel scratch.
static size_t partial_scratch(const mt_conv_obj_t *self) {
    const mt_conv2d_params_t *p = &self->p;
    size_t n = (size_t)p->out_c, k = (size_t)mt_update_max_selected(&self->base);
    if (!is_depthwise(p)) {
        k = (size_t)round_up4((int)k);
    }
    bool of = false;
    size_t rows_out = mt_shape_size(&self->base.out_shape) / n, rows_in = mt_shape_size(&self->base.in_shape) / (size_t)p->in_c;
    size_t row_len = self->base.weight->size / n;
    size_t floats = n + (n + 3) / 4 + k;
    floats = mt_add_size(floats, mt_mul_size(rows_out, k, &of), &of);
    floats = mt_add_size(floats, mt_mul_size(2 * k, row_len, &of), &of);
    if (is_depthwise(p)) {
        floats = mt_add_size(floats, mt_mul_size(2 * rows_in, k, &of), &of);
    }
    mt_conv2d_params_t q = compact_params(p, (int)k);
    return mt_add_size(floats, mt_conv2d_f32_scratch_floats(&q), &of);
}

// Mixed layers run both the int8 kernels (forward) and the float32 ones (backward).
static size_t mixed_kernel_floats(const mt_conv_obj_t *self) {
    size_t s8 = mt_size_bytes_to_floats(mt_conv2d_s8_scratch_bytes(&self->p));
    return mt_max_size(s8, mt_conv2d_f32_scratch_floats(&self->p));
}

// The kernels' size helpers saturate (kernels/checked_size.h): one check here.
static size_t conv_scratch_unchecked(const mt_conv_obj_t *self) {
    const mt_layer_obj_t *self_in = &self->base;
    if (self_in->dtype == MT_FLOAT16) {
        return mt_conv2d_f16_scratch_floats(&self->p);
    }
    if (self_in->dtype == MT_INT8) {
        return mt_size_bytes_to_floats(mt_conv2d_s8_scratch_bytes(&self->p));
    }
    if (self->s8 != NULL) {
        return mt_mixed_scratch_floats(self_in, mixed_kernel_floats(self), self_in->weight->size);
    }
    size_t full = mt_conv2d_f32_scratch_floats(&self->p);
    if (self_in->update.kind != MT_UPDATE_CHANNELS && self_in->update.kind != MT_UPDATE_TOPK) {
        return full;
    }
    return mt_max_size(partial_scratch(self), full);
}

static size_t conv_scratch(const mt_layer_obj_t *self_in) {
    size_t floats = conv_scratch_unchecked((const mt_conv_obj_t *)self_in);
    mt_size_check(floats, sizeof(float), qstr_str(mt_layer_name(self_in)));
    return floats;
}

static void conv_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)self_in;
    void *bias = self_in->bias ? self_in->bias->data : NULL;
    if (self_in->dtype == MT_INT8) {
        mt_s8_forward(self->s8, self_in, x, pass, &s8_kernels);
    } else if (self->s8 != NULL) {
        mt_mixed_forward(self->s8, self_in, x, pass, &s8_kernels, mixed_kernel_floats(self));
    } else if (self_in->dtype == MT_FLOAT16) {
        mt_conv2d_f16_forward(&self->p, x->data, self_in->weight->data, bias, self_in->output->data, pass->scratch);
    } else {
        mt_conv2d_f32_forward(&self->p, x->data, self_in->weight->data, bias, self_in->output->data, pass->scratch);
    }
}

// A partial update: only the selected output channels' error flows back, into both
// gradients, computed by the usual kernels on compact copies of those channels.
static void conv_backward_partial(mt_conv_obj_t *self, const float *x, const float *dy, float *dx,
    const mt_pass_t *pass) {
    mt_layer_obj_t *layer = &self->base;
    const mt_conv2d_params_t *p = &self->p;
    bool depthwise = is_depthwise(p);
    int n = p->out_c, rows_out = p->batch * p->out_h * p->out_w, rows_in = p->batch * p->in_h * p->in_w;
    int row_len = (int)(layer->weight->size / (size_t)n);
    float *mag = pass->scratch;
    uint8_t *taken = (uint8_t *)(mag + n);
    float *dy_sel = mag + n + (n + 3) / 4;
    int k;
    const int32_t *sel = mt_update_select(layer, dy, rows_out, pass, mag, taken, &k);
    // The GEMMs work in blocks of 4 channels: compute k rounded up, the extra channels
    // with zero error (depthwise channels are independent and need no padding).
    int kp = depthwise ? k : round_up4(k);
    float *w_sel = dy_sel + (size_t)rows_out * kp;
    float *dw_sel = w_sel + (size_t)kp * row_len;
    float *db_sel = dw_sel + (size_t)kp * row_len;
    float *x_sel = db_sel + kp;
    float *dx_sel = x_sel + (depthwise ? (size_t)rows_in * k : 0);
    float *kernel_scratch = dx_sel + (depthwise ? (size_t)rows_in * k : 0);
    mt_conv2d_params_t q = compact_params(p, kp);

    mt_gather_columns_padded_f32(dy, rows_out, n, sel, k, kp, dy_sel);
    mt_gather_rows_f32(layer->weight->data, row_len, sel, k, w_sel);
    for (size_t i = (size_t)k * row_len; i < (size_t)kp * row_len; i++) {
        w_sel[i] = 0.0f;
    }
    if (depthwise) {
        // Each channel sees only its own input channel: compact x and dx the same way.
        mt_gather_columns_f32(x, rows_in, n, sel, k, x_sel);
        x = x_sel;
    }
    if (dx != NULL) {
        mt_conv2d_f32_grad_input(&q, dy_sel, w_sel, depthwise ? dx_sel : dx, kernel_scratch);
        if (depthwise) {
            mt_scatter_columns_f32(dx_sel, rows_in, n, sel, k, dx);
        }
    }
    for (size_t i = 0; i < (size_t)kp * row_len + (size_t)kp; i++) {
        dw_sel[i] = 0.0f;
    }
    mt_conv2d_f32_grad_weight(&q, x, dy_sel, 1.0f, dw_sel, layer->bias ? db_sel : NULL, kernel_scratch);
    mt_update_selected_rows(pass, layer, sel, k, row_len, dw_sel, db_sel);
}

// float16: fp16 activations and errors, gradients summed in fp32 and added either into the
// fp16 weights or velocity (fused SGD) or into an fp32 buffer (.grad, Adam).
static void conv_backward_f16(mt_conv_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_layer_obj_t *layer = &self->base;
    if (dx != NULL) {
        mt_conv2d_f16_grad_input(&self->p, dy->data, layer->weight->data, dx->data, pass->scratch);
    }
    if (!layer->trainable) {
        return;
    }
    mt_grad_dest_t dw, db;
    mt_grad_begin_params(pass, layer, &dw, &db);
    if (dw.dtype == MT_FLOAT16) {
        mt_conv2d_f16_grad_weight(&self->p, x->data, dy->data, dw.alpha, dw.data, db.data, pass->scratch, dw.rng);
    } else {
        mt_conv2d_f16_grad_weight_f32(&self->p, x->data, dy->data, dw.alpha, dw.data, db.data, pass->scratch);
    }
    mt_grad_end_params(pass, layer);
}

static void conv_backward_f32(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x_t, const mt_tensor_obj_t *dy_t,
    mt_tensor_obj_t *dx_t, const mt_pass_t *pass) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)self_in;
    const float *x = x_t->data, *dy = dy_t->data;
    float *dx = dx_t ? dx_t->data : NULL;
    if (self_in->trainable && mt_update_is_partial(self_in, pass)) {
        conv_backward_partial(self, x, dy, dx, pass);
        return;
    }
    if (dx != NULL) {
        mt_conv2d_f32_grad_input(&self->p, dy, self_in->weight->data, dx, pass->scratch);
    }
    if (!self_in->trainable) {
        return;
    }
    if (mt_update_bias_only(pass, self_in, dy, self->p.batch * self->p.out_h * self->p.out_w)) {
        return;
    }
    mt_grad_dest_t dw, db;
    mt_grad_begin_params(pass, self_in, &dw, &db);
    mt_conv2d_f32_grad_weight(&self->p, x, dy, dw.alpha, dw.data, db.data, pass->scratch);
    mt_grad_end_params(pass, self_in);
}

static void conv_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x_t, const mt_tensor_obj_t *dy_t,
    mt_tensor_obj_t *dx_t, const mt_pass_t *pass) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)self_in;
    if (self_in->dtype == MT_FLOAT16) {
        conv_backward_f16(self, x_t, dy_t, dx_t, pass);
    } else if (self_in->dtype == MT_INT8) {
        mt_s8_backward(self->s8, self_in, x_t, dy_t, dx_t, pass, &s8_kernels);
    } else if (self->s8 != NULL) {
        mt_mixed_backward(self->s8, self_in, x_t, dy_t, dx_t, pass, conv_backward_f32, mixed_kernel_floats(self));
    } else {
        conv_backward_f32(self_in, x_t, dy_t, dx_t, pass);
    }
}

static uint64_t conv_macs(const mt_layer_obj_t *self_in, mt_macs_kind_t kind, bool need_dx) {
    (void)kind;
    (void)need_dx;
    const mt_conv2d_params_t *p = &((const mt_conv_obj_t *)self_in)->p;
    return (uint64_t)p->batch * p->out_h * p->out_w * p->out_c * p->kernel_h * p->kernel_w * (p->in_c / p->groups);
}

static mp_obj_t pair_or_int(int h, int w, bool is_1d) {
    if (is_1d) {
        return MP_OBJ_NEW_SMALL_INT(w);
    }
    mp_obj_t items[2] = { MP_OBJ_NEW_SMALL_INT(h), MP_OBJ_NEW_SMALL_INT(w) };
    return mp_obj_new_tuple(2, items);
}

static mp_obj_t conv_config(const mt_layer_obj_t *self_in) {
    const mt_conv_obj_t *self = (const mt_conv_obj_t *)self_in;
    const mt_conv2d_params_t *p = &self->p;
    mp_obj_t dict = mt_new_ordered_dict(8);
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_in_channels), MP_OBJ_NEW_SMALL_INT(p->in_c));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_out_channels), MP_OBJ_NEW_SMALL_INT(p->out_c));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_kernel_size), pair_or_int(p->kernel_h, p->kernel_w, self->is_1d));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_stride), pair_or_int(p->stride_h, p->stride_w, self->is_1d));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_padding), pair_or_int(p->pad_h, p->pad_w, self->is_1d));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_groups), MP_OBJ_NEW_SMALL_INT(p->groups));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_bias), mp_obj_new_bool(self_in->bias != NULL));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_dtype), MP_OBJ_NEW_QSTR(mt_layer_dtype_qstr(self_in)));
    return dict;
}

static const mt_layer_ops_t conv2d_ops = {
    .magic = MT_LAYER_MAGIC,
    .input_ndim = 4,
    .dtypes = MT_CONV_DTYPES,
    .plan = conv_plan,
    .scratch_floats = conv_scratch,
    .forward = conv_forward,
    .backward = conv_backward,
    .macs = conv_macs,
    .config = conv_config,
};

static const mt_layer_ops_t conv1d_ops = {
    .magic = MT_LAYER_MAGIC,
    .input_ndim = 3,
    .dtypes = MT_CONV_DTYPES,
    .plan = conv_plan,
    .scratch_floats = conv_scratch,
    .forward = conv_forward,
    .backward = conv_backward,
    .macs = conv_macs,
    .config = conv_config,
};

static mp_obj_t conv_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_in_channels, ARG_out_channels, ARG_kernel_size, ARG_stride, ARG_padding, ARG_groups, ARG_bias, ARG_dtype };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_in_channels, MP_ARG_REQUIRED | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_out_channels, MP_ARG_REQUIRED | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_kernel_size, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_stride, MP_ARG_OBJ, {.u_obj = MP_OBJ_NEW_SMALL_INT(1)} },
        { MP_QSTR_padding, MP_ARG_OBJ, {.u_obj = MP_OBJ_NEW_SMALL_INT(0)} },
        { MP_QSTR_groups, MP_ARG_INT, {.u_int = 1} },
        { MP_QSTR_bias, MP_ARG_BOOL, {.u_bool = true} },
        { MP_QSTR_dtype, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    bool is_1d = type->name == MP_QSTR_Conv1d;
    const char *name = is_1d ? "Conv1d" : "Conv2d";
    bool mixed;
    uint8_t dtype = mt_layer_weights_dtype_arg(args[ARG_dtype].u_obj, MT_CONV_DTYPES, name, &mixed);
    mp_int_t in = args[ARG_in_channels].u_int, out = args[ARG_out_channels].u_int;
    mp_int_t groups = args[ARG_groups].u_int;
    if (in < 1 || out < 1 || in > 0xffff || out > 0xffff) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%s: in_channels and out_channels must be positive, not %d and %d"), name, (int)in, (int)out);
    }
    if (groups < 1 || in % groups != 0 || out % groups != 0) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%s: groups=%d must divide in_channels=%d and out_channels=%d"), name, (int)groups, (int)in, (int)out);
    }
    mt_conv_obj_t *self = mp_obj_malloc(mt_conv_obj_t, type);
    mt_layer_init(&self->base);
    self->base.dtype = dtype;
    self->is_1d = is_1d;
    mt_conv2d_params_t *p = &self->p;
    p->in_c = (int)in;
    p->out_c = (int)out;
    p->groups = (int)groups;
    if (is_1d) {
        p->kernel_h = p->stride_h = 1;
        p->pad_h = 0;
        p->kernel_w = (int)mp_obj_get_int(args[ARG_kernel_size].u_obj);
        p->stride_w = (int)mp_obj_get_int(args[ARG_stride].u_obj);
        p->pad_w = (int)mp_obj_get_int(args[ARG_padding].u_obj);
        if (p->kernel_w < 1 || p->stride_w < 1 || p->pad_w < 0 || p->kernel_w > 0xffff || p->stride_w > 0xffff || p->pad_w > 0xffff) {
            mp_raise_ValueError(MP_ERROR_TEXT("Conv1d: kernel_size and stride must be >= 1, padding >= 0"));
        }
    } else {
        mt_parse_pair(args[ARG_kernel_size].u_obj, &p->kernel_h, &p->kernel_w, "Conv2d: kernel_size", 1);
        mt_parse_pair(args[ARG_stride].u_obj, &p->stride_h, &p->stride_w, "Conv2d: stride", 1);
        mt_parse_pair(args[ARG_padding].u_obj, &p->pad_h, &p->pad_w, "Conv2d: padding", 0);
    }
    mt_shape_t wshape;
    if (is_1d) {
        wshape = (mt_shape_t) { .ndim = 3, .dim = { p->out_c, p->kernel_w, p->in_c / p->groups } };
    } else {
        wshape = (mt_shape_t) { .ndim = 4, .dim = { p->out_c, p->kernel_h, p->kernel_w, p->in_c / p->groups } };
    }
    // Before any int product of the kernel's sizes: the weight's size, checked.
    mt_shape_bytes(&wshape, MT_FLOAT32, is_1d ? "Conv1d.weight" : "Conv2d.weight");
    int fan_in = p->kernel_h * p->kernel_w * (p->in_c / p->groups);
    self->s8 = NULL;
    if (dtype == MT_INT8 || mixed) {
        self->s8 = m_new0(mt_s8_layer_t, 1);
        mt_s8_layer_init(self->s8, &self->base, &wshape, fan_in, args[ARG_bias].u_bool, "Conv.weight");
        return MP_OBJ_FROM_PTR(self);
    }
    self->base.weight = mt_layer_new_param(&wshape, fan_in, dtype, "Conv.weight");
    if (args[ARG_bias].u_bool) {
        mt_shape_t bshape = { .ndim = 1, .dim = { p->out_c } };
        self->base.bias = mt_layer_new_param(&bshape, fan_in, dtype, "Conv.bias");
    }
    return MP_OBJ_FROM_PTR(self);
}

static void conv_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_conv_obj_t *self = MP_OBJ_TO_PTR(self_in);
    const mt_conv2d_params_t *p = &self->p;
    if (self->is_1d) {
        mp_printf(print, "Conv1d(%d, %d, %d, stride=%d, padding=%d, groups=%d", p->in_c, p->out_c,
            p->kernel_w, p->stride_w, p->pad_w, p->groups);
    } else {
        mp_printf(print, "Conv2d(%d, %d, (%d, %d), stride=(%d, %d), padding=(%d, %d), groups=%d", p->in_c,
            p->out_c, p->kernel_h, p->kernel_w, p->stride_h, p->stride_w, p->pad_h, p->pad_w, p->groups);
    }
    if (self->base.dtype != MT_FLOAT32 || self->s8 != NULL) {
        mp_printf(print, ", dtype=%q", mt_layer_dtype_qstr(&self->base));
    }
    mp_print_str(print, ")");
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_conv2d_type,
    MP_QSTR_Conv2d,
    MP_TYPE_FLAG_NONE,
    make_new, conv_make_new,
    print, conv_print,
    attr, mt_layer_attr,
    protocol, &conv2d_ops,
    locals_dict, &mt_layer_locals_dict
    );

MP_DEFINE_CONST_OBJ_TYPE(
    mt_conv1d_type,
    MP_QSTR_Conv1d,
    MP_TYPE_FLAG_NONE,
    make_new, conv_make_new,
    print, conv_print,
    attr, mt_layer_attr,
    protocol, &conv1d_ops,
    locals_dict, &mt_layer_locals_dict
    );
