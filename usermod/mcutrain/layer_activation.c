// mt.ReLU(), mt.ReLU6() and mt.Softmax() (over the last dimension). ReLU and ReLU6
// run in place when the layer before them does not need its output kept.
#include "py/runtime.h"
#include "layer.h"
#include "kernels/activation_f32.h"

typedef struct {
    mt_layer_obj_t base;
} mt_activation_obj_t;

static void same_shape_plan(mt_layer_obj_t *self, const mt_shape_t *in) {
    self->out_shape = *in;
}

static void relu_forward(mt_layer_obj_t *self, const float *x, const mt_pass_t *pass) {
    (void)pass;
    mt_relu_f32_forward(x, self->output->data, self->output->size);
}

static void relu_backward(mt_layer_obj_t *self, const float *x, const float *dy, float *dx, const mt_pass_t *pass) {
    (void)x;
    (void)pass;
    if (dx != NULL) {
        mt_relu_f32_grad_input(self->output->data, dy, dx, self->output->size);
    }
}

static void relu6_forward(mt_layer_obj_t *self, const float *x, const mt_pass_t *pass) {
    (void)pass;
    mt_relu6_f32_forward(x, self->output->data, self->output->size);
}

static void relu6_backward(mt_layer_obj_t *self, const float *x, const float *dy, float *dx, const mt_pass_t *pass) {
    (void)x;
    (void)pass;
    if (dx != NULL) {
        mt_relu6_f32_grad_input(self->output->data, dy, dx, self->output->size);
    }
}

static int softmax_cols(const mt_layer_obj_t *self) {
    return self->out_shape.dim[self->out_shape.ndim - 1];
}

static void softmax_forward(mt_layer_obj_t *self, const float *x, const mt_pass_t *pass) {
    (void)pass;
    int cols = softmax_cols(self);
    mt_softmax_f32_forward(x, self->output->data, (int)(self->output->size / (size_t)cols), cols);
}

static void softmax_backward(mt_layer_obj_t *self, const float *x, const float *dy, float *dx, const mt_pass_t *pass) {
    (void)x;
    (void)pass;
    if (dx != NULL) {
        int cols = softmax_cols(self);
        mt_softmax_f32_grad_input(self->output->data, dy, dx, (int)(self->output->size / (size_t)cols), cols);
    }
}

static const mt_layer_ops_t relu_ops = {
    .magic = MT_LAYER_MAGIC,
    .flags = MT_LAYER_MAY_RUN_IN_PLACE | MT_LAYER_NEEDS_OUTPUT,
    .plan = same_shape_plan,
    .forward = relu_forward,
    .backward = relu_backward,
};

static const mt_layer_ops_t relu6_ops = {
    .magic = MT_LAYER_MAGIC,
    .flags = MT_LAYER_MAY_RUN_IN_PLACE | MT_LAYER_NEEDS_OUTPUT,
    .plan = same_shape_plan,
    .forward = relu6_forward,
    .backward = relu6_backward,
};

static const mt_layer_ops_t softmax_ops = {
    .magic = MT_LAYER_MAGIC,
    .flags = MT_LAYER_NEEDS_OUTPUT,
    .plan = same_shape_plan,
    .forward = softmax_forward,
    .backward = softmax_backward,
};

static mp_obj_t activation_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    (void)args;
    mp_arg_check_num(n_args, n_kw, 0, 0, false);
    mt_activation_obj_t *self = mp_obj_malloc(mt_activation_obj_t, type);
    mt_layer_init(&self->base);
    return MP_OBJ_FROM_PTR(self);
}

static void activation_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mp_printf(print, "%s()", mp_obj_get_type_str(self_in));
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_relu_type,
    MP_QSTR_ReLU,
    MP_TYPE_FLAG_NONE,
    make_new, activation_make_new,
    print, activation_print,
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
    attr, mt_layer_attr,
    protocol, &relu6_ops,
    locals_dict, &mt_layer_locals_dict
    );

MP_DEFINE_CONST_OBJ_TYPE(
    mt_softmax_type,
    MP_QSTR_Softmax,
    MP_TYPE_FLAG_NONE,
    make_new, activation_make_new,
    print, activation_print,
    attr, mt_layer_attr,
    protocol, &softmax_ops,
    locals_dict, &mt_layer_locals_dict
    );
