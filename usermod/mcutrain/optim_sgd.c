// mt.SGD(model, lr, momentum=0, weight_decay=0, update=None, standardize=False,
// rounding='nearest'): the update fused into the weight-gradient pass, so no gradient
// buffer exists (see kernels/optim_f32.h). standardize and rounding apply to int8 layers.
#include <math.h>

#include "py/runtime.h"
#include "optim.h"
#include "kernels/optim_f32.h"
#include "kernels/optim_f16.h"

typedef struct {
    mt_optim_obj_t base;
    mt_sgd_params_t p;
    mt_int8_sgd_t int8;    // the same lr and weight decay, and the int8-only settings
} mt_sgd_obj_t;

static void sgd_step_begin(mt_optim_obj_t *self) {
    (void)self;
}

// The velocity of a parameter: in its own dtype (an fp16 velocity is enough for momentum,
// see kernels/optim_f16.h), or NULL without momentum.
static inline void *sgd_velocity(const mt_optim_slot_t *slot) {
    return slot->state;
}

static void sgd_grad_begin(mt_optim_obj_t *self_in, mt_optim_slot_t *slot, mt_grad_dest_t *dest) {
    mt_sgd_obj_t *self = (mt_sgd_obj_t *)self_in;
    mt_tensor_obj_t *param = slot->param;
    void *velocity = sgd_velocity(slot);
    if (param->dtype == MT_FLOAT16) {
        mt_sgd_f16_fused_begin_v16(&self->p, param->data, velocity, param->size, &self_in->rng);
        dest->dtype = MT_FLOAT16;
        dest->rng = &self_in->rng;
    } else {
        mt_sgd_f32_fused_begin(&self->p, param->data, velocity, param->size);
        dest->dtype = MT_FLOAT32;
        dest->rng = NULL;
    }
    // With momentum the gradient adds into the velocity; without, straight into w.
    dest->alpha = velocity ? 1.0f : -self->p.lr;
    dest->data = velocity ? velocity : param->data;
}

static void sgd_grad_end(mt_optim_obj_t *self_in, mt_optim_slot_t *slot) {
    mt_sgd_obj_t *self = (mt_sgd_obj_t *)self_in;
    mt_tensor_obj_t *param = slot->param;
    if (param->dtype == MT_FLOAT16) {
        mt_sgd_f16_fused_end_v16(&self->p, param->data, sgd_velocity(slot), param->size, &self_in->rng);
    } else {
        mt_sgd_f32_fused_end(&self->p, param->data, sgd_velocity(slot), param->size);
    }
}

static void sgd_apply(mt_optim_obj_t *self_in, mt_optim_slot_t *slot, const float *grad, size_t n) {
    mt_sgd_obj_t *self = (mt_sgd_obj_t *)self_in;
    mt_tensor_obj_t *param = slot->param;
    if (param->dtype == MT_FLOAT16) {
        mt_sgd_f16_step_v16(&self->p, param->data, grad, sgd_velocity(slot), n, &self_in->rng);
    } else {
        mt_sgd_f32_step(&self->p, param->data, grad, sgd_velocity(slot), n);
    }
}

static void sgd_apply_rows(mt_optim_obj_t *self_in, mt_optim_slot_t *slot, const int32_t *rows, int k,
    int row_len, const float *grad) {
    // Partial updates of float32, float16 and mixed layers (int8 layers update in their
    // own kernels).
    mt_sgd_obj_t *self = (mt_sgd_obj_t *)self_in;
    void *velocity = sgd_velocity(slot);
    for (int j = 0; j < k; j++) {
        size_t at = (size_t)rows[j] * (size_t)row_len;
        const float *g = grad + (size_t)j * row_len;
        if (slot->param->dtype == MT_FLOAT16) {
            mt_sgd_f16_step_v16(&self->p, (uint16_t *)slot->param->data + at, g,
                velocity ? (uint16_t *)velocity + at : NULL, (size_t)row_len, &self_in->rng);
        } else {
            mt_sgd_f32_step(&self->p, (float *)slot->param->data + at, g, velocity ? (float *)velocity + at : NULL,
                (size_t)row_len);
        }
    }
}

static const mt_int8_sgd_t *sgd_int8(mt_optim_obj_t *self_in) {
    mt_sgd_obj_t *self = (mt_sgd_obj_t *)self_in;
    self->int8.lr = self->p.lr;
    self->int8.weight_decay = self->p.weight_decay;
    return self->p.momentum == 0.0f ? &self->int8 : NULL;
}

