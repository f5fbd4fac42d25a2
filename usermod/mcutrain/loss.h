// Losses usable in train_step: mt.cross_entropy and mt.mse.
#ifndef MCUTRAIN_LOSS_H
#define MCUTRAIN_LOSS_H

#include "py/obj.h"
#include "tensor.h"

typedef struct _mt_loss_obj_t {
    mp_obj_base_t base;
    qstr name;
    bool takes_labels;    // targets are class labels, not a tensor
    // Mean loss over the batch; writes dL/dout into dout. `labels` holds room for
    // out's batch of labels. Raises ValueError/TypeError on bad targets.
    float (*compute)(const mt_tensor_obj_t *out, mp_obj_t target, float *dout, int32_t *labels);
    // The same for a float16 or int8 output, widened a chunk at a time into buf
    // (mt_loss_buf_floats() floats). dout (NULL: no gradient) has the output's dtype; an
    // int8 dout gets a symmetric scale from the gradient's largest magnitude.
    float (*compute_narrow)(const mt_tensor_obj_t *out, mp_obj_t target, mt_tensor_obj_t *dout, int32_t *labels,
        float *buf);
} mt_loss_obj_t;

extern const mp_obj_type_t mt_loss_type;
extern const mt_loss_obj_t mt_cross_entropy_obj;
extern const mt_loss_obj_t mt_mse_obj;

const mt_loss_obj_t *mt_loss_get(mp_obj_t obj);
// fp32 floats compute_narrow needs for an output of this shape: a row of logits for
// (batch, classes), else a chunk of at most 256 values.
size_t mt_loss_buf_floats(const mt_shape_t *out);

// Class labels from an int, a list/tuple of ints or an integer array, into labels[n];
// each must lie in [0, classes).
void mt_labels_from_obj(mp_obj_t obj, int32_t *labels, int n, int classes);

#endif
