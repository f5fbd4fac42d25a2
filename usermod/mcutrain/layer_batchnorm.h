// mt.BatchNorm2d: the binding (layer_batchnorm.c) and its kernel tables, one per dtype
// (layer_batchnorm_f32.c, layer_batchnorm_f16.c, layer_batchnorm_s8.c). gamma, beta and
// the statistics are float32 in every dtype; the table decides how activations and errors
// are stored and how the pass runs on them. The binding looks its table up once, in
// make_new, and calls through it; fold_into looks up the table of the target layer's
// weight dtype for its fold.
#ifndef MCUTRAIN_LAYER_BATCHNORM_H
#define MCUTRAIN_LAYER_BATCHNORM_H

#include "layer.h"
#include "kernels/batchnorm_f32.h"
#include "kernels/quant.h"

typedef struct _mt_batchnorm_kernels_t mt_batchnorm_kernels_t;

typedef struct {
    mt_layer_obj_t base;
    mt_batchnorm_params_t p;
    const mt_batchnorm_kernels_t *k;   // the table of the layer's dtype
    float *saved;              // batch mean[C] and 1/sqrt(var + eps)[C] for backward (int8:
                               // the mean in units of the input's scale); running ones after
                               // an inference forward
    bool batch_stats;          // the last forward normalized with batch statistics
    mt_range_tracker_t y_range;    // int8: output range
    mt_range_tracker_t dx_range;   // int8: input error magnitude, relative (layer_s8.h)
} mt_batchnorm_obj_t;

struct _mt_batchnorm_kernels_t {
    // What the dtype sets up beyond the common fields (make_new); NULL: nothing.
    void (*init)(mt_batchnorm_obj_t *self);
    // Normalizes with batch statistics if pass->training (updating the running ones), else
    // with the running ones; self->batch_stats is already set.
    void (*forward)(mt_batchnorm_obj_t *self, const mt_tensor_obj_t *x, const mt_pass_t *pass);
    void (*backward)(mt_batchnorm_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
        mt_tensor_obj_t *dx, const mt_pass_t *pass);
    // Folds inference statistics into a preceding layer's weights and bias of this dtype
    // (row_len weights per channel); NULL: such weights cannot take a fold.
    void (*fold)(const mt_batchnorm_params_t *p, const float *gamma, const float *beta, const float *mean,
        const float *var, void *weight, int row_len, void *bias);
};

extern const mt_batchnorm_kernels_t mt_batchnorm_f32_kernels;
extern const mt_batchnorm_kernels_t mt_batchnorm_f16_kernels;
extern const mt_batchnorm_kernels_t mt_batchnorm_s8_kernels;

// The dtypes there is a table for (MT_DTYPE_BIT mask), and the table of a checked dtype.
#define MT_BATCHNORM_DTYPES (MT_DTYPES_FLOAT | MT_DTYPE_BIT(MT_INT8))
static inline const mt_batchnorm_kernels_t *mt_batchnorm_kernels_for(uint8_t dtype) {
    static const mt_batchnorm_kernels_t *const by_dtype[] = {
        [MT_FLOAT32] = &mt_batchnorm_f32_kernels,
        [MT_FLOAT16] = &mt_batchnorm_f16_kernels,
        [MT_INT8] = &mt_batchnorm_s8_kernels,
    };
    return by_dtype[dtype];
}

// Shared by the float tables (layer_batchnorm_f32.c).
// For backward after an inference forward: the running statistics it normalized with.
void mt_batchnorm_save_running(mt_batchnorm_obj_t *self);
// The backward of a float dtype around its kernel pass(self, x, dy, dx, alpha, dgamma,
// dbeta): the input gradient, then gamma's and beta's (fp32 in every dtype).
typedef void (*mt_batchnorm_float_pass_t)(mt_batchnorm_obj_t *self, const void *x, const void *dy, void *dx,
    float alpha, float *dgamma, float *dbeta);
void mt_batchnorm_float_backward(mt_batchnorm_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass, mt_batchnorm_float_pass_t kernel);

#endif
