// The habits PyTorch users bring from nn.Module, on every layer and model: calling it runs
// forward, train()/eval() set the mode its calls run in (.training), zero_grad() clears the
// .grad that plain backward() calls accumulate into, named_parameters() names what
// parameters() lists. The memory-explicit API (forward, train_step, predict) is unchanged.
#include <string.h>

#include "py/runtime.h"
#include "layer.h"

// model(x) is model.forward(x) in the model's mode (training unless eval() was called).
mp_obj_t mt_layer_call(mp_obj_t self_in, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 1, 1, true);
    mp_obj_t pos[2] = { self_in, args[0] };
    mp_map_t kw;
    mp_map_init_fixed_table(&kw, n_kw, args + n_args);
    return mt_layer_forward_call(2, pos, &kw);
}

static void set_mode(mt_layer_obj_t *layer, bool training) {
    layer->training = training;
    mt_layer_obj_t *const *children;
    size_t n = mt_layer_children(layer, &children);
    for (size_t i = 0; i < n; i++) {
        if (children[i] != NULL) {
            set_mode(children[i], training);
        }
    }
}

// train(mode=True) -> self: the mode forward(x) and model(x) run in by default, and the one
// train_step runs in (eval: BatchNorm uses and keeps its running statistics, int8 layers
// keep their ranges), for the model and every layer in it, as nn.Module.train does.
static mp_obj_t layer_train(size_t n_args, const mp_obj_t *args) {
    mt_layer_obj_t *self = mt_layer_get(args[0], "self");
    bool mode = true;
    if (n_args > 1) {
        if (!mp_obj_is_bool(args[1])) {
            mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("train: mode must be True or False, not %s"),
                mp_obj_get_type_str(args[1]));
        }
        mode = args[1] == mp_const_true;
    }
    set_mode(self, mode);
    return args[0];
}
MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mt_layer_train_obj, 1, 2, layer_train);

// eval() -> self: train(False).
static mp_obj_t layer_eval(mp_obj_t self_in) {
    set_mode(mt_layer_get(self_in, "self"), false);
    return self_in;
}
MP_DEFINE_CONST_FUN_OBJ_1(mt_layer_eval_obj, layer_eval);

static void zero_leaf_grads(mt_layer_obj_t *leaf, const char *name, void *ctx) {
    (void)name;
    (void)ctx;
    mt_tensor_obj_t *params[] = { leaf->weight, leaf->bias };
    for (size_t i = 0; i < MP_ARRAY_SIZE(params); i++) {
        if (params[i] == NULL || !mp_obj_is_type(params[i]->grad, &mt_tensor_type)) {
            continue;
        }
        mt_tensor_obj_t *g = MP_OBJ_TO_PTR(params[i]->grad);
        mt_tensor_sync(g);  // a frombuffer .grad whose bytearray moved
        memset(g->data, 0, g->size * mt_dtype_size(g->dtype));
    }
}

// zero_grad() -> None: every parameter's .grad to zeros (kept, so the next backward
// allocates nothing), as opt.zero_grad() does for the parameters of its model.
static mp_obj_t layer_zero_grad(mp_obj_t self_in) {
    mt_layer_visit(mt_layer_get(self_in, "self"), zero_leaf_grads, NULL);
    return mp_const_none;
}
MP_DEFINE_CONST_FUN_OBJ_1(mt_layer_zero_grad_obj, layer_zero_grad);

// named_parameters() -> [(name, Tensor), ...]: the trainable tensors parameters() lists,
// with their state_dict names ("0.weight"), in the same order.
static mp_obj_t layer_named_parameters(mp_obj_t self_in) {
    mt_layer_obj_t *self = mt_layer_get(self_in, "self");
    mp_obj_t dict = mt_new_ordered_dict(0);
    mt_layer_collect_params(self, MP_OBJ_NULL, dict, true);
    mp_map_t *map = mp_obj_dict_get_map(dict);
    mp_obj_t list = mp_obj_new_list(0, NULL);
    for (size_t i = 0; i < map->alloc; i++) {
        if (mp_map_slot_is_filled(map, i)) {
            mp_obj_t pair[2] = { map->table[i].key, map->table[i].value };
            mp_obj_list_append(list, mp_obj_new_tuple(2, pair));
        }
    }
    return list;
}
MP_DEFINE_CONST_FUN_OBJ_1(mt_layer_named_parameters_obj, layer_named_parameters);
