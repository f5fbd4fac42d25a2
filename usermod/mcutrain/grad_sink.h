// Where a backward pass sends parameter gradients: the interface layers (layer.c,
// layer_*.c, partial_update.c) use and the optimizers (optim.c) implement, so layers never
// see an optimizer's type or state. Without an optimizer (pass->optim == NULL) gradients
// go to each parameter's .grad (layer.c).
#ifndef MCUTRAIN_GRAD_SINK_H
#define MCUTRAIN_GRAD_SINK_H

#include "layer.h"

// How int8 layers update (layer_s8.h): plain SGD, optionally with Deutel et al.'s gradient
// standardization, rounding the new weights stochastically or to nearest even.
typedef struct _mt_int8_sgd_t {
    float lr;
    float weight_decay;
    bool standardize;
    bool stochastic_rounding;
} mt_int8_sgd_t;

// The optimizer behind `opt`, or TypeError.
mt_optim_obj_t *mt_optim_get(mp_obj_t opt);
// Before train_step plans `model`: TypeError unless mt.SGD/mt.Adam, ValueError unless it
// was built for this model; makes its update policies the layers' active ones (the model
// plans again if that changed them).
void mt_optim_activate(mp_obj_t opt, mt_layer_obj_t *model, const char *what);
// The optimizer `opt` for one pass over `model`, before any kernel runs: TypeError unless
// mt.SGD/mt.Adam, ValueError unless it was built for this model or if its update policies
// are not those the model's forward ran with (backward(dy, opt)); checks the state of every
// parameter against the layers' update policies (re-sizing it once if a policy grew) and
// starts the step. `what` names the call ("train_step").
mt_optim_obj_t *mt_optim_begin_pass(mp_obj_t opt, mt_layer_obj_t *model, const char *what);
// This sample's loss over the largest seen (dynamic top-k); tracks the largest.
float mt_optim_loss_ratio(mt_optim_obj_t *optim, float loss);

// The fused update of one parameter: where its gradient goes, then the update once the
// gradient pass is done. ValueError if `param` is not one the optimizer was built for.
void mt_optim_grad_begin(mt_optim_obj_t *optim, mt_tensor_obj_t *param, mt_grad_dest_t *dest);
void mt_optim_grad_end(mt_optim_obj_t *optim, mt_tensor_obj_t *param);
// Partial updates: rows[0..k) (increasing) of `param`, row_len floats each, from a compact
// gradient.
void mt_optim_apply_rows(mt_optim_obj_t *optim, mt_tensor_obj_t *param, const int32_t *rows, int k,
    int row_len, const float *grad);
// The settings int8 layers update with, or NULL if this optimizer cannot train them.
const mt_int8_sgd_t *mt_optim_int8_sgd(mt_optim_obj_t *optim);

// Bytes of state of the optimizer `opt` (model.memory() reports the last one built for it).
size_t mt_optim_state_bytes(mp_obj_t opt);

#endif
