// mt.Adam(model, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0).
// Adam needs the whole gradient before its update, so unlike SGD it keeps a gradient
// buffer besides its two moments: 12 bytes of state per parameter, shown by memory().
#include <math.h>

#include "py/runtime.h"
#include "optim.h"
#include "kernels/optim_f32.h"
#include "kernels/optim_f16.h"

typedef struct {
    mt_optim_obj_t base;
    mt_adam_params_t p;
} mt_adam_obj_t;

// State layout of a slot covering n elements: gradient[n], first moment[n], second
// moment[n], all fp32 whatever the parameter's dtype (the second moment needs fp32's range).
static inline float *adam_moment(const mt_optim_slot_t *slot, int which) {
    return (float *)slot->state + (size_t)which * slot->elems;
}

static void adam_step_begin(mt_optim_obj_t *self_in) {
    ((mt_adam_obj_t *)self_in)->p.step++;
}

static void adam_grad_begin(mt_optim_obj_t *self_in, mt_optim_slot_t *slot, mt_grad_dest_t *dest) {
    (void)self_in;
    float *grad = adam_moment(slot, 0);
    for (size_t i = 0; i < slot->param->size; i++) {
        grad[i] = 0.0f;
    }
    dest->data = grad;
    dest->alpha = 1.0f;
    dest->dtype = MT_FLOAT32;
    dest->rng = NULL;
}

// Adam on n elements of the parameter from element `at` (fp32) from g.
static void adam_update(mt_adam_obj_t *self, mt_optim_slot_t *slot, const float *g, size_t at, size_t n) {
    mt_adam_f32_step(&self->p, (float *)slot->param->data + at, g, adam_moment(slot, 1) + at,
        adam_moment(slot, 2) + at, n);
}

static void adam_apply(mt_optim_obj_t *self_in, mt_optim_slot_t *slot, const float *grad, size_t n) {
    if (slot->param->dtype == MT_FLOAT16) {
        mt_adam_f16_step(&((mt_adam_obj_t *)self_in)->p, slot->param->data, grad, adam_moment(slot, 1),
            adam_moment(slot, 2), n, &self_in->rng);
        return;
    }
    adam_update((mt_adam_obj_t *)self_in, slot, grad, 0, n);
}

static void adam_grad_end(mt_optim_obj_t *self_in, mt_optim_slot_t *slot) {
    adam_apply(self_in, slot, adam_moment(slot, 0), slot->param->size);
}

static void adam_apply_rows(mt_optim_obj_t *self_in, mt_optim_slot_t *slot, const int32_t *rows, int k,
    int row_len, const float *grad) {
    for (int j = 0; j < k; j++) {
        size_t at = (size_t)rows[j] * (size_t)row_len;
        if (slot->param->dtype == MT_FLOAT16) {
            mt_adam_f16_step(&((mt_adam_obj_t *)self_in)->p, (uint16_t *)slot->param->data + at,
                grad + (size_t)j * row_len, adam_moment(slot, 1) + at, adam_moment(slot, 2) + at, (size_t)row_len,
                &self_in->rng);
        } else {
            adam_update((mt_adam_obj_t *)self_in, slot, grad + (size_t)j * row_len, at, (size_t)row_len);
        }
    }
}

static const mt_int8_sgd_t *adam_int8(mt_optim_obj_t *self) {
    (void)self;
    return NULL;
}

static const mt_optim_ops_t adam_ops = {
    .step_begin = adam_step_begin,
    .grad_begin = adam_grad_begin,
    .grad_end = adam_grad_end,
    .apply = adam_apply,
    .apply_rows = adam_apply_rows,
    .int8_sgd = adam_int8,
};

// lr > 0 and finite, in the constructor and as a setter alike.
static float adam_lr(mp_obj_t obj) {
    return mt_optim_float_arg(obj, "Adam", "lr", 0.0f, false, INFINITY);
}

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
    self->base.name = "Adam";
    self->p.lr = args[ARG_lr].u_obj ? adam_lr(args[ARG_lr].u_obj) : 0.001f;
    self->p.beta1 = 0.9f;
    self->p.beta2 = 0.999f;
    if (args[ARG_betas].u_obj != mp_const_none) {
        mp_obj_t *betas;
        mp_obj_get_array_fixed_n(args[ARG_betas].u_obj, 2, &betas);
        self->p.beta1 = mt_optim_float_arg(betas[0], "Adam", "betas[0]", 0.0f, true, 1.0f);
        self->p.beta2 = mt_optim_float_arg(betas[1], "Adam", "betas[1]", 0.0f, true, 1.0f);
    }
    self->p.eps = args[ARG_eps].u_obj != mp_const_none
        ? mt_optim_float_arg(args[ARG_eps].u_obj, "Adam", "eps", 0.0f, false, INFINITY) : 1e-8f;
    self->p.weight_decay = mt_optim_float_arg(args[ARG_weight_decay].u_obj, "Adam", "weight_decay", 0.0f, true,
        INFINITY);
    self->p.step = 0;
    mt_optim_init_params(&self->base, args[ARG_model].u_obj, 3, false, args[ARG_update].u_obj);
    return MP_OBJ_FROM_PTR(self);
}

static void adam_attr(mp_obj_t self_in, qstr attr, mp_obj_t *dest) {
    mt_adam_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (dest[0] == MP_OBJ_SENTINEL) {
        if (attr == MP_QSTR_lr && dest[1] != MP_OBJ_NULL) {
            self->p.lr = adam_lr(dest[1]);
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
