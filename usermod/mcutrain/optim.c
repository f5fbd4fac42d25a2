// The parts SGD and Adam share: the state they own, one slot per parameter of the model
// they were built for (optim.h), the checks before any update, the gradient-sink interface
// layers call (grad_sink.h), and opt.step()/zero_grad()/memory().
#include <math.h>
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

float mt_optim_float_arg(mp_obj_t obj, const char *opt, const char *what, float lo, bool lo_ok, float hi) {
    float v = (float)mp_obj_get_float(obj);
    if (!(isfinite(v) && (v > lo || (lo_ok && v == lo)) && v < hi)) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s: %s must be in %c%g, %g), not %g"), opt, what,
            lo_ok ? '[' : '(', (double)lo, (double)hi, (double)v);
    }
    return v;
}

/******************************************************************************/
// State: sized for what the layer's policy can change, checked before every step

static bool is_int8_layer(const mt_layer_obj_t *layer) {
    return layer->dtype == MT_INT8 || mt_layer_is_mixed(layer);
}

// Parameter elements the slot's state must cover under this optimizer's policy for the
// layer (int8 and mixed layers update with their own int8 SGD, which keeps no state).
static size_t needed_elems(const mt_optim_obj_t *self, const mt_optim_slot_t *slot) {
    if (self->per_param == 0 || slot->param == NULL || is_int8_layer(slot->layer)) {
        return 0;
    }
    return mt_update_state_elems(slot->layer, &slot->policy, slot->param);
}

// Grows a slot's state to cover `elems` parameter elements, keeping what it has (the
// covered elements are the leading ones in either size). Only when layer.trainable was set
// after the optimizer was built, never per step.
static void grow_state(mt_optim_obj_t *self, mt_optim_slot_t *slot, size_t elems) {
    size_t esize = mt_dtype_size(slot->state_dtype);
    if (elems > SIZE_MAX / esize / self->per_param) {
        mp_raise_msg_varg(&mp_type_MemoryError, MP_ERROR_TEXT("%s: state of %u elements overflows"), self->name,
            (unsigned)elems);
    }
    size_t bytes = elems * esize * self->per_param;
    uint8_t *state = m_malloc_maybe(bytes);
    if (state == NULL) {
        mp_raise_msg_varg(&mp_type_MemoryError, MP_ERROR_TEXT("%s: cannot allocate %u bytes of state"), self->name,
            (unsigned)bytes);
    }
    memset(state, 0, bytes);
    for (size_t b = 0; b < self->per_param && slot->elems; b++) {
        memcpy(state + b * elems * esize, (uint8_t *)slot->state + b * slot->elems * esize, slot->elems * esize);
    }
    slot->state = state;
    slot->elems = elems;
}

// Everything a step relies on, checked before any kernel writes: the model's parameters
// are still those the slots hold (fold_into may add a bias), int8 layers have an optimizer
// that can train them, and every state covers what this optimizer's policy updates.
static void prepare_step(mt_optim_obj_t *self) {
    for (size_t i = 0; i < self->n_slots; i++) {
        mt_optim_slot_t *slot = &self->slots[i];
        mt_layer_obj_t *layer = slot->layer;
        if (((i & 1) ? layer->bias : layer->weight) != slot->param) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("%s: a %q's parameters changed: build a new optimizer"), self->name,
                mt_layer_name(layer));
        }
        if (slot->param != NULL && is_int8_layer(layer) && layer->trainable && self->ops->int8_sgd(self) == NULL) {
            mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%q: %q layers train with mt.SGD without momentum"),
                mt_layer_name(layer), mt_layer_dtype_qstr(layer));
        }
        size_t elems = needed_elems(self, slot);
        if (elems > slot->elems) {
            grow_state(self, slot, elems);
        }
    }
}

typedef struct {
    mt_optim_obj_t *optim;
    size_t at;
    bool with_policy;
} slots_ctx_t;

