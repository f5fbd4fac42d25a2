// mt.Sequential(*layers): runs layers in order. Plans one output buffer per layer
// (ReLUs share their input's when that is safe) and two gradient buffers that
// backward alternates between; backward stops at the first trainable layer. An inference
// plan (predict, evaluate) has no gradient buffers, and the outputs take turns in two.
// A ReLU or ReLU6 right after a Conv or Linear layer is folded into it (layer.h): the conv
// clamps its own output, and masks the error in the gradient buffer at the start of its
// backward, which the ReLU then skips; a ReLU that ends the Sequential keeps its backward
// (the error it gets is the caller's, which is not ours to overwrite).
#include <string.h>

#include "py/runtime.h"
#include "layer.h"
#include "plan_arena.h"

typedef struct {
    mt_layer_obj_t base;
    size_t n;
    mt_layer_obj_t **layers;
    mt_tensor_obj_t grad[2];   // headers over the two gradient buffers (not Python objects)
    size_t grad_bytes;
} mt_sequential_obj_t;

static size_t seq_children(const mt_layer_obj_t *self_in, mt_layer_obj_t *const **children) {
    const mt_sequential_obj_t *self = (const mt_sequential_obj_t *)self_in;
    *children = self->layers;
    return self->n;
}

// Inference plans: the layers whose outputs were pooled (mt_layer_plan) take turns in two
// buffers of the largest such output, each writing the one its input is not in (a view or
// an in-place layer's output is its input's buffer; a composite child's is its own).
static void seq_place_pooled(mt_sequential_obj_t *self) {
    mt_layer_obj_t *const *layers = self->layers;
    size_t bytes = 0, pooled = 0;
    for (size_t i = 0; i < self->n; i++) {
        if (layers[i]->out_pooled) {
            size_t b = mt_shape_bytes(&layers[i]->out_shape, layers[i]->out_dtype, "Sequential: activation");
            bytes = b > bytes ? b : bytes;
            pooled++;
        }
    }
    size_t buffers = pooled < 2 ? pooled : 2;
    void *buf[2] = { NULL, NULL };
    for (size_t b = 0; b < buffers; b++) {
        buf[b] = mt_plan_alloc(bytes, "Sequential activation");
    }
    self->base.state_bytes = bytes * buffers;
    if (mt_plan_measuring()) {
        return;
    }
    int where = -1;  // the buffer holding the current activation (-1: neither)
    for (size_t i = 0; i < self->n; i++) {
        mt_layer_obj_t *layer = layers[i];
        if (layer->out_pooled) {
            where = buffers == 2 && where == 0 ? 1 : 0;
            layer->output = mt_plan_header(layer->output, &layer->out_shape, layer->out_dtype, buf[where]);
        } else if (!layer->in_place && !(mt_layer_ops(layer)->flags & MT_LAYER_VIEW)) {
            where = -1;
        }
    }
}

// Whether layer i may run in place on the output of the layer before it. Training: unless
// backward reads that output. Inference: nothing reads it again, but a view or a
// composite's output may be memory that is not ours (the model's input).
static bool seq_may_share(const mt_sequential_obj_t *self, size_t i, bool inference) {
    if (i == 0) {
        return false;  // the first layer's input is not ours to overwrite
    }
    const mt_layer_obj_t *prev = self->layers[i - 1];
    if (inference) {
        return prev->out_pooled || (prev->in_place && !(mt_layer_ops(prev)->flags & MT_LAYER_VIEW));
    }
    return !mt_layer_output_needed(prev);
}

static void seq_plan(mt_layer_obj_t *self_in, const mt_shape_t *in) {
    mt_sequential_obj_t *self = (mt_sequential_obj_t *)self_in;
    const bool inference = mt_plan_inference();
    self->grad[0].data = self->grad[1].data = NULL;
    self->grad_bytes = 0;
    mt_shape_t shape = *in;
    uint8_t dtype = self_in->in_dtype;
    size_t grad_bytes = 0;
    for (size_t i = 0; i < self->n; i++) {
        mt_layer_obj_t *layer = self->layers[i];
        mt_layer_plan(layer, &shape, dtype, seq_may_share(self, i, inference), inference);
        if (i > 0 && mt_act_can_fold(self->layers[i - 1], layer)) {
            mt_act_fold(self->layers[i - 1], layer, i + 1 < self->n);
        }
        shape = layer->out_shape;
        dtype = layer->out_dtype;
        if (i + 1 < self->n) {
            // Errors are stored in the dtype of the activations they belong to.
            size_t bytes = mt_shape_bytes(&shape, dtype, "Sequential: gradient");
            grad_bytes = bytes > grad_bytes ? bytes : grad_bytes;
        }
    }
    self_in->out_shape = shape;
    self_in->out_dtype = dtype;
    if (inference) {
        seq_place_pooled(self);
    } else {
        // Gradient buffers alternate between layers; two are needed from three layers on.
        size_t buffers = self->n > 2 ? 2 : self->n - 1;
        for (size_t b = 0; b < buffers; b++) {
            mt_tensor_header_init(&self->grad[b], mt_plan_alloc(grad_bytes, "Sequential gradient"), MT_FLOAT32);
        }
        self->grad_bytes = grad_bytes * buffers;
    }
    self_in->output = self->layers[self->n - 1]->output;
}