static bool rounding_arg(mp_obj_t obj) {
    if (mp_obj_is_str(obj)) {
        qstr q = mp_obj_str_get_qstr(obj);
        if (q == MP_QSTR_stochastic || q == MP_QSTR_nearest) {
            return q == MP_QSTR_stochastic;
        }
    }
    mp_raise_ValueError(MP_ERROR_TEXT("SGD: rounding must be 'stochastic' or 'nearest'"));
}

static const mt_optim_ops_t sgd_ops = {
    .step_begin = sgd_step_begin,
    .grad_begin = sgd_grad_begin,
    .grad_end = sgd_grad_end,
    .apply = sgd_apply,
    .apply_rows = sgd_apply_rows,
    .int8_sgd = sgd_int8,
};

// Every rate is finite; lr > 0, momentum in [0, 1), weight_decay >= 0.
static float sgd_lr(mp_obj_t obj) {
    return mt_optim_float_arg(obj, "SGD", "lr", 0.0f, false, INFINITY);
}

static mp_obj_t sgd_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_model, ARG_lr, ARG_momentum, ARG_weight_decay, ARG_update, ARG_standardize, ARG_rounding };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_model, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_lr, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_momentum, MP_ARG_OBJ, {.u_obj = MP_OBJ_NEW_SMALL_INT(0)} },
        { MP_QSTR_weight_decay, MP_ARG_OBJ, {.u_obj = MP_OBJ_NEW_SMALL_INT(0)} },
        { MP_QSTR_update, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_standardize, MP_ARG_KW_ONLY | MP_ARG_BOOL, {.u_bool = false} },
        { MP_QSTR_rounding, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = MP_OBJ_NEW_QSTR(MP_QSTR_nearest)} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mt_sgd_obj_t *self = mp_obj_malloc(mt_sgd_obj_t, type);
    self->base.ops = &sgd_ops;
    self->base.name = "SGD";
    self->p.lr = sgd_lr(args[ARG_lr].u_obj);
    self->p.momentum = mt_optim_float_arg(args[ARG_momentum].u_obj, "SGD", "momentum", 0.0f, true, 1.0f);
    self->p.weight_decay = mt_optim_float_arg(args[ARG_weight_decay].u_obj, "SGD", "weight_decay", 0.0f, true,
        INFINITY);
    self->int8.standardize = args[ARG_standardize].u_bool;
    self->int8.stochastic_rounding = rounding_arg(args[ARG_rounding].u_obj);
    mt_optim_init_params(&self->base, args[ARG_model].u_obj, self->p.momentum != 0.0f ? 1 : 0, true,
        args[ARG_update].u_obj);
    return MP_OBJ_FROM_PTR(self);
}

// lr is settable for schedules; the other settings are read-only.
static void sgd_attr(mp_obj_t self_in, qstr attr, mp_obj_t *dest) {
    mt_sgd_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (dest[0] == MP_OBJ_SENTINEL) {
        if (attr == MP_QSTR_lr && dest[1] != MP_OBJ_NULL) {
            self->p.lr = sgd_lr(dest[1]);
            dest[0] = MP_OBJ_NULL;
        }
        return;
    }
    if (attr == MP_QSTR_lr) {
        dest[0] = mp_obj_new_float_from_f(self->p.lr);
    } else if (attr == MP_QSTR_momentum) {
        dest[0] = mp_obj_new_float_from_f(self->p.momentum);
    } else if (attr == MP_QSTR_weight_decay) {
        dest[0] = mp_obj_new_float_from_f(self->p.weight_decay);
    } else if (attr == MP_QSTR_standardize) {
        dest[0] = mp_obj_new_bool(self->int8.standardize);
    } else if (attr == MP_QSTR_rounding) {
        dest[0] = MP_OBJ_NEW_QSTR(self->int8.stochastic_rounding ? MP_QSTR_stochastic : MP_QSTR_nearest);
    } else {
        dest[1] = MP_OBJ_SENTINEL;
    }
}

static void sgd_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_sgd_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "SGD(lr=%f, momentum=%f, weight_decay=%f)", (double)self->p.lr,
        (double)self->p.momentum, (double)self->p.weight_decay);
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_sgd_type,
    MP_QSTR_SGD,
    MP_TYPE_FLAG_NONE,
    make_new, sgd_make_new,
    print, sgd_print,
    attr, sgd_attr,
    locals_dict, &mt_optim_locals_dict
    );