static void count_leaf(mt_layer_obj_t *leaf, const char *name, void *ctx) {
    (void)name;
    ((slots_ctx_t *)ctx)->at += leaf->weight != NULL || leaf->bias != NULL ? 2 : 0;
}

static void fill_leaf(mt_layer_obj_t *leaf, const char *name, void *ctx_in) {
    (void)name;
    slots_ctx_t *ctx = ctx_in;
    if (leaf->weight == NULL && leaf->bias == NULL) {
        return;
    }
    mt_tensor_obj_t *params[2] = { leaf->weight, leaf->bias };
    for (size_t i = 0; i < 2; i++) {
        mt_optim_slot_t *slot = &ctx->optim->slots[ctx->at++];
        slot->param = params[i];
        slot->layer = leaf;
        slot->state = NULL;
        slot->elems = 0;
        slot->state_dtype = params[i] != NULL && ctx->optim->f16_state && params[i]->dtype == MT_FLOAT16
            ? MT_FLOAT16 : MT_FLOAT32;
        // Built with update=: what it set on the layer; without: a full update.
        slot->policy = ctx->with_policy ? leaf->update : (mt_update_t) { .kind = MT_UPDATE_FULL };
        slot->policy.selection = NULL;
        slot->policy.selected = 0;
    }
}

// Makes this optimizer's policies the layers' active ones (backward reads them there);
// true if any changed, and then the model plans again (the compact path's scratch).
static bool activate_policies(mt_optim_obj_t *self) {
    bool changed = false;
    for (size_t i = 0; i < self->n_slots; i += 2) {
        changed |= mt_update_activate(self->slots[i].layer, &self->slots[i].policy);
    }
    if (changed) {
        ((mt_layer_obj_t *)MP_OBJ_TO_PTR(self->model))->planned = false;
    }
    return changed;
}

void mt_optim_init_params(mt_optim_obj_t *self, mp_obj_t model, size_t per_param, bool f16_state,
    mp_obj_t update) {
    mt_layer_obj_t *layer = mt_layer_get(model, "model");
    if (layer->owned) {
        // Its policies would apply inside the container's passes, which planned no scratch
        // for them; and the layer trains only as part of the container.
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s: this %q is part of a model: optimize the model"),
            self->name, mt_layer_name(layer));
    }
    if (update != mp_const_none) {
        mt_update_apply(model, update);
    }
    self->model = model;
    self->per_param = (uint8_t)per_param;
    self->f16_state = f16_state;
    self->max_loss = 0.0f;
    self->cursor = 0;
    // Peeked, not drawn: creating an optimizer leaves the initialization sequence alone.
    self->rng.state = mt_random_peek();
    slots_ctx_t ctx = { self, 0, update != mp_const_none };
    mt_layer_visit(layer, count_leaf, &ctx);
    self->n_slots = ctx.at;
    self->slots = m_new0(mt_optim_slot_t, ctx.at ? ctx.at : 1);
    ctx.at = 0;
    mt_layer_visit(layer, fill_leaf, &ctx);
    // The last optimizer built has its policies active (memory() and update_stats() say so).
    activate_policies(self);
    // A fresh optimizer starts from zero state, allocated now so train_step will not.
    prepare_step(self);
    // model.memory() reports the state of the last optimizer built for the model.
    layer->optim = MP_OBJ_FROM_PTR(self);
}

size_t mt_optim_state_bytes(mp_obj_t opt) {
    const mt_optim_obj_t *self = mt_optim_get(opt);
    size_t bytes = 0;
    for (size_t i = 0; i < self->n_slots; i++) {
        bytes += self->slots[i].elems * self->per_param * mt_dtype_size(self->slots[i].state_dtype);
    }
    return bytes;
}

/******************************************************************************/
// grad_sink.h: what a backward pass calls

