// mt.Linear: the binding (layer_linear.c) and its kernel tables, one per dtype
// (layer_linear_f32.c, layer_linear_f16.c, layer_linear_s8.c, layer_linear_mixed.c).
// As for Conv (layer_conv.h), the binding looks its table up once, in make_new, and calls
// through it; a new dtype or an architecture's kernels is a new table.
#ifndef MCUTRAIN_LAYER_LINEAR_H
#define MCUTRAIN_LAYER_LINEAR_H

#include "layer.h"
#include "layer_s8.h"
#include "kernels/linear_f32.h"

typedef struct _mt_linear_kernels_t mt_linear_kernels_t;

typedef struct {
    mt_layer_obj_t base;
    mt_linear_params_t p;
    const mt_linear_kernels_t *k;  // the table of the layer's dtype
    mt_s8_layer_t *s8;         // int8 and mixed only, else NULL
} mt_linear_obj_t;

// The functions take the layer as mt_layer_obj_t (an mt_linear_obj_t), as mt_layer_ops_t's do.
struct _mt_linear_kernels_t {
    // Creates the weight (wshape) and, if bias, the bias, drawn for fan_in (base.dtype is set).
    void (*init)(mt_layer_obj_t *self, const mt_shape_t *wshape, int fan_in, bool bias);
    // Bytes of per-shape state the dtype keeps beyond the common fields (plan); NULL: none.
    size_t (*state_bytes)(const mt_layer_obj_t *self);
    // Scratch floats of the planned layer; may saturate (kernels/checked_size.h).
    size_t (*scratch_floats)(const mt_layer_obj_t *self);
    void (*forward)(mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_pass_t *pass);
    void (*backward)(mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
        mt_tensor_obj_t *dx, const mt_pass_t *pass);
};

extern const mt_linear_kernels_t mt_linear_f32_kernels;
extern const mt_linear_kernels_t mt_linear_f16_kernels;
extern const mt_linear_kernels_t mt_linear_s8_kernels;
extern const mt_linear_kernels_t mt_linear_mixed_kernels;

// The dtypes there is a table for (MT_DTYPE_BIT mask), and the table of a checked dtype=.
#define MT_LINEAR_DTYPES (MT_DTYPES_FLOAT | MT_DTYPE_BIT(MT_INT8))
static inline const mt_linear_kernels_t *mt_linear_kernels_for(uint8_t dtype, bool mixed) {
    static const mt_linear_kernels_t *const by_dtype[] = {
        [MT_FLOAT32] = &mt_linear_f32_kernels,
        [MT_FLOAT16] = &mt_linear_f16_kernels,
        [MT_INT8] = &mt_linear_s8_kernels,
    };
    return mixed ? &mt_linear_mixed_kernels : by_dtype[dtype];
}

// Shared between tables.
// float32 and float16 draw their parameters the same way, in the layer's dtype.
void mt_linear_float_init(mt_layer_obj_t *self, const mt_shape_t *wshape, int fan_in, bool bias);
// The int8 kernels bound to a Linear's parameters (layer_s8.h), and the int8 layer's
// parameters and their per-shape state: the int8 and mixed tables share them.
extern const mt_s8_kernels_t mt_linear_s8_core;
void mt_linear_s8_init(mt_layer_obj_t *self, const mt_shape_t *wshape, int fan_in, bool bias);
size_t mt_linear_s8_state_bytes(const mt_layer_obj_t *self);

#endif