static void seq_forward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    mt_sequential_obj_t *self = (mt_sequential_obj_t *)self_in;
    for (size_t i = 0; i < self->n; i++) {
        mt_layer_obj_t *layer = self->layers[i];
        mt_layer_forward(layer, x, pass);
        if (layer->act != MT_ACT_NONE) {
            mt_act_forward(layer);  // while its output is fresh
        }
        x = layer->output;
    }
}

// The first layer backward must reach: 0 if the input gradient is wanted, else the
// first layer with something to train (n if there is none).
static size_t seq_backward_stop(const mt_sequential_obj_t *self, bool need_dx) {
    if (need_dx) {
        return 0;
    }
    for (size_t i = 0; i < self->n; i++) {
        if (mt_layer_has_trainable(self->layers[i])) {
            return i;
        }
    }
    return self->n;
}

static void seq_backward(mt_layer_obj_t *self_in, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass) {
    mt_sequential_obj_t *self = (mt_sequential_obj_t *)self_in;
    size_t stop = seq_backward_stop(self, dx != NULL);
    const mt_tensor_obj_t *g = dy;
    for (size_t i = self->n; i-- > stop;) {
        mt_layer_obj_t *layer = self->layers[i];
        if (layer->act_folded && self->layers[i - 1]->act_masks_dy) {
            continue;  // the layer before masks g itself
        }
        mt_tensor_obj_t *gx = dx;
        if (i != stop) {
            // Whichever buffer g is not in (folded layers pass g on unchanged).
            gx = &self->grad[g == &self->grad[0]];
            gx->dtype = layer->in_dtype;
        }
        if (layer->act_masks_dy) {
            // g is one of our buffers (the layer after is the folded activation).
            mt_act_mask_dy(layer, (mt_tensor_obj_t *)g);
        }
        const mt_tensor_obj_t *xi = i ? self->layers[i - 1]->output : x;
        mt_layer_ops(layer)->backward(layer, xi, g, gx, pass);
        g = gx;
    }
}

static uint64_t seq_macs(const mt_layer_obj_t *self_in, mt_macs_kind_t kind, bool need_dx) {
    const mt_sequential_obj_t *self = (const mt_sequential_obj_t *)self_in;
    size_t stop = kind == MT_MACS_FORWARD ? 0 : seq_backward_stop(self, need_dx);
    uint64_t macs = 0;
    for (size_t i = stop; i < self->n; i++) {
        macs += mt_layer_macs(self->layers[i], kind, i > stop || need_dx);
    }
    return macs;
}

static size_t seq_grad_bytes(const mt_layer_obj_t *self_in) {
    const mt_sequential_obj_t *self = (const mt_sequential_obj_t *)self_in;
    return self_in->planned ? self->grad_bytes : 0;
}

static void seq_release(mt_layer_obj_t *self_in) {
    mt_sequential_obj_t *self = (mt_sequential_obj_t *)self_in;
    self->grad[0].data = self->grad[1].data = NULL;
    self->grad_bytes = 0;
}

static const mt_layer_ops_t seq_ops = {
    .magic = MT_LAYER_MAGIC,
    .flags = MT_LAYER_COMPOSITE,
    .plan = seq_plan,
    .forward = seq_forward,
    .backward = seq_backward,
    .macs = seq_macs,
    .children = seq_children,
    .grad_bytes = seq_grad_bytes,
    .release = seq_release,
};

