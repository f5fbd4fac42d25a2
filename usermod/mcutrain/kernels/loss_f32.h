// fp32 losses. Each returns the mean loss over the batch and writes the gradient of
// that mean with respect to its input (so the backward pass needs no extra scaling).
#ifndef MCUTRAIN_KERNELS_LOSS_F32_H
#define MCUTRAIN_KERNELS_LOSS_F32_H

#include <stdbool.h>
#include <stdint.h>

// Whether every one of `rows` labels is a class index in [0, classes): the losses check
// them all before writing anything.
bool mt_labels_in_range(const int32_t *labels, int rows, int classes);

// Softmax cross-entropy from logits (rows, classes) and integer labels in [0, classes).
// Uses log-sum-exp with the row maximum subtracted, so it is finite for any finite logits.
// dlogits = (softmax(logits) - onehot(label)) / rows. dlogits may alias logits.
// Returns a negative value if a label is out of range (nothing else is written then).
float mt_cross_entropy_f32(const float *logits, const int32_t *labels, int rows, int classes,
    float *dlogits);

// Mean squared error over all n elements; dpred = 2 * (pred - target) / n.
float mt_mse_f32(const float *pred, const float *target, int n, float *dpred);

#endif
