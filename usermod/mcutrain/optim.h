// The optimizers' shared half: SGD and Adam own their state, one slot per parameter of
// the model they were built for, and implement grad_sink.h for the backward pass.
//
// Ownership: a parameter (Tensor) knows nothing of optimizers. Each optimizer keeps, in
// an array parallel to its model's parameters, the parameter, its layer and its state
// (velocity; Adam's gradient buffer and moments), and checks the model, the parameter and
// the state's size before any kernel writes. Two optimizers on one model each keep their
// own state; an optimizer given another model is refused.
//
// Update policies belong to the optimizer given them (update=; Full without): each slot
// keeps its layer's policy, and the optimizer makes them the layers' active ones before a
// pass (mt_optim_activate), so another optimizer's policy never applies to its steps.
// Frozen/LastLayers set the layers' trainable flags (model state) when it is built.
#ifndef MCUTRAIN_OPTIM_H
#define MCUTRAIN_OPTIM_H

#include "py/obj.h"
#include "tensor.h"
#include "layer.h"
#include "grad_sink.h"
#include "kernels/half.h"
#include "kernels/optim_f32.h"

// One parameter and its state: per_param blocks of `elems` elements of state_dtype (block b
// starts at element b * elems), covering the parameter's first `elems` elements (a
// ChannelRatio update changes only leading rows), or NULL when elems is 0.
typedef struct {
    mt_tensor_obj_t *param;    // NULL: a layer without a bias (so a bias added later is noticed)
    mt_layer_obj_t *layer;     // its layer
    mt_update_t policy;        // this optimizer's update policy for the layer (kind, ratios)
    void *state;
    size_t elems;
    uint8_t state_dtype;
} mt_optim_slot_t;

typedef struct {
    // Called once per step before any update.
    void (*step_begin)(mt_optim_obj_t *self);
    // Where the gradient of the slot's parameter is to be accumulated (and with which scale).
    void (*grad_begin)(mt_optim_obj_t *self, mt_optim_slot_t *slot, mt_grad_dest_t *dest);
    // After the gradient pass of the slot's parameter: finish its update.
    void (*grad_end)(mt_optim_obj_t *self, mt_optim_slot_t *slot);
    // opt.step(): updates the parameter's first n elements from grad.
    void (*apply)(mt_optim_obj_t *self, mt_optim_slot_t *slot, const float *grad, size_t n);
    // Partial updates: rows[0..k) of the parameter (row_len floats each) from a compact gradient.
    void (*apply_rows)(mt_optim_obj_t *self, mt_optim_slot_t *slot, const int32_t *rows, int k, int row_len,
        const float *grad);
    // int8 layers run their own update (kernels/conv2d_s8.h) with plain SGD's settings:
    // those, or NULL if this optimizer cannot train int8 layers.
    const mt_int8_sgd_t *(*int8_sgd)(mt_optim_obj_t *self);
} mt_optim_ops_t;

struct _mt_optim_obj_t {
    mp_obj_base_t base;
    const mt_optim_ops_t *ops;
    const char *name;          // "SGD" or "Adam", for messages
    mp_obj_t model;            // the model it was built for
    mt_optim_slot_t *slots;    // two per layer with parameters: weight, bias (in parameters() order)
    size_t n_slots;
    size_t cursor;             // the slot found last: backward asks for neighbours in turn
    uint8_t per_param;         // state elements per parameter element (SGD momentum: 1, Adam: 3)
    bool f16_state;            // float16 parameters keep float16 state (SGD's velocity)
    float max_loss;            // the largest loss seen by train_step (dynamic top-k)
    // Stochastic rounding of float16 weights (and velocities): without it, updates under
    // half an fp16 ulp are lost for good (kernels/half.h). Seeded from mt.seed's sequence.
    mt_f16_rng_t rng;
};

// Applies the update policy (None: Full for every layer, trainable flags unchanged) and
// builds one slot per parameter of `model` (ValueError for a layer that is part of a
// container) with state for what each layer can update, now, so train_step will not
// allocate: per_param elements per parameter element, in float16 for float16
// parameters if f16_state, else float32.
void mt_optim_init_params(mt_optim_obj_t *self, mp_obj_t model, size_t per_param, bool f16_state,
    mp_obj_t update);

// Settable hyperparameters: a finite float in [lo, hi) (lo itself only if lo_ok), else
// ValueError "<opt>: <what> must be in [lo, hi), not <v>".
float mt_optim_float_arg(mp_obj_t obj, const char *opt, const char *what, float lo, bool lo_ok, float hi);

extern const mp_obj_dict_t mt_optim_locals_dict;

#endif