static mp_obj_t seq_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 1, MP_OBJ_FUN_ARGS_MAX, false);
    // Sequential(a, b, c) or Sequential([a, b, c])
    mp_obj_t *items = (mp_obj_t *)args;
    size_t n = n_args;
    if (n_args == 1 && (mp_obj_is_type(args[0], &mp_type_list) || mp_obj_is_type(args[0], &mp_type_tuple))) {
        mp_obj_get_array(args[0], &n, &items);
        if (n == 0) {
            mp_raise_ValueError(MP_ERROR_TEXT("Sequential: needs at least one layer"));
        }
    }
    mt_sequential_obj_t *self = mp_obj_malloc(mt_sequential_obj_t, type);
    mt_layer_init(&self->base);
    self->layers = m_new(mt_layer_obj_t *, n);
    for (size_t i = 0; i < n; i++) {
        mt_layer_obj_t *layer = mt_layer_get(items[i], "Sequential: each item");
        // One object twice would share its planned buffers between two positions.
        for (size_t j = 0; j < i; j++) {
            if (self->layers[j] == layer) {
                mp_raise_msg_varg(&mp_type_ValueError,
                    MP_ERROR_TEXT("Sequential: layer %u is the same object as layer %u"), (unsigned)i, (unsigned)j);
            }
        }
        self->layers[i] = layer;
    }
    mt_layer_adopt(self->layers, n, "Sequential");
    self->base.dtype = MT_DTYPE_ANY;
    self->n = n;
    mt_tensor_header_init(&self->grad[0], NULL, MT_FLOAT32);
    mt_tensor_header_init(&self->grad[1], NULL, MT_FLOAT32);
    self->grad_bytes = 0;
    return MP_OBJ_FROM_PTR(self);
}

static void seq_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    mt_sequential_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_print_str(print, "Sequential(");
    for (size_t i = 0; i < self->n; i++) {
        mp_print_str(print, i ? ",\n  " : "\n  ");
        mp_obj_print_helper(print, MP_OBJ_FROM_PTR(self->layers[i]), kind);
    }
    mp_print_str(print, ")");
}

static mp_obj_t seq_unary_op(mp_unary_op_t op, mp_obj_t self_in) {
    mt_sequential_obj_t *self = MP_OBJ_TO_PTR(self_in);
    switch (op) {
        case MP_UNARY_OP_LEN:
            return MP_OBJ_NEW_SMALL_INT(self->n);
        case MP_UNARY_OP_BOOL:
            return mp_const_true;
        default:
            return MP_OBJ_NULL;
    }
}

static mp_obj_t seq_subscr(mp_obj_t self_in, mp_obj_t index, mp_obj_t value) {
    mt_sequential_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (value != MP_OBJ_SENTINEL) {
        return MP_OBJ_NULL;  // layers cannot be replaced or deleted
    }
    if (mp_obj_is_type(index, &mp_type_slice)) {
        // A list of those layers, not a new Sequential: a layer belongs to one model
        // (mt.clone them to build another).
        mp_bound_slice_t slice;
        mp_obj_t list = mp_obj_new_list(0, NULL);
        mp_obj_slice_indices(index, self->n, &slice);
        for (mp_int_t i = slice.start; slice.step > 0 ? i < slice.stop : i > slice.stop; i += slice.step) {
            mp_obj_list_append(list, MP_OBJ_FROM_PTR(self->layers[i]));
        }
        return list;
    }
    size_t i = mp_get_index(self->base.base.type, self->n, index, false);
    return MP_OBJ_FROM_PTR(self->layers[i]);
}

static mp_obj_t seq_getiter(mp_obj_t self_in, mp_obj_iter_buf_t *iter_buf) {
    (void)iter_buf;
    mt_sequential_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_obj_t list = mp_obj_new_list(self->n, NULL);
    for (size_t i = 0; i < self->n; i++) {
        ((mp_obj_list_t *)MP_OBJ_TO_PTR(list))->items[i] = MP_OBJ_FROM_PTR(self->layers[i]);
    }
    return mp_getiter(list, NULL);
}

MP_DEFINE_CONST_OBJ_TYPE(
    mt_sequential_type,
    MP_QSTR_Sequential,
    MP_TYPE_FLAG_ITER_IS_GETITER,
    make_new, seq_make_new,
    print, seq_print,
    unary_op, seq_unary_op,
    subscr, seq_subscr,
    iter, seq_getiter,
    call, mt_layer_call,
    attr, mt_layer_attr,
    protocol, &seq_ops,
    locals_dict, &mt_layer_locals_dict
    );
