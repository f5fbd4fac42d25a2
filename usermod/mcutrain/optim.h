// The optimizer protocol: how a backward pass hands parameter gradients to SGD or
// Adam. Optimizer state lives with each parameter (Tensor.opt_state) so the fused
// update needs no lookup.
#ifndef MCUTRAIN_OPTIM_H
#define MCUTRAIN_OPTIM_H

#include "py/obj.h"
#include "tensor.h"

typedef struct _mt_optim_obj_t mt_optim_obj_t;

typedef struct {
    // Called once per train_step before the backward pass.
    void (*step_begin)(mt_optim_obj_t *self);
    // Where the gradient of `param` is to be accumulated, scaled by *alpha.
    float *(*grad_begin)(mt_optim_obj_t *self, mt_tensor_obj_t *param, float *alpha);
    // After the gradient pass of `param`: finish its update.
    void (*grad_end)(mt_optim_obj_t *self, mt_tensor_obj_t *param);
    // opt.step(): update `param` from its .grad.
    void (*apply)(mt_optim_obj_t *self, mt_tensor_obj_t *param, const float *grad);
    // Partial updates: rows[0..k) of `param` (row_len floats each) from a compact gradient.
    void (*apply_rows)(mt_optim_obj_t *self, mt_tensor_obj_t *param, const int32_t *rows, int k, int row_len,
        const float *grad);
    // Bytes of state per float of parameter (SGD with momentum: 4, Adam: 12).
    size_t (*state_bytes_per_float)(const mt_optim_obj_t *self);
} mt_optim_ops_t;

struct _mt_optim_obj_t {
    mp_obj_base_t base;
    const mt_optim_ops_t *ops;
    mp_obj_t params;       // list of the model's parameters at construction
    float max_loss;        // the largest loss seen by train_step (dynamic top-k)
};

mt_optim_obj_t *mt_optim_get(mp_obj_t obj);
// The state of `param` (floats_per_param floats per parameter float it may update),
// allocated in full the first time if the constructor did not, reused afterwards.
float *mt_optim_state(mt_optim_obj_t *self, mt_tensor_obj_t *param, size_t floats_per_param);
// Elements of param's state per state kind (the state is floats_per_param of these).
size_t mt_optim_state_elems(const mt_tensor_obj_t *param, size_t floats_per_param);
// Applies the update policy (None: leave the layers' policies) and allocates state for
// what each layer can update, now, so train_step will not.
void mt_optim_init_params(mt_optim_obj_t *self, mp_obj_t model, size_t floats_per_param, mp_obj_t update);

extern const mp_obj_dict_t mt_optim_locals_dict;

#endif