static mt_optim_obj_t *optim_of_model(mp_obj_t opt, mt_layer_obj_t *model, const char *what) {
    mt_optim_obj_t *self = mt_optim_get(opt);
    if (MP_OBJ_TO_PTR(self->model) != model) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s: this %s was built for another model"), what,
            self->name);
    }
    if (model->owned) {
        // Built before the layer joined a container: it trains only as part of that now.
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s: this %q is part of a model: run the model"),
            what, mt_layer_name(model));
    }
    return self;
}

void mt_optim_activate(mp_obj_t opt, mt_layer_obj_t *model, const char *what) {
    activate_policies(optim_of_model(opt, model, what));
}

mt_optim_obj_t *mt_optim_begin_pass(mp_obj_t opt, mt_layer_obj_t *model, const char *what) {
    mt_optim_obj_t *self = optim_of_model(opt, model, what);
    if (activate_policies(self)) {
        // backward(dy, opt) after a forward planned under another optimizer's policies:
        // the compact path's scratch may be missing.
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%s: %s's update policy is new here: run forward again"), what, self->name);
    }
    prepare_step(self);
    self->ops->step_begin(self);
    return self;
}

float mt_optim_loss_ratio(mt_optim_obj_t *self, float loss) {
    if (loss > self->max_loss) {
        self->max_loss = loss;
    }
    return self->max_loss > 0.0f ? loss / self->max_loss : 1.0f;
}

// The slot of `param`. Backward asks for a layer's weight, its bias, then the layer
// before's: searching down from just after the last one finds each in a step or few.
static mt_optim_slot_t *find_slot(mt_optim_obj_t *self, const mt_tensor_obj_t *param) {
    size_t n = self->n_slots, j = self->cursor + 1 < n ? self->cursor + 1 : 0;
    for (size_t i = 0; i < n; i++) {
        if (self->slots[j].param == param) {
            self->cursor = j;
            return &self->slots[j];
        }
        j = j ? j - 1 : n - 1;
    }
    mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s: not a parameter of the model it was built for"),
        self->name);
}

// The kernels write `elems` elements of the slot's parameter and state: refuse first.
static void check_covers(mt_optim_obj_t *self, const mt_optim_slot_t *slot, size_t elems) {
    if (elems > slot->param->size || (self->per_param && elems > slot->elems)) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s: state of %q covers %u of %u elements"),
            self->name, mt_layer_name(slot->layer), (unsigned)slot->elems, (unsigned)elems);
    }
}

void mt_optim_grad_begin(mt_optim_obj_t *self, mt_tensor_obj_t *param, mt_grad_dest_t *dest) {
    mt_optim_slot_t *slot = find_slot(self, param);
    check_covers(self, slot, param->size);
    self->ops->grad_begin(self, slot, dest);
}

void mt_optim_grad_end(mt_optim_obj_t *self, mt_tensor_obj_t *param) {
    self->ops->grad_end(self, find_slot(self, param));
}

void mt_optim_apply_rows(mt_optim_obj_t *self, mt_tensor_obj_t *param, const int32_t *rows, int k,
    int row_len, const float *grad) {
    mt_optim_slot_t *slot = find_slot(self, param);
    if (k > 0) {
        check_covers(self, slot, ((size_t)rows[k - 1] + 1) * (size_t)row_len);
        self->ops->apply_rows(self, slot, rows, k, row_len, grad);
    }
}

const mt_int8_sgd_t *mt_optim_int8_sgd(mt_optim_obj_t *self) {
    return self->ops->int8_sgd(self);
}

/******************************************************************************/
// step(), zero_grad(), memory()

// The gradient of a slot's parameter if it has a valid one (step() and zero_grad() run
// kernels over it), else NULL.
static mt_tensor_obj_t *slot_grad(const mt_optim_obj_t *self, const mt_optim_slot_t *slot) {
    if (slot->param == NULL || slot->param->grad == mp_const_none) {
        return NULL;
    }
    mt_tensor_obj_t *g = MP_OBJ_TO_PTR(slot->param->grad);
    bool is_tensor = mp_obj_is_type(slot->param->grad, &mt_tensor_type);
    if (is_tensor) {
        // A frombuffer .grad: its bytearray may have moved (ValueError if it shrank).
        mt_tensor_sync(g);
    }
    if (!is_tensor || g->dtype != MT_FLOAT32 || g->size != slot->param->size) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s: a %q's .grad is not float32 of its shape"),
            self->name, mt_layer_name(slot->layer));
    }
    return g;
}

