// Partial updates of float16 Linear and Conv layers (partial_update.h): the selected output
// channels' error (ranked by the sum of |dy| in fp32), weight rows and, for a depthwise
// layer, input copied into compact fp16 buffers; the float16 kernels run on those k
// channels, their weight gradient is summed in fp32 and handed to the optimizer for the
// selected rows only (its fp16 step rounds as the full update's does), and every other
// weight and bias keeps its bytes.
#ifndef MCUTRAIN_LAYER_F16_PARTIAL_H
#define MCUTRAIN_LAYER_F16_PARTIAL_H

#include "layer.h"

// The float16 kernels of a layer type restricted to its first k output channels (the
// compact layer; for a depthwise layer also its first k input channels).
typedef struct {
    void (*grad_input)(const mt_layer_obj_t *layer, int k, const uint16_t *dy, const uint16_t *w, uint16_t *dx,
        float *scratch);
    void (*grad_weight)(const mt_layer_obj_t *layer, int k, const uint16_t *x, const uint16_t *dy, float *dw,
        float *db, float *scratch);
    size_t (*scratch_floats)(const mt_layer_obj_t *layer, int k);
    bool (*depthwise)(const mt_layer_obj_t *layer);
} mt_f16_partial_ops_t;

// Scratch floats of the partial path (0 unless the policy is ChannelRatio or TopK).
size_t mt_f16_partial_scratch_floats(const mt_layer_obj_t *layer, const mt_f16_partial_ops_t *ops);
void mt_f16_backward_partial(mt_layer_obj_t *layer, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass, const mt_f16_partial_ops_t *ops);

#endif
