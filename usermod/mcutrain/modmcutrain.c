// _mcutrain: the C half of mcutrain. Bindings only check and convert arguments;
// the work is done by the plain-C kernels under kernels/.
#include "py/runtime.h"
#include "py/objstr.h"
#include "perf_counter.h"
#include "kernels/dot_f32.h"
#include "tensor.h"
#include "layer.h"
#include "loss.h"
#include "random.h"

#define MCUTRAIN_VERSION "0.1.0"

#if !MICROPY_PY_BUILTINS_FLOAT
#error "_mcutrain needs a firmware with float support"
#endif

static MP_DEFINE_STR_OBJ(mcutrain_version_str_obj, MCUTRAIN_VERSION);
static MP_DEFINE_STR_OBJ(mcutrain_perf_unit_str_obj, MCUTRAIN_PERF_UNIT);

static mp_obj_t mcutrain_version(void) {
    return MP_OBJ_FROM_PTR(&mcutrain_version_str_obj);
}
static MP_DEFINE_CONST_FUN_OBJ_0(mcutrain_version_obj, mcutrain_version);

// Counts spent inside perf_counter() itself, left out of the values it returns.
static uint64_t perf_counter_own_cost;

static mp_obj_t mcutrain_perf_counter(void) {
    // The result passes 2**30 within a second of emulated time, so it is a heap
    // integer, and an allocation's cost depends on the heap's state. Leaving this
    // call's own cost out of the count makes t1 - t0 depend on the work between
    // the calls only: exactly repeatable on the emulated boards.
    uint64_t start = mcutrain_board_perf_counter();
    mp_obj_t result = mp_obj_new_int_from_ull(start - perf_counter_own_cost);
    perf_counter_own_cost += mcutrain_board_perf_counter_end() - start;
    return result;
}
static MP_DEFINE_CONST_FUN_OBJ_0(mcutrain_perf_counter_obj, mcutrain_perf_counter);

// A read-only float32 view of a buffer-protocol object ('f' typecode).
static const float *float32_buffer(mp_obj_t obj, const char *name, size_t *len) {
    mp_buffer_info_t info;
    if (!mp_get_buffer(obj, &info, MP_BUFFER_READ)) {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("dot: %s must be a float32 buffer (array('f')), not %s"),
            name, mp_obj_get_type_str(obj));
    }
    if (info.typecode != 'f') {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("dot: %s must have typecode 'f', not '%c'"), name, info.typecode);
    }
    if (((uintptr_t)info.buf & (sizeof(float) - 1)) != 0) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("dot: %s is not 4-byte aligned"), name);
    }
    *len = info.len / sizeof(float);
    return info.buf;
}

static mp_obj_t mcutrain_dot(mp_obj_t a_obj, mp_obj_t b_obj) {
    size_t na, nb;
    const float *a = float32_buffer(a_obj, "a", &na);
    const float *b = float32_buffer(b_obj, "b", &nb);
    if (na != nb) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("dot: lengths differ (%u and %u)"), (unsigned)na, (unsigned)nb);
    }
    return mp_obj_new_float((mp_float_t)mt_dot_f32(a, b, na));
}
static MP_DEFINE_CONST_FUN_OBJ_2(mcutrain_dot_obj, mcutrain_dot);

