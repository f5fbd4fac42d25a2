// The mixed kernel table of Conv2d and Conv1d (layer_conv.h, layer_mixed.h): the int8
// kernels forward, the float32 pass backward on dequantized weights.
#include "py/runtime.h"
#include "layer_conv.h"
#include "layer_mixed.h"
#include "kernels/conv2d_s8.h"
#include "kernels/checked_size.h"

// Mixed layers run both the int8 kernels (forward) and the float32 ones (backward, with
// its partial updates' scratch).
static size_t kernel_floats(const mt_conv_obj_t *self) {
    size_t s8 = mt_size_bytes_to_floats(mt_conv2d_s8_scratch_bytes(&self->p));
    return mt_max_size(s8, mt_conv_f32_kernels.scratch_floats(&self->base));
}

static size_t mixed_scratch_floats(const mt_layer_obj_t *self_in) {
    return mt_mixed_scratch_floats(self_in, kernel_floats((const mt_conv_obj_t *)self_in), self_in->weight->size);
}

static void mixed_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)self_in;
    mt_mixed_forward(self->s8, self_in, x, pass, &mt_conv_s8_core, kernel_floats(self));
}

static void mixed_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_conv_obj_t *self = (mt_conv_obj_t *)self_in;
    mt_mixed_backward(self->s8, self_in, x, dy, dx, pass, mt_conv_f32_backward, kernel_floats(self));
}

const mt_conv_kernels_t mt_conv_mixed_kernels = {
    .init = mt_conv_s8_init,
    .state_bytes = mt_conv_s8_state_bytes,
    .scratch_floats = mixed_scratch_floats,
    .forward = mixed_forward,
    .backward = mixed_backward,
};
