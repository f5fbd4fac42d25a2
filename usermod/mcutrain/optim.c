// The parts SGD and Adam share: parameter state and opt.step().
#include <string.h>

#include "py/runtime.h"
#include "layer.h"
#include "optim.h"
#include "partial_update.h"
#include "random.h"

mt_optim_obj_t *mt_optim_get(mp_obj_t obj) {
    const mp_obj_type_t *type = mp_obj_is_obj(obj) ? ((mp_obj_base_t *)MP_OBJ_TO_PTR(obj))->type : NULL;
    if (type == NULL || MP_OBJ_TYPE_GET_SLOT_OR_NULL(type, locals_dict) != &mt_optim_locals_dict) {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("opt must be mt.SGD or mt.Adam, not %s"),
            mp_obj_get_type_str(obj));
    }
    return MP_OBJ_TO_PTR(obj);
}

void *mt_optim_state(mt_optim_obj_t *self, mt_tensor_obj_t *param, size_t per_param, mt_dtype_t dtype) {
    (void)self;
    if (per_param == 0) {
        return NULL;
    }
    if (param->opt_state == MP_OBJ_NULL) {
        mt_shape_t shape = { .ndim = 1, .dim = { (int32_t)(per_param * param->size) } };
        param->opt_state = MP_OBJ_FROM_PTR(mt_tensor_new(&shape, dtype, "optimizer state"));
    }
    return ((mt_tensor_obj_t *)MP_OBJ_TO_PTR(param->opt_state))->data;
}

size_t mt_optim_state_elems(const mt_tensor_obj_t *param, size_t floats_per_param) {
    const mt_tensor_obj_t *state = MP_OBJ_TO_PTR(param->opt_state);
    return state->size / floats_per_param;
}

typedef struct {
    size_t floats_per_param;
    bool f16_state;
    mt_optim_obj_t *optim;
} init_ctx_t;

static void init_leaf(mt_layer_obj_t *leaf, const char *name, void *ctx_in) {
    init_ctx_t *ctx = ctx_in;
    if ((leaf->dtype == MT_INT8 || mt_layer_is_mixed(leaf)) && leaf->weight != NULL && leaf->trainable
        && ctx->optim->ops->int8_sgd(ctx->optim) == NULL) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%q at %s: %q layers train with mt.SGD without momentum"),
            mt_layer_name(leaf), *name ? name : qstr_str(mt_layer_name(leaf)), mt_layer_dtype_qstr(leaf));
    }
    mt_tensor_obj_t *params[2] = { leaf->weight, leaf->bias };
    for (size_t i = 0; i < 2; i++) {
        if (params[i] == NULL) {
            continue;
        }
        // A fresh optimizer starts from zero state, sized for what the policy updates.
        params[i]->opt_state = MP_OBJ_NULL;
        size_t n = mt_update_state_elems(leaf, params[i]) * ctx->floats_per_param;
        if (n) {
            mt_shape_t shape = { .ndim = 1, .dim = { (int32_t)n } };
            params[i]->opt_state = MP_OBJ_FROM_PTR(mt_tensor_new(&shape,
                mt_optim_state_dtype(params[i], ctx->f16_state), "optimizer state"));
        }
    }
}

void mt_optim_init_params(mt_optim_obj_t *self, mp_obj_t model, size_t floats_per_param, bool f16_state,
    mp_obj_t update) {
    mt_layer_obj_t *layer = mt_layer_get(model, "model");
    if (update != mp_const_none) {
        mt_update_apply(model, update);
    }
    mp_obj_t dest[2];
    mp_load_method(model, MP_QSTR_parameters, dest);
    self->params = mp_call_method_n_kw(0, 0, dest);
    self->max_loss = 0.0f;
    // Peeked, not drawn: creating an optimizer leaves the initialization sequence alone.
    self->rng.state = mt_random_peek();
    init_ctx_t ctx = { floats_per_param, f16_state, self };
    mt_layer_visit(layer, init_leaf, &ctx);
}

// step(): updates every parameter that has a .grad (after model.backward).
static mp_obj_t optim_step(mp_obj_t self_in) {
    mt_optim_obj_t *self = mt_optim_get(self_in);
    self->ops->step_begin(self);
    size_t n;
    mp_obj_t *items;
    mp_obj_get_array(self->params, &n, &items);
    for (size_t i = 0; i < n; i++) {
        mt_tensor_obj_t *p = MP_OBJ_TO_PTR(items[i]);
        if (p->grad != mp_const_none) {
            self->ops->apply(self, p, mt_tensor_f32(MP_OBJ_TO_PTR(p->grad)));
        }
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(optim_step_obj, optim_step);

// zero_grad(): drops the parameters' .grad tensors.
static mp_obj_t optim_zero_grad(mp_obj_t self_in) {
    mt_optim_obj_t *self = mt_optim_get(self_in);
    size_t n;
    mp_obj_t *items;
    mp_obj_get_array(self->params, &n, &items);
    for (size_t i = 0; i < n; i++) {
        mt_tensor_obj_t *p = MP_OBJ_TO_PTR(items[i]);
        if (p->grad != mp_const_none) {
            mt_tensor_obj_t *g = MP_OBJ_TO_PTR(p->grad);
            memset(g->data, 0, g->size * sizeof(float));
        }
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(optim_zero_grad_obj, optim_zero_grad);

// memory() -> bytes of optimizer state: only for what the update policy can change.
static mp_obj_t optim_memory(mp_obj_t self_in) {
    mt_optim_obj_t *self = mt_optim_get(self_in);
    size_t n, bytes = 0;
    mp_obj_t *items;
    mp_obj_get_array(self->params, &n, &items);
    for (size_t i = 0; i < n; i++) {
        mt_tensor_obj_t *p = MP_OBJ_TO_PTR(items[i]);
        if (p->opt_state != MP_OBJ_NULL && self->ops->state_bytes_per_float(self)) {
            const mt_tensor_obj_t *state = MP_OBJ_TO_PTR(p->opt_state);
            bytes += state->size * mt_dtype_size(state->dtype);
        }
    }
    return mp_obj_new_int_from_uint(bytes);
}
static MP_DEFINE_CONST_FUN_OBJ_1(optim_memory_obj, optim_memory);

static const mp_rom_map_elem_t optim_locals_dict_table[] = {
    { MP_ROM_QSTR(MP_QSTR_step), MP_ROM_PTR(&optim_step_obj) },
    { MP_ROM_QSTR(MP_QSTR_zero_grad), MP_ROM_PTR(&optim_zero_grad_obj) },
    { MP_ROM_QSTR(MP_QSTR_memory), MP_ROM_PTR(&optim_memory_obj) },
};
MP_DEFINE_CONST_DICT(mt_optim_locals_dict, optim_locals_dict_table);
