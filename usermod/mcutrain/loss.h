// Losses usable in train_step: mt.cross_entropy, mt.mse and mt.distillation(...).
#ifndef MCUTRAIN_LOSS_H
#define MCUTRAIN_LOSS_H

#include "py/obj.h"
#include "tensor.h"

typedef struct _mt_loss_obj_t mt_loss_obj_t;
struct _mt_loss_obj_t {
    mp_obj_base_t base;
    qstr name;
    bool takes_labels;    // targets carry class labels (a (batch, classes) output), not a tensor
    // Mean loss over the batch; writes dL/dout into dout. `labels` holds room for
    // out's batch of labels. Raises ValueError/TypeError on bad targets. `self` is the
    // loss object, for losses with parameters (mt.distillation).
    float (*compute)(const mt_loss_obj_t *self, const mt_tensor_obj_t *out, mp_obj_t target, float *dout,
        int32_t *labels);
    // The same for a float16 or int8 output, widened a chunk at a time into buf
    // (mt_loss_buf_floats() floats). dout (NULL: no gradient) has the output's dtype; an
    // int8 dout gets a symmetric scale from the gradient's largest magnitude.
    float (*compute_narrow)(const mt_loss_obj_t *self, const mt_tensor_obj_t *out, mp_obj_t target,
        mt_tensor_obj_t *dout, int32_t *labels, float *buf);
    // Prints the parameters after the name (NULL: the loss has none).
    void (*print_params)(const mt_loss_obj_t *self, const mp_print_t *print);
};

extern const mp_obj_type_t mt_loss_type;
extern const mt_loss_obj_t mt_cross_entropy_obj;
extern const mt_loss_obj_t mt_mse_obj;
// mt.distillation(temperature=4.0, alpha=0.5) -> a new loss object (loss_distill.c)
extern const mp_obj_fun_builtin_var_t mt_distillation_obj;

const mt_loss_obj_t *mt_loss_get(mp_obj_t obj);
// fp32 floats compute_narrow needs for an output of this shape: a row of logits for
// (batch, classes), else a chunk of at most 256 values.
size_t mt_loss_buf_floats(const mt_shape_t *out);

// One chunk's share of the mean loss, its values widened into buf; with grad, buf becomes
// their gradient (of the mean).
typedef float (*mt_loss_chunk_fn_t)(const void *ctx, float *buf, size_t at, size_t n, bool grad);
// Runs fn over a float16 or int8 output in chunks of `chunk` values, narrowing the
// gradient into dout (NULL: none) as compute_narrow describes; returns the summed shares.
float mt_loss_run_chunks(const mt_tensor_obj_t *out, mt_tensor_obj_t *dout, float *buf, size_t chunk,
    mt_loss_chunk_fn_t fn, const void *ctx);

// Class labels from an int, a list/tuple of ints or an integer array, into labels[n];
// each must lie in [0, classes).
void mt_labels_from_obj(mp_obj_t obj, int32_t *labels, int n, int classes);

#endif
