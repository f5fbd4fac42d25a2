// mt.Adam(model, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0).
// Adam needs the whole gradient before its update, so unlike SGD it keeps a gradient
// buffer besides its two moments: 12 bytes of state per parameter, shown by memory().
#include "py/runtime.h"
#include "optim.h"
#include "kernels/optim_f32.h"
#include "kernels/optim_f16.h"

typedef struct {
    mt_optim_obj_t base;
    mt_adam_params_t p;
} mt_adam_obj_t;

// State layout per parameter of n elements: gradient[n], first moment[n], second moment[n],
// all fp32 whatever the parameter's dtype (the second moment needs fp32's range).
static float *adam_state(mt_optim_obj_t *self, mt_tensor_obj_t *param) {
    return mt_optim_state(self, param, 3, MT_FLOAT32);
}

static void adam_step_begin(mt_optim_obj_t *self_in) {
    ((mt_adam_obj_t *)self_in)->p.step++;
}

static void adam_grad_begin(mt_optim_obj_t *self_in, mt_tensor_obj_t *param, mt_grad_dest_t *dest) {
    float *state = adam_state(self_in, param);
    for (size_t i = 0; i < param->size; i++) {
        state[i] = 0.0f;
    }
    dest->data = state;
    dest->alpha = 1.0f;
    dest->dtype = MT_FLOAT32;
    dest->rng = NULL;
}

// Adam on n elements of w (fp32) from g, with the moments at element `at` of the state.
static void adam_update(mt_adam_obj_t *self, mt_tensor_obj_t *param, float *w, const float *g, size_t at, size_t n) {
    float *state = adam_state(&self->base, param);
    size_t elems = mt_optim_state_elems(param, 3);
    mt_adam_f32_step(&self->p, w, g, state + elems + at, state + 2 * elems + at, n);
}

static void adam_apply(mt_optim_obj_t *self_in, mt_tensor_obj_t *param, const float *grad) {
    if (param->dtype == MT_FLOAT16) {
        float *state = adam_state(self_in, param);
        size_t elems = mt_optim_state_elems(param, 3);
        mt_adam_f16_step(&((mt_adam_obj_t *)self_in)->p, param->data, grad, state + elems, state + 2 * elems,
            param->size, &self_in->rng);
        return;
    }
    adam_update((mt_adam_obj_t *)self_in, param, param->data, grad, 0, param->size);
}

static void adam_grad_end(mt_optim_obj_t *self_in, mt_tensor_obj_t *param) {
    adam_apply(self_in, param, adam_state(self_in, param));
}

static void adam_apply_rows(mt_optim_obj_t *self_in, mt_tensor_obj_t *param, const int32_t *rows, int k,
    int row_len, const float *grad) {
    for (int j = 0; j < k; j++) {
        size_t at = (size_t)rows[j] * (size_t)row_len;
        adam_update((mt_adam_obj_t *)self_in, param, (float *)param->data + at, grad + (size_t)j * row_len, at, (size_t)row_len);
    }
}

static size_t adam_state_bytes(const mt_optim_obj_t *self) {
    (void)self;
    return 3 * sizeof(float);
}

static const mt_int8_sgd_t *adam_int8(const mt_optim_obj_t *self) {
    (void)self;
    return NULL;
}

static const mt_optim_ops_t adam_ops = {
    .step_begin = adam_step_begin,
    .grad_begin = adam_grad_begin,
    .grad_end = adam_grad_end,
    .apply = adam_apply,
    .apply_rows = adam_apply_rows,
    .state_bytes_per_float = adam_state_bytes,
    .int8_sgd = adam_int8,
};

static mp_obj_t adam_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_model, ARG_lr, ARG_betas, ARG_eps, ARG_weight_decay, ARG_update };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_model, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_lr, MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_betas, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_eps, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_weight_decay, MP_ARG_OBJ, {.u_obj = MP_OBJ_NEW_SMALL_INT(0)} },
        { MP_QSTR_update, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mt_adam_obj_t *self = mp_obj_malloc(mt_adam_obj_t, type);
    self->base.ops = &adam_ops;
    self->p.lr = args[ARG_lr].u_obj ? (float)mp_obj_get_float(args[ARG_lr].u_obj) : 0.001f;
    self->p.beta1 = 0.9f;
    self->p.beta2 = 0.999f;
    if (args[ARG_betas].u_obj != mp_const_none) {
        mp_obj_t *betas;
        mp_obj_get_array_fixed_n(args[ARG_betas].u_obj, 2, &betas);
        self->p.beta1 = (float)mp_obj_get_float(betas[0]);
        self->p.beta2 = (float)mp_obj_get_float(betas[1]);
    }
    self->p.eps = args[ARG_eps].u_obj != mp_const_none ? (float)mp_obj_get_float(args[ARG_eps].u_obj) : 1e-8f;
    self->p.weight_decay = (float)mp_obj_get_float(args[ARG_weight_decay].u_obj);
    self->p.step = 0;
    if (!(self->p.lr > 0.0f) || !(self->p.beta1 >= 0.0f && self->p.beta1 < 1.0f)
        || !(self->p.beta2 >= 0.0f && self->p.beta2 < 1.0f) || !(self->p.eps > 0.0f)
        || !(self->p.weight_decay >= 0.0f)) {
        mp_raise_ValueError(MP_ERROR_TEXT("Adam: need lr > 0, betas in [0, 1), eps > 0, weight_decay >= 0"));
    }
    mt_optim_init_params(&self->base, args[ARG_model].u_obj, 3, false, args[ARG_update].u_obj);
    return MP_OBJ_FROM_PTR(self);
}

static void adam_attr(mp_obj_t self_in, qstr attr, mp_obj_t *dest) {
    mt_adam_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (dest[0] == MP_OBJ_SENTINEL) {
        if (attr == MP_QSTR_lr && dest[1] != MP_OBJ_NULL) {
            self->p.lr = (float)mp_obj_get_float(dest[1]);
            dest[0] = MP_OBJ_NULL;
        }
        return;
    }
    if (attr == MP_QSTR_lr) {
        dest[0] = mp_obj_new_float_from_f(self->p.lr);
    } else if (attr == MP_QSTR_step_count) {
        dest[0] = MP_OBJ_NEW_SMALL_INT(self->p.step);
    } else {
        dest[1] = MP_OBJ_SENTINEL;
    }
}

static void adam_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_adam_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "Adam(lr=%f, betas=(%f, %f), eps=%e, weight_decay=%f)", (double)self->p.lr,
        (double)self->p.beta1, (double)self->p.beta2, (double)self->p.eps, (double)self->p.weight_decay);
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_adam_type,
    MP_QSTR_Adam,
    MP_TYPE_FLAG_NONE,
    make_new, adam_make_new,
    print, adam_print,
    attr, adam_attr,
    locals_dict, &mt_optim_locals_dict
    );