// How many leading elements of a slot's parameter step() updates under this optimizer's policy
// (0: none), or ValueError for what step() cannot do.
static size_t step_elems(mt_optim_obj_t *self, const mt_optim_slot_t *slot) {
    if (slot_grad(self, slot) == NULL) {
        return 0;
    }
    mt_layer_obj_t *layer = slot->layer;
    if (is_int8_layer(layer)) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%q: %q layers update in train_step or backward(dy, opt)"), mt_layer_name(layer),
            mt_layer_dtype_qstr(layer));
    }
    if (!layer->trainable) {
        return 0;
    }
    switch (slot->policy.kind) {
        case MT_UPDATE_BIAS_ONLY:
            return slot->param == layer->bias ? slot->param->size : 0;
        case MT_UPDATE_CHANNELS:
            // The policy's leading rows: the same elements its state covers.
            return mt_update_state_elems(layer, &slot->policy, slot->param);
        case MT_UPDATE_TOPK:
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("%s.step: TopK picks rows by error in train_step/backward(dy, opt)"), self->name);
        default:
            return slot->param->size;
    }
}

// step(): updates every parameter that has a .grad (after model.backward) as this
// optimizer's policies say (whichever optimizer's are active on the layers): frozen layers stay, BiasOnly updates biases, ChannelRatio its leading rows;
// TopK and int8 layers raise (they update inside train_step/backward(dy, opt)). Checks
// everything before updating anything.
static mp_obj_t optim_step(mp_obj_t self_in) {
    mt_optim_obj_t *self = mt_optim_get(self_in);
    prepare_step(self);
    for (size_t i = 0; i < self->n_slots; i++) {
        step_elems(self, &self->slots[i]);
    }
    self->ops->step_begin(self);
    for (size_t i = 0; i < self->n_slots; i++) {
        mt_optim_slot_t *slot = &self->slots[i];
        size_t n = step_elems(self, slot);
        if (n) {
            check_covers(self, slot, n);
            self->ops->apply(self, slot, mt_tensor_f32(slot_grad(self, slot)), n);
        }
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(optim_step_obj, optim_step);

// zero_grad(): zeroes the parameters' .grad tensors.
static mp_obj_t optim_zero_grad(mp_obj_t self_in) {
    mt_optim_obj_t *self = mt_optim_get(self_in);
    for (size_t i = 0; i < self->n_slots; i++) {
        mt_tensor_obj_t *g = slot_grad(self, &self->slots[i]);
        if (g != NULL) {
            memset(g->data, 0, g->size * sizeof(float));
        }
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(optim_zero_grad_obj, optim_zero_grad);

// memory() -> bytes of optimizer state: only for what the update policy can change.
static mp_obj_t optim_memory(mp_obj_t self_in) {
    return mp_obj_new_int_from_uint(mt_optim_state_bytes(self_in));
}
static MP_DEFINE_CONST_FUN_OBJ_1(optim_memory_obj, optim_memory);

static const mp_rom_map_elem_t optim_locals_dict_table[] = {
    { MP_ROM_QSTR(MP_QSTR_step), MP_ROM_PTR(&optim_step_obj) },
    { MP_ROM_QSTR(MP_QSTR_zero_grad), MP_ROM_PTR(&optim_zero_grad_obj) },
    { MP_ROM_QSTR(MP_QSTR_memory), MP_ROM_PTR(&optim_memory_obj) },
};
MP_DEFINE_CONST_DICT(mt_optim_locals_dict, optim_locals_dict_table);
