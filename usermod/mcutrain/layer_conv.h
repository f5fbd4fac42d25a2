// mt.Conv2d and mt.Conv1d: the binding (layer_conv.c) and its kernel tables, one per dtype
// (layer_conv_f32.c, layer_conv_f16.c, layer_conv_s8.c, layer_conv_mixed.c).
//
// A layer's dtype is fixed when it is built (mt.quantize, mt.dequantize and mt.clone build
// new layers), so the binding looks its table up once, in make_new, and calls through it:
// it never branches on dtype. A new dtype, or an architecture's own kernels, is a new table
// and a line in mt_conv_kernels_for().
#ifndef MCUTRAIN_LAYER_CONV_H
#define MCUTRAIN_LAYER_CONV_H

#include "layer.h"
#include "layer_s8.h"
#include "kernels/conv2d_f32.h"

typedef struct _mt_conv_kernels_t mt_conv_kernels_t;

typedef struct {
    mt_layer_obj_t base;
    mt_conv2d_params_t p;      // channels, kernel, stride, padding, groups fixed at construction
    bool is_1d;
    const mt_conv_kernels_t *k;    // the table of the layer's dtype
    mt_s8_layer_t *s8;         // int8 and mixed only, else NULL
} mt_conv_obj_t;

// The functions take the layer as mt_layer_obj_t (an mt_conv_obj_t), as mt_layer_ops_t's do.
struct _mt_conv_kernels_t {
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

extern const mt_conv_kernels_t mt_conv_f32_kernels;
extern const mt_conv_kernels_t mt_conv_f16_kernels;
extern const mt_conv_kernels_t mt_conv_s8_kernels;
extern const mt_conv_kernels_t mt_conv_mixed_kernels;

// The dtypes there is a table for (MT_DTYPE_BIT mask), and the table of a checked dtype=.
#define MT_CONV_DTYPES (MT_DTYPES_FLOAT | MT_DTYPE_BIT(MT_INT8))
static inline const mt_conv_kernels_t *mt_conv_kernels_for(uint8_t dtype, bool mixed) {
    static const mt_conv_kernels_t *const by_dtype[] = {
        [MT_FLOAT32] = &mt_conv_f32_kernels,
        [MT_FLOAT16] = &mt_conv_f16_kernels,
        [MT_INT8] = &mt_conv_s8_kernels,
    };
    return mixed ? &mt_conv_mixed_kernels : by_dtype[dtype];
}

// Shared between tables.
// Partial updates (partial_update.h): whether each output channel sees only its own input
// channel, and the layer restricted to its first k output channels (for a depthwise layer
// its first k input channels too), which the kernels run on compact copies of.
static inline bool mt_conv_is_depthwise(const mt_conv2d_params_t *p) {
    return p->groups > 1 && p->groups == p->in_c && p->groups == p->out_c;
}
static inline bool mt_conv_layer_is_depthwise(const mt_layer_obj_t *layer) {
    return mt_conv_is_depthwise(&((const mt_conv_obj_t *)layer)->p);
}
static inline mt_conv2d_params_t mt_conv_compact_params(const mt_conv2d_params_t *p, int k) {
    mt_conv2d_params_t q = *p;
    if (mt_conv_is_depthwise(p)) {
        q.in_c = q.groups = k;
    }
    q.out_c = k;
    return q;
}
// float32 and float16 draw their parameters the same way, in the layer's dtype.
void mt_conv_float_init(mt_layer_obj_t *self, const mt_shape_t *wshape, int fan_in, bool bias);
// The float32 backward pass (mixed layers run it on dequantized weights).
void mt_conv_f32_backward(mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass);
// The int8 kernels bound to a conv layer's parameters (layer_s8.h), and the int8 layer's
// parameters and their per-shape state: the int8 and mixed tables share them.
extern const mt_s8_kernels_t mt_conv_s8_core;
void mt_conv_s8_init(mt_layer_obj_t *self, const mt_shape_t *wshape, int fan_in, bool bias);
size_t mt_conv_s8_state_bytes(const mt_layer_obj_t *self);

#endif
