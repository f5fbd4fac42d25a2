// The optimizer protocol: how a backward pass hands parameter gradients to SGD or
// Adam. Optimizer state lives with each parameter (Tensor.opt_state) so the fused
// update needs no lookup.
#ifndef MCUTRAIN_OPTIM_H
#define MCUTRAIN_OPTIM_H

#include "py/obj.h"
#include "tensor.h"
#include "layer.h"
#include "kernels/half.h"
#include "kernels/optim_f32.h"

typedef struct _mt_optim_obj_t mt_optim_obj_t;

// How int8 layers update (layer_s8.h): plain SGD, optionally with Deutel et al.'s gradient
// standardization, rounding the new weights stochastically or to nearest even.
typedef struct _mt_int8_sgd_t {
    float lr;
    float weight_decay;
    bool standardize;
    bool stochastic_rounding;
} mt_int8_sgd_t;

typedef struct {
    // Called once per train_step before the backward pass.
    void (*step_begin)(mt_optim_obj_t *self);
    // Where the gradient of `param` is to be accumulated (and with which scale).
    void (*grad_begin)(mt_optim_obj_t *self, mt_tensor_obj_t *param, mt_grad_dest_t *dest);
    // After the gradient pass of `param`: finish its update.
    void (*grad_end)(mt_optim_obj_t *self, mt_tensor_obj_t *param);
    // opt.step(): update `param` from its .grad.
    void (*apply)(mt_optim_obj_t *self, mt_tensor_obj_t *param, const float *grad);
    // Partial updates: rows[0..k) of `param` (row_len floats each) from a compact gradient.
    void (*apply_rows)(mt_optim_obj_t *self, mt_tensor_obj_t *param, const int32_t *rows, int k, int row_len,
        const float *grad);
    // Bytes of state per float32 parameter (SGD with momentum: 4, Adam: 12).
    size_t (*state_bytes_per_float)(const mt_optim_obj_t *self);
    // int8 layers run their own update (kernels/conv2d_s8.h) with plain SGD's settings:
    // those, or NULL if this optimizer cannot train int8 layers.
    const mt_int8_sgd_t *(*int8_sgd)(const mt_optim_obj_t *self);
} mt_optim_ops_t;

struct _mt_optim_obj_t {
    mp_obj_base_t base;
    const mt_optim_ops_t *ops;
    mp_obj_t params;       // list of the model's parameters at construction
    float max_loss;        // the largest loss seen by train_step (dynamic top-k)
    // Stochastic rounding of float16 weights (and velocities): without it, updates under
    // half an fp16 ulp are lost for good (kernels/half.h). Seeded from mt.seed's sequence.
    mt_f16_rng_t rng;
};

mt_optim_obj_t *mt_optim_get(mp_obj_t obj);
// The state of `param` (per_param elements of `dtype` per parameter element it may update),
// allocated in full the first time if the constructor did not, reused afterwards.
void *mt_optim_state(mt_optim_obj_t *self, mt_tensor_obj_t *param, size_t per_param, mt_dtype_t dtype);
// Elements of param's state per state kind (the state is floats_per_param of these).
size_t mt_optim_state_elems(const mt_tensor_obj_t *param, size_t floats_per_param);
// Applies the update policy (None: leave the layers' policies) and allocates state for
// what each layer can update, now, so train_step will not: floats_per_param elements per
// parameter element, in float16 for float16 parameters if f16_state, else float32.
void mt_optim_init_params(mt_optim_obj_t *self, mp_obj_t model, size_t floats_per_param, bool f16_state,
    mp_obj_t update);
// The dtype of a parameter's state under that rule.
static inline mt_dtype_t mt_optim_state_dtype(const mt_tensor_obj_t *param, bool f16_state) {
    return f16_state && param->dtype == MT_FLOAT16 ? MT_FLOAT16 : MT_FLOAT32;
}

extern const mp_obj_dict_t mt_optim_locals_dict;

#endif