// seed(n): restarts the random numbers used for parameter initialization.
static mp_obj_t mcutrain_seed(mp_obj_t seed) {
    mt_random_seed((uint32_t)mp_obj_get_int_truncated(seed));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(mcutrain_seed_obj, mcutrain_seed);

// Runs at each first import after a (soft) reset: every script starts from seed 0.
static mp_obj_t mcutrain_init(void) {
    mt_random_seed(0);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_0(mcutrain_init_obj, mcutrain_init);

extern const mp_obj_type_t mt_linear_type, mt_conv2d_type, mt_conv1d_type, mt_relu_type,
    mt_relu6_type, mt_softmax_type, mt_maxpool2d_type, mt_avgpool2d_type, mt_global_avgpool_type,
    mt_flatten_type, mt_batchnorm2d_type, mt_add_type, mt_convert_type, mt_sequential_type, mt_residual_type,
    mt_sgd_type, mt_adam_type;
extern const mp_obj_fun_builtin_var_t mt_zeros_obj, mt_frombuffer_obj, mt_policy_topk_obj;
extern const mp_obj_fun_builtin_fixed_t mt_policy_full_obj, mt_policy_frozen_obj, mt_policy_bias_only_obj,
    mt_policy_last_layers_obj, mt_policy_channel_ratio_obj;

static const mp_rom_map_elem_t mcutrain_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___init__), MP_ROM_PTR(&mcutrain_init_obj) },
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR__mcutrain) },
    { MP_ROM_QSTR(MP_QSTR___version__), MP_ROM_PTR(&mcutrain_version_str_obj) },
    { MP_ROM_QSTR(MP_QSTR_version), MP_ROM_PTR(&mcutrain_version_obj) },
    { MP_ROM_QSTR(MP_QSTR_perf_counter), MP_ROM_PTR(&mcutrain_perf_counter_obj) },
    { MP_ROM_QSTR(MP_QSTR_PERF_UNIT), MP_ROM_PTR(&mcutrain_perf_unit_str_obj) },
    { MP_ROM_QSTR(MP_QSTR_dot), MP_ROM_PTR(&mcutrain_dot_obj) },
    { MP_ROM_QSTR(MP_QSTR_seed), MP_ROM_PTR(&mcutrain_seed_obj) },
    { MP_ROM_QSTR(MP_QSTR_float32), MP_ROM_QSTR(MP_QSTR_float32) },
    { MP_ROM_QSTR(MP_QSTR_float16), MP_ROM_QSTR(MP_QSTR_float16) },
    { MP_ROM_QSTR(MP_QSTR_int8), MP_ROM_QSTR(MP_QSTR_int8) },
    { MP_ROM_QSTR(MP_QSTR_mixed), MP_ROM_QSTR(MP_QSTR_mixed) },
    { MP_ROM_QSTR(MP_QSTR_Tensor), MP_ROM_PTR(&mt_tensor_type) },
    { MP_ROM_QSTR(MP_QSTR_zeros), MP_ROM_PTR(&mt_zeros_obj) },
    { MP_ROM_QSTR(MP_QSTR_frombuffer), MP_ROM_PTR(&mt_frombuffer_obj) },
    { MP_ROM_QSTR(MP_QSTR_Linear), MP_ROM_PTR(&mt_linear_type) },
    { MP_ROM_QSTR(MP_QSTR_Conv2d), MP_ROM_PTR(&mt_conv2d_type) },
    { MP_ROM_QSTR(MP_QSTR_Conv1d), MP_ROM_PTR(&mt_conv1d_type) },
    { MP_ROM_QSTR(MP_QSTR_ReLU), MP_ROM_PTR(&mt_relu_type) },
    { MP_ROM_QSTR(MP_QSTR_ReLU6), MP_ROM_PTR(&mt_relu6_type) },
    { MP_ROM_QSTR(MP_QSTR_Softmax), MP_ROM_PTR(&mt_softmax_type) },
    { MP_ROM_QSTR(MP_QSTR_MaxPool2d), MP_ROM_PTR(&mt_maxpool2d_type) },
    { MP_ROM_QSTR(MP_QSTR_AvgPool2d), MP_ROM_PTR(&mt_avgpool2d_type) },
    { MP_ROM_QSTR(MP_QSTR_GlobalAvgPool), MP_ROM_PTR(&mt_global_avgpool_type) },
    { MP_ROM_QSTR(MP_QSTR_Flatten), MP_ROM_PTR(&mt_flatten_type) },
    { MP_ROM_QSTR(MP_QSTR_BatchNorm2d), MP_ROM_PTR(&mt_batchnorm2d_type) },
    { MP_ROM_QSTR(MP_QSTR_Add), MP_ROM_PTR(&mt_add_type) },
    { MP_ROM_QSTR(MP_QSTR_Convert), MP_ROM_PTR(&mt_convert_type) },
    { MP_ROM_QSTR(MP_QSTR_Sequential), MP_ROM_PTR(&mt_sequential_type) },
    { MP_ROM_QSTR(MP_QSTR_Residual), MP_ROM_PTR(&mt_residual_type) },
    { MP_ROM_QSTR(MP_QSTR_cross_entropy), MP_ROM_PTR(&mt_cross_entropy_obj) },
    { MP_ROM_QSTR(MP_QSTR_distillation), MP_ROM_PTR(&mt_distillation_obj) },
    { MP_ROM_QSTR(MP_QSTR_mse), MP_ROM_PTR(&mt_mse_obj) },
    { MP_ROM_QSTR(MP_QSTR_SGD), MP_ROM_PTR(&mt_sgd_type) },
    { MP_ROM_QSTR(MP_QSTR_Adam), MP_ROM_PTR(&mt_adam_type) },
    { MP_ROM_QSTR(MP_QSTR_Full), MP_ROM_PTR(&mt_policy_full_obj) },
    { MP_ROM_QSTR(MP_QSTR_Frozen), MP_ROM_PTR(&mt_policy_frozen_obj) },
    { MP_ROM_QSTR(MP_QSTR_BiasOnly), MP_ROM_PTR(&mt_policy_bias_only_obj) },
    { MP_ROM_QSTR(MP_QSTR_LastLayers), MP_ROM_PTR(&mt_policy_last_layers_obj) },
    { MP_ROM_QSTR(MP_QSTR_ChannelRatio), MP_ROM_PTR(&mt_policy_channel_ratio_obj) },
    { MP_ROM_QSTR(MP_QSTR_TopK), MP_ROM_PTR(&mt_policy_topk_obj) },
};
static MP_DEFINE_CONST_DICT(mcutrain_module_globals, mcutrain_module_globals_table);

const mp_obj_module_t mcutrain_user_cmodule = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&mcutrain_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR__mcutrain, mcutrain_user_cmodule);
