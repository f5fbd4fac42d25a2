// The layer protocol's shared half: planning, parameter gradients, and the methods
// every layer has (forward, backward, train_step, predict, evaluate, memory, ...).
#include <math.h>
#include <string.h>

#include "py/runtime.h"
#include "py/objtype.h"
#include "layer.h"
#include "loss.h"
#include "grad_sink.h"
#include "random.h"
#include "partial_update.h"
#include "kernels/quant.h"
#include "kernels/vector_f32.h"
#include "kernels/activation_f32.h"
#include "kernels/half.h"

const mt_layer_ops_t *mt_layer_ops(const mt_layer_obj_t *layer) {
    return MP_OBJ_TYPE_GET_SLOT(layer->base.type, protocol);
}

static bool is_layer(mp_obj_t obj) {
    if (!mp_obj_is_obj(obj)) {
        return false;
    }
    const mp_obj_type_t *type = ((mp_obj_base_t *)MP_OBJ_TO_PTR(obj))->type;
    if (!MP_OBJ_TYPE_HAS_SLOT(type, protocol)) {
        return false;
    }
    const mt_layer_ops_t *ops = MP_OBJ_TYPE_GET_SLOT(type, protocol);
    return ops->magic == MT_LAYER_MAGIC;
}

mt_layer_obj_t *mt_layer_get(mp_obj_t obj, const char *what) {
    if (!is_layer(obj)) {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("%s must be a layer, not %s"), what,
            mp_obj_get_type_str(obj));
    }
    return MP_OBJ_TO_PTR(obj);
}

qstr mt_layer_name(const mt_layer_obj_t *layer) {
    return layer->base.type->name;
}

qstr mt_layer_dtype_qstr(const mt_layer_obj_t *layer) {
    return mt_layer_is_mixed(layer) ? MP_QSTR_mixed : mt_dtype_qstr(layer->dtype);
}

// What planning as the top of a model sets up: the arena and the buffers in it. The arena
// is dropped, not freed: tensors a script still holds keep it alive (their data points into it).
static void forget_top(mt_layer_obj_t *layer) {
    layer->scratch = NULL;
    layer->input_grad = NULL;
    layer->input_grad_bytes = 0;
    layer->output_grad = NULL;
    layer->labels = NULL;
    layer->loss_buf = NULL;
    mt_plan_arena_drop(&layer->arena);
    layer->plans_loss = false;
}

// Every field planning sets: the layer as if never planned.
static void forget_plan(mt_layer_obj_t *layer) {
    forget_top(layer);
    layer->planned = false;
    layer->planned_as_top = false;
    layer->in_place = false;
    layer->out_pooled = false;
    layer->act = MT_ACT_NONE;
    layer->act_masks_dy = false;
    layer->act_folded = false;
    layer->output = NULL;
    layer->state_bytes = 0;
    layer->last_input = MP_OBJ_NULL;
    layer->scratch_floats = 0;
}

void mt_layer_init(mt_layer_obj_t *layer) {
    layer->in_shape.ndim = 0;
    layer->out_shape.ndim = 0;
    layer->dtype = MT_FLOAT32;
    layer->in_dtype = MT_FLOAT32;
    layer->out_dtype = MT_FLOAT32;
    layer->trainable = true;
    layer->training = true;
    layer->owned = false;
    layer->weight = NULL;
    layer->bias = NULL;
    forget_plan(layer);
    layer->extra_params[0] = NULL;
    layer->extra_params[1] = NULL;
    layer->weight_scale = NULL;
    layer->quant_range = NULL;
    layer->update = (mt_update_t) { .kind = MT_UPDATE_FULL };
    layer->optim = MP_OBJ_NULL;
}

mt_tensor_obj_t *mt_layer_new_param(const mt_shape_t *shape, int fan_in, mt_dtype_t dtype, const char *what) {
    mt_tensor_obj_t *t = mt_tensor_new(shape, dtype, what);
    float bound = 1.0f / sqrtf((float)fan_in);
    for (size_t i = 0; i < t->size; i++) {
        float w = bound * (2.0f * mt_random_uniform() - 1.0f);
        if (dtype == MT_FLOAT16) {
            ((uint16_t *)t->data)[i] = mt_f32_to_f16(w);
        } else {
            mt_tensor_f32(t)[i] = w;
        }
    }
    return t;
}

uint8_t mt_layer_dtype_arg(mp_obj_t obj, unsigned allowed, bool allow_any, const char *what) {
    if (obj == mp_const_none) {
        return allow_any ? MT_DTYPE_ANY : MT_FLOAT32;
    }
    mt_dtype_t dtype = mt_dtype_from_obj(obj);
    if (!(allowed & MT_DTYPE_BIT(dtype))) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s: dtype %q is not supported yet"), what,
            mt_dtype_qstr(dtype));
    }
    return (uint8_t)dtype;
}

uint8_t mt_layer_weights_dtype_arg(mp_obj_t obj, unsigned allowed, const char *what, bool *mixed) {
    *mixed = mp_obj_is_str(obj) && mp_obj_str_get_qstr(obj) == MP_QSTR_mixed;
    return *mixed ? MT_FLOAT32 : mt_layer_dtype_arg(obj, allowed, false, what);
}

uint8_t mt_layer_parse_any_dtype(size_t n_args, size_t n_kw, const mp_obj_t *args, const char *what) {
    enum { ARG_dtype };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_dtype, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t vals[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all_kw_array(n_args, n_kw, args, MP_ARRAY_SIZE(allowed_args), allowed_args, vals);
    return mt_layer_dtype_arg(vals[ARG_dtype].u_obj, 0xff, true, what);
}

void mt_layer_print_simple(const mp_print_t *print, const mt_layer_obj_t *layer) {
    if (layer->dtype == MT_DTYPE_ANY) {
        mp_printf(print, "%q()", mt_layer_name(layer));
    } else {
        mp_printf(print, "%q(dtype=%q)", mt_layer_name(layer), mt_dtype_qstr(layer->dtype));
    }
}

void mt_tensor_header_init(mt_tensor_obj_t *t, void *data, uint8_t dtype) {
    t->base.type = &mt_tensor_type;
    t->dtype = dtype;
    t->shape.ndim = 0;
    t->size = 0;
    t->scale = 1.0f;
    t->zero_point = 0;
    t->data = data;
    t->owner = MP_OBJ_NULL;
    t->offset = 0;
    t->grad = mp_const_none;
}

NORETURN void mt_layer_raise_shape(const mt_layer_obj_t *layer, const char *msg, const mt_shape_t *in) {
    char buf[64];
    mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%q: %s (input shape %s)"),
        mt_layer_name(layer), msg, mt_shape_str(in, buf, sizeof(buf)));
}

NORETURN void mt_layer_raise_expects(const mt_layer_obj_t *layer, const char *fmt, int n, const mt_shape_t *in) {
    char buf[64];
    vstr_t msg;
    vstr_init(&msg, 64);
    vstr_printf(&msg, fmt, n);
    mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%q: %s (input shape %s)"),
        mt_layer_name(layer), vstr_null_terminated_str(&msg), mt_shape_str(in, buf, sizeof(buf)));
}

void mt_parse_pair(mp_obj_t obj, int *h, int *w, const char *what, int min) {
    mp_int_t a, b;
    if (mp_obj_is_int(obj)) {
        a = b = mp_obj_get_int(obj);
    } else if (mp_obj_is_type(obj, &mp_type_tuple) || mp_obj_is_type(obj, &mp_type_list)) {
        size_t n;
        mp_obj_t *items;
        mp_obj_get_array(obj, &n, &items);
        if (n != 2) {
            mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s must be an int or an (h, w) pair"), what);
        }
        a = mp_obj_get_int(items[0]);
        b = mp_obj_get_int(items[1]);
    } else {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("%s must be an int or an (h, w) pair, not %s"),
            what, mp_obj_get_type_str(obj));
    }
    if (a < min || b < min || a > 0xffff || b > 0xffff) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s must be >= %d, not (%d, %d)"), what,
            min, (int)a, (int)b);
    }
    *h = (int)a;
    *w = (int)b;
}

/******************************************************************************/
// Tree walks

size_t mt_layer_children(const mt_layer_obj_t *layer, mt_layer_obj_t *const **children) {
    const mt_layer_ops_t *ops = mt_layer_ops(layer);
    if (ops->children == NULL) {
        *children = NULL;
        return 0;
    }
    return ops->children(layer, children);
}

bool mt_layer_has_trainable(const mt_layer_obj_t *layer) {
    mt_layer_obj_t *const *children;
    size_t n = mt_layer_children(layer, &children);
    if (n) {
        for (size_t i = 0; i < n; i++) {
            if (mt_layer_has_trainable(children[i])) {
                return true;
            }
        }
        return false;
    }
    return layer->trainable && (layer->weight != NULL || layer->bias != NULL);
}

uint8_t mt_layer_input_ndim(const mt_layer_obj_t *layer) {
    mt_layer_obj_t *const *children;
    size_t n = mt_layer_children(layer, &children);
    for (size_t i = 0; i < n; i++) {
        uint8_t d = mt_layer_input_ndim(children[i]);
        if (d) {
            return d;
        }
        if (!(mt_layer_ops(children[i])->flags & (MT_LAYER_VIEW | MT_LAYER_MAY_RUN_IN_PLACE))) {
            break;  // past a shape-changing layer the first dims say nothing about the input
        }
    }
    return n ? 0 : mt_layer_ops(layer)->input_ndim;
}

bool mt_layer_output_needed(const mt_layer_obj_t *layer) {
    const mt_layer_ops_t *ops = mt_layer_ops(layer);
    // Composite outputs belong to their last child, views to someone else: keep them.
    return (ops->flags & (MT_LAYER_NEEDS_OUTPUT | MT_LAYER_COMPOSITE | MT_LAYER_VIEW)) || layer->in_place;
}

size_t mt_layer_scratch_floats(const mt_layer_obj_t *layer) {
    const mt_layer_ops_t *ops = mt_layer_ops(layer);
    size_t floats = ops->scratch_floats ? ops->scratch_floats(layer) : 0;
    mt_layer_obj_t *const *children;
    size_t n = mt_layer_children(layer, &children);
    for (size_t i = 0; i < n; i++) {
        size_t c = mt_layer_scratch_floats(children[i]);
        floats = c > floats ? c : floats;
    }
    return floats;
}

uint64_t mt_layer_macs(const mt_layer_obj_t *layer, mt_macs_kind_t kind, bool need_dx) {
    const mt_layer_ops_t *ops = mt_layer_ops(layer);
    if (ops->flags & MT_LAYER_COMPOSITE) {
        return ops->macs(layer, kind, need_dx);
    }
    if (kind == MT_MACS_GRAD_INPUT && !need_dx) {
        return 0;
    }
    if (kind == MT_MACS_GRAD_WEIGHT && !mt_layer_has_trainable(layer)) {
        return 0;
    }
    return ops->macs ? ops->macs(layer, kind, need_dx) : 0;
}

/******************************************************************************/
// Planning and running

// Layers of different dtypes do not chain silently: the user converts explicitly.
static void check_dtype(const mt_layer_obj_t *layer, const mt_layer_ops_t *ops, uint8_t in_dtype) {
    if (ops->flags & (MT_LAYER_COMPOSITE | MT_LAYER_CONVERTS)) {
        return;  // children, or the layer's plan(), check
    }
    if (layer->dtype != MT_DTYPE_ANY && in_dtype != layer->dtype) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%q has dtype %q but its input is %q: put mt.Convert(mt.%q) before it"),
            mt_layer_name(layer), mt_dtype_qstr(layer->dtype), mt_dtype_qstr(in_dtype), mt_dtype_qstr(layer->dtype));
    }
    unsigned dtypes = ops->dtypes ? ops->dtypes : MT_DTYPE_BIT(MT_FLOAT32);
    if (!(dtypes & MT_DTYPE_BIT(in_dtype))) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%q does not support %q inputs yet: put mt.Convert(mt.float32) before it"),
            mt_layer_name(layer), mt_dtype_qstr(in_dtype));
    }
}

void mt_layer_plan(mt_layer_obj_t *layer, const mt_shape_t *in, uint8_t in_dtype, bool may_share, bool pooled) {
    const mt_layer_ops_t *ops = mt_layer_ops(layer);
    layer->planned = false;
    layer->planned_as_top = false;
    layer->out_pooled = false;
    layer->state_bytes = 0;
    // Folds are the container's to set, after planning (layer_activation.c).
    layer->act = MT_ACT_NONE;
    layer->act_masks_dy = false;
    layer->act_folded = false;
    if (ops->input_ndim && in->ndim != ops->input_ndim) {
        mt_layer_raise_expects(layer, "expects %d dimensions (batch first)", ops->input_ndim, in);
    }
    check_dtype(layer, ops, in_dtype);
    if (!mt_plan_measuring() && !mt_plan_places_into(&layer->arena)) {
        // Planned inside another model now: what it planned on its own goes.
        forget_top(layer);
    }
    layer->in_shape = *in;
    layer->in_dtype = in_dtype;
    layer->out_dtype = in_dtype;  // Convert's and composites' plan() change it
    ops->plan(layer, in);
    // Before anything sizes scratch from it: the kernels' int pixel counts must not wrap.
    mt_shape_bytes(&layer->out_shape, layer->out_dtype, qstr_str(mt_layer_name(layer)));
    if (ops->flags & MT_LAYER_COMPOSITE) {
        // plan() set output to the child that produces it.
    } else if ((ops->flags & MT_LAYER_VIEW) || ((ops->flags & MT_LAYER_MAY_RUN_IN_PLACE) && may_share)) {
        // A header only: forward points it at the input.
        layer->in_place = !(ops->flags & MT_LAYER_VIEW);
        layer->output = mt_plan_header(layer->output, &layer->out_shape, layer->out_dtype, NULL);
    } else if (pooled) {
        // The container points it into one of its shared buffers once all are planned.
        layer->in_place = false;
        layer->out_pooled = true;
        layer->output = mt_plan_header(layer->output, &layer->out_shape, layer->out_dtype, NULL);
    } else {
        // The same header for every shape: re-planning allocates nothing (plan_arena.h).
        layer->in_place = false;
        layer->output = mt_plan_tensor(layer->output, &layer->out_shape, layer->out_dtype,
            qstr_str(mt_layer_name(layer)));
    }
    layer->planned = true;
}

void mt_layer_release(mt_layer_obj_t *layer) {
    const mt_layer_ops_t *ops = mt_layer_ops(layer);
    if (ops->children) {
        mt_layer_obj_t *const *children;
        size_t n = ops->children(layer, &children);
        for (size_t i = 0; i < n; i++) {
            mt_layer_release(children[i]);
        }
    }
    if (ops->release) {
        ops->release(layer);
    }
    forget_plan(layer);
}

void mt_layer_adopt(mt_layer_obj_t *const *children, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++) {
        if (children[i] != NULL && children[i]->owned) {
            // Two containers would plan one set of buffers for two uses (DESIGN.md 8).
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("%s: %q (item %u) already belongs to a model: pass mt.clone(it)"),
                what, mt_layer_name(children[i]), (unsigned)i);
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (children[i] != NULL) {
            mt_layer_release(children[i]);  // a plan of its own, made for another use
            children[i]->owned = true;
        }
    }
}

void mt_layer_forward(mt_layer_obj_t *layer, const mt_tensor_obj_t *x, const mt_pass_t *pass) {
    const mt_layer_ops_t *ops = mt_layer_ops(layer);
    if (layer->in_place || (ops->flags & MT_LAYER_VIEW)) {
        // A view shares the input's memory (keeping it alive) and, for int8, its quantization.
        layer->output->data = x->data;
        layer->output->owner = x->owner != MP_OBJ_NULL ? x->owner : MP_OBJ_FROM_PTR(x);
        layer->output->offset = x->owner != MP_OBJ_NULL ? x->offset : 0;  // see mt_tensor_sync
        layer->output->scale = x->scale;
        layer->output->zero_point = x->zero_point;
    }
    ops->forward(layer, x, pass);
}

mt_grad_dest_t mt_grad_begin(const mt_pass_t *pass, mt_tensor_obj_t *param) {
    mt_grad_dest_t dest;
    if (pass->optim != NULL) {
        mt_optim_grad_begin(pass->optim, param, &dest);
        return dest;
    }
    // Plain backward: the gradient of this call added into .grad, as PyTorch accumulates
    // (fp32 of the parameter's size, checked by ensure_grads before the pass; zero_grad()).
    mt_tensor_obj_t *grad = MP_OBJ_TO_PTR(param->grad);
    dest.data = grad->data;
    dest.alpha = 1.0f;
    dest.dtype = MT_FLOAT32;
    dest.rng = NULL;
    return dest;
}

void mt_grad_end(const mt_pass_t *pass, mt_tensor_obj_t *param) {
    if (pass->optim != NULL) {
        mt_optim_grad_end(pass->optim, param);
    }
}

void mt_grad_begin_params(const mt_pass_t *pass, mt_layer_obj_t *layer, mt_grad_dest_t *dw, mt_grad_dest_t *db) {
    *dw = mt_grad_begin(pass, layer->weight);
    *db = layer->bias ? mt_grad_begin(pass, layer->bias) : (mt_grad_dest_t) { 0 };
}

void mt_grad_end_params(const mt_pass_t *pass, mt_layer_obj_t *layer) {
    mt_grad_end(pass, layer->weight);
    if (layer->bias) {
        mt_grad_end(pass, layer->bias);
    }
}

/******************************************************************************/
// Top-level use: any layer can be a model.

// A layer that belongs to a container runs only as part of it: its buffers and scratch
// are planned by the container, for the container's input.
static void check_not_owned(const mt_layer_obj_t *self) {
    if (self->owned) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%q is part of a model: run the model (its layers' .output hold results)"),
            mt_layer_name(self));
    }
}

// The input shape a call sees, adding a batch of one where the layer wants one more dim.
static void input_shape(mt_layer_obj_t *self, const mt_tensor_obj_t *x, mt_shape_t *shape) {
    *shape = x->shape;
    uint8_t want = mt_layer_input_ndim(self);
    if (want && shape->ndim == want - 1) {
        for (int i = shape->ndim; i > 0; i--) {
            shape->dim[i] = shape->dim[i - 1];
        }
        shape->dim[0] = 1;
        shape->ndim++;
    }
}

// The loss buffers of the top's plan (plan_loss): the output's gradient, labels and, for
// float16 and int8 outputs, a small fp32 buffer that losses widen chunks of the output into.
static void plan_loss_buffers(mt_layer_obj_t *self) {
    bool narrow = self->out_dtype != MT_FLOAT32;
    size_t floats = narrow ? mt_loss_buf_floats(&self->out_shape) : 0;
    // The scratch, which no layer uses between forward and backward, if it is big enough.
    float *buf = floats > self->scratch_floats ? mt_plan_alloc(floats * sizeof(float), "loss buffer") : self->scratch;
    self->labels = mt_plan_alloc((size_t)self->out_shape.dim[0] * sizeof(int32_t), "labels");
    // evaluate takes no gradient of the loss: an inference plan has no memory for one.
    self->output_grad = self->plans_inference
        ? mt_plan_header(self->output_grad, &self->out_shape, self->out_dtype, NULL)
        : mt_plan_tensor(self->output_grad, &self->out_shape, self->out_dtype, "output gradient");
    if (!mt_plan_measuring()) {
        mt_shape_t shape = { .ndim = 1, .dim = { (int32_t)floats } };
        self->loss_buf = narrow ? mt_plan_header(self->loss_buf, &shape, MT_FLOAT32, buf) : NULL;
    }
}

// One pass over the whole plan: the tree, the scratch and, once wanted, the loss buffers.
static void plan_pass(mt_layer_obj_t *self, const mt_shape_t *in, uint8_t in_dtype) {
    if (self->plans_inference) {
        mt_plan_for_inference();
    }
    mt_layer_plan(self, in, in_dtype, false, false);
    self->planned = false;  // until the whole plan is placed
    size_t scratch = mt_layer_scratch_floats(self);
    if (scratch > SIZE_MAX / sizeof(float)) {
        mp_raise_msg_varg(&mp_type_MemoryError, MP_ERROR_TEXT("%q: scratch is too large"), mt_layer_name(self));
    }
    self->scratch = scratch ? mt_plan_alloc(scratch * sizeof(float), "scratch") : NULL;
    self->scratch_floats = scratch;
    if (self->plans_loss) {
        plan_loss_buffers(self);
    }
}

// Lays the plan for `in` out in the model's arena (plan_arena.h): measures it, grows the
// arena if it does not fit (the old plan and block are dropped first, so both never have to
// fit at once), then places every buffer and zeroes them. A plan that fits the arena, as
// every plan after the largest one does, allocates nothing. In a heap with no free run as
// long as the plan, each buffer gets a block of its own (as before arenas) rather than failing.
static void plan_layout(mt_layer_obj_t *self, const mt_shape_t *in, uint8_t in_dtype) {
    self->planned = false;
    nlr_buf_t nlr;
    if (nlr_push(&nlr) == 0) {
        mt_plan_begin(NULL);
        plan_pass(self, in, in_dtype);
        size_t bytes = mt_plan_end();
        bool loose = false;
        if (self->arena.block == NULL || bytes > self->arena.bytes) {
            bool plans_loss = self->plans_loss;
            mt_layer_release(self);
            self->plans_loss = plans_loss;
            loose = !mt_plan_arena_reserve(&self->arena, bytes);
        }
        if (loose) {
            mt_plan_begin_loose();
            plan_pass(self, in, in_dtype);
            mt_plan_end();
        } else {
            mt_plan_begin(&self->arena);
            plan_pass(self, in, in_dtype);
            memset(self->arena.block, 0, mt_plan_end());
        }
        nlr_pop();
    } else {
        mt_plan_abort();
        self->planned = false;
        nlr_jump(nlr.ret_val);
    }
    self->last_input = MP_OBJ_NULL;
    self->planned = true;
    self->planned_as_top = true;
}

// Plans the whole tree for `in`, for training or for inference, unless already planned so.
// A training plan for `in` serves inference as it is, unless `exact` (memory()): the arena
// never shrinks, so a smaller plan would free nothing, and a script that predicts before
// each train_step would re-plan twice a sample. If anything fails (a shape error,
// MemoryError), the layer is left unplanned and the next call retries.
static void plan_top(mt_layer_obj_t *self, const mt_shape_t *in, uint8_t in_dtype, bool inference, bool exact) {
    check_not_owned(self);
    if (self->planned && !self->planned_as_top) {
        // Its buffers belong to the model that planned it (and the scratch is the model's):
        // planning it again on its own would change that model's memory under it.
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%q is planned as part of a model: run the model, or use a new layer"), mt_layer_name(self));
    }
    if (self->planned && mt_shape_equal(&self->in_shape, in) && self->in_dtype == in_dtype
        && (self->plans_inference == inference || (inference && !exact))) {
        return;
    }
    self->plans_inference = inference;
    plan_layout(self, in, in_dtype);
}

// What a loss needs joins the plan with the first train_step or evaluate (plain forward
// and backward calls do without): planned again, before the forward that follows.
static void plan_loss(mt_layer_obj_t *self) {
    if (self->plans_loss) {
        return;
    }
    self->plans_loss = true;
    mt_shape_t in = self->in_shape;
    plan_layout(self, &in, self->in_dtype);
}

static bool bytes_overlap(const void *a, size_t a_len, const void *b, size_t b_len) {
    uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
    return a != NULL && b != NULL && pa < pb + b_len && pb < pa + a_len;
}

// Whether a layer of the tree has its own output (not a view of its input) over t's bytes:
// what finds them in a loose plan (plan_arena.h), whose buffers are blocks of their own.
static bool output_overlaps(mt_layer_obj_t *layer, const void *data, size_t bytes) {
    mt_layer_obj_t *const *children;
    size_t n = mt_layer_children(layer, &children);
    for (size_t i = 0; i < n; i++) {
        if (output_overlaps(children[i], data, bytes)) {
            return true;
        }
    }
    const mt_tensor_obj_t *y = layer->output;
    return y != NULL && !layer->in_place && !(mt_layer_ops(layer)->flags & MT_LAYER_VIEW)
           && bytes_overlap(data, bytes, y->data, y->size * mt_dtype_size(y->dtype));
}

// A pass writes the model's planned buffers (outputs, gradients, scratch) while it reads
// its input and dy: given one of them back (m.predict(m.forward(x))) it would read what it
// has overwritten, a silently wrong answer. Copying it in the hot path would allocate, so
// it is refused: the caller copies it (mt.zeros(y.shape).copy_from(y)) once.
static void check_not_own_buffer(mt_layer_obj_t *self, const mt_tensor_obj_t *t, const char *what) {
    size_t bytes = t->size * mt_dtype_size(t->dtype);
    const mt_tensor_obj_t *g = self->input_grad;
    if (bytes_overlap(t->data, bytes, self->arena.block, self->arena.bytes)
        || (g != NULL && bytes_overlap(t->data, bytes, g->data, g->size * mt_dtype_size(g->dtype)))
        || output_overlaps(self, t->data, bytes)) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%q %s is this model's own buffer: copy it first"),
            mt_layer_name(self), what);
    }
}

// x, with the model planned for its shape: for training (forward, train_step), or for
// inference (predict, evaluate), which plans no gradients and reuses activations.
static mt_tensor_obj_t *prepare_input(mt_layer_obj_t *self, mp_obj_t x_in, const char *what, bool inference) {
    self->last_input = MP_OBJ_NULL;  // whatever happens next, the last forward is gone
    mt_tensor_obj_t *x = mt_tensor_get(x_in, what);
    check_not_own_buffer(self, x, what);
    mt_shape_t shape;
    input_shape(self, x, &shape);
    plan_top(self, &shape, x->dtype, inference, false);
    return x;
}

// last_input marks a forward whose buffers backward may read: it is set only once the
// pass has completed, so a pass that raised leaves backward nothing to read.
static void run_forward(mt_layer_obj_t *self, mt_tensor_obj_t *x, bool training) {
    mt_pass_t pass = { .training = training, .scratch = self->scratch, .scratch_floats = self->scratch_floats,
        .optim = NULL };
    self->last_input = MP_OBJ_NULL;
    mt_layer_forward(self, x, &pass);
    self->last_input = MP_OBJ_FROM_PTR(x);
}

// Whether every value of a float tensor is finite (int8 ones always are).
static bool all_finite(const mt_tensor_obj_t *t) {
    if (t->dtype == MT_FLOAT32) {
        return mt_all_finite_f32(t->data, t->size);
    } else if (t->dtype == MT_FLOAT16) {
        const uint16_t *h = t->data;
        for (size_t i = 0; i < t->size; i++) {
            if ((h[i] & 0x7c00) == 0x7c00) {  // all-ones exponent: inf or NaN
                return false;
            }
        }
    }
    return true;
}

// Whether the plan is still the one the last forward ran with: memory(shape) or macs(shape)
// may have planned the model for another shape since.
static bool plan_fits(mt_layer_obj_t *self, const mt_tensor_obj_t *x) {
    mt_shape_t shape;
    input_shape(self, x, &shape);
    return mt_shape_equal(&shape, &self->in_shape) && x->dtype == self->in_dtype;
}

// dy must have the output's shape, or that shape without its batch of one when the
// input came without one (forward added it).
static bool dy_shape_fits(const mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_shape_t *dy) {
    if (mt_shape_equal(dy, &self->out_shape)) {
        return true;
    }
    if (x->shape.ndim + 1 != self->in_shape.ndim || dy->ndim + 1 != self->out_shape.ndim) {
        return false;
    }
    for (int i = 0; i < dy->ndim; i++) {
        if (dy->dim[i] != self->out_shape.dim[i + 1]) {
            return false;
        }
    }
    return true;
}

// The loss of the planned output against target, writing dL/doutput into output_grad if grad.
static float run_loss(mt_layer_obj_t *self, const mt_loss_obj_t *loss, mp_obj_t target, bool grad) {
    if (self->loss_buf == NULL) {
        return loss->compute(loss, self->output, target, grad ? mt_tensor_f32(self->output_grad) : NULL, self->labels);
    }
    return loss->compute_narrow(loss, self->output, target, grad ? self->output_grad : NULL, self->labels,
        self->loss_buf->data);
}

// The index of the largest of n values of row r of t (any dtype; an int8 scale is positive,
// so the integers order as the values do).
static int row_argmax(const mt_tensor_obj_t *t, int r, int n) {
    int best = 0;
    float best_v = 0.0f;
    for (int c = 0; c < n; c++) {
        size_t i = (size_t)r * (size_t)n + (size_t)c;
        float v = t->dtype == MT_FLOAT32 ? ((const float *)t->data)[i]
            : t->dtype == MT_FLOAT16 ? mt_f16_to_f32(((const uint16_t *)t->data)[i])
            : (float)((const int8_t *)t->data)[i];
        if (c == 0 || v > best_v) {
            best = c;
            best_v = v;
        }
    }
    return best;
}

// Allocates .grad for every trainable float parameter that lacks one (plain backward
// only), and checks the ones users assigned before any kernel writes into them. int8 and
// mixed layers update inside backward(dy, opt)/train_step and get no .grad.
static void ensure_grads(mt_layer_obj_t *layer) {
    mt_layer_obj_t *const *children;
    size_t n = mt_layer_children(layer, &children);
    for (size_t i = 0; i < n; i++) {
        ensure_grads(children[i]);
    }
    if (n == 0 && layer->trainable && layer->dtype != MT_INT8 && !mt_layer_is_mixed(layer)) {
        mt_tensor_obj_t *params[] = { layer->weight, layer->bias };
        for (size_t i = 0; i < 2; i++) {
            if (params[i] == NULL) {
                continue;
            }
            if (params[i]->grad == mp_const_none) {
                params[i]->grad = MP_OBJ_FROM_PTR(mt_tensor_new(&params[i]->shape, MT_FLOAT32, "grad"));
            }
            mt_tensor_obj_t *g = MP_OBJ_TO_PTR(params[i]->grad);
            bool is_tensor = mp_obj_is_type(params[i]->grad, &mt_tensor_type);
            if (is_tensor) {
                mt_tensor_sync(g);  // a frombuffer .grad whose bytearray moved
            }
            if (!is_tensor || g->dtype != MT_FLOAT32
                || g->size != params[i]->size) {
                mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%q: a .grad is not float32 of its shape"),
                    mt_layer_name(layer));
            }
        }
    }
}

// The input gradient backward() returns, in one block kept at the largest size used (its
// header reshaped), so backward() at alternating shapes does not allocate again either.
static mt_tensor_obj_t *sized_input_grad(mt_layer_obj_t *self, const mt_shape_t *shape, uint8_t dtype) {
    mt_tensor_obj_t *t = self->input_grad;
    size_t bytes = mt_shape_size(shape) * mt_dtype_size(dtype);
    if (t == NULL || t->owner != MP_OBJ_NULL || self->input_grad_bytes < bytes) {
        self->input_grad_bytes = bytes;
        return mt_tensor_new(shape, dtype, "input gradient");
    }
    t->dtype = dtype;
    t->shape = *shape;
    t->size = mt_shape_size(shape);
    t->scale = 1.0f;
    t->zero_point = 0;
    return t;  // backward writes every element of its input gradient
}

// forward(x, training=<mode>, grad=<training>) -> output Tensor (planned once per input shape,
// reused); the mode is the layer's (train()/eval()), True unless eval() was called. grad: a
// backward may follow (a training plan); without it (the default when not training) the pass
// runs as predict does, in an inference plan unless a training plan for the shape exists.
// grad=True with training=False is eval-mode fine-tuning (BatchNorm's running statistics).
mp_obj_t mt_layer_forward_call(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_x, ARG_training, ARG_grad };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_x, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_training, MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_grad, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args - 1, pos_args + 1, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mt_layer_obj_t *self = mt_layer_get(pos_args[0], "self");
    bool training = args[ARG_training].u_obj == MP_OBJ_NULL ? self->training : mp_obj_is_true(args[ARG_training].u_obj);
    bool grad = args[ARG_grad].u_obj == MP_OBJ_NULL ? training : mp_obj_is_true(args[ARG_grad].u_obj);
    mt_tensor_obj_t *x = prepare_input(self, args[ARG_x].u_obj, "forward: x", !grad);
    run_forward(self, x, training);
    if (!grad) {
        self->last_input = MP_OBJ_NULL;  // nothing for backward, as after predict
    }
    return MP_OBJ_FROM_PTR(self->output);
}
static MP_DEFINE_CONST_FUN_OBJ_KW(layer_forward_obj, 2, mt_layer_forward_call);

// backward(dy, opt=None) -> input gradient Tensor. Without opt it writes the
// parameters' .grad; with one, it updates them in the same pass (as train_step does).
static mp_obj_t layer_backward(size_t n_args, const mp_obj_t *args) {
    mt_layer_obj_t *self = mt_layer_get(args[0], "self");
    check_not_owned(self);
    if (!self->planned || self->last_input == MP_OBJ_NULL || !plan_fits(self, MP_OBJ_TO_PTR(self->last_input))) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%q.backward: call forward first (with grad)"),
            mt_layer_name(self));
    }
    mt_tensor_obj_t *dy = mt_tensor_get(args[1], "backward: dy");
    check_not_own_buffer(self, dy, "backward: dy");
    if (dy->dtype != self->out_dtype) {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("%q.backward: dy must be %q (as the output), not %q"),
            mt_layer_name(self), mt_dtype_qstr(self->out_dtype), mt_dtype_qstr(dy->dtype));
    }
    // Synced: a frombuffer input's bytearray may have moved since forward.
    mt_tensor_obj_t *x = mt_tensor_get(self->last_input, "backward: x");
    if (dy->size != self->output->size || !dy_shape_fits(self, x, &dy->shape)) {
        char a[64], b[64];
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%q.backward: dy has shape %s, the output %s"),
            mt_layer_name(self), mt_shape_str(&dy->shape, a, sizeof(a)), mt_shape_str(&self->out_shape, b, sizeof(b)));
    }
    bool with_optim = n_args > 2 && args[2] != mp_const_none;
    if (with_optim && !all_finite(dy)) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%q.backward: dy is not finite; weights unchanged"),
            mt_layer_name(self));
    }
    self->input_grad = sized_input_grad(self, &x->shape, self->in_dtype);
    // Everything checked before any kernel writes.
    mt_optim_obj_t *optim = NULL;
    if (with_optim) {
        optim = mt_optim_begin_pass(args[2], self, "backward");
    } else {
        ensure_grads(self);
    }
    // Without a loss there is no relative loss: dynamic top-k uses its largest ratio.
    mt_pass_t pass = { .training = true, .scratch = self->scratch, .scratch_floats = self->scratch_floats,
        .optim = optim, .loss_ratio = 1.0f };
    // A backward that raised may have left the layers' buffers half rewritten.
    self->last_input = MP_OBJ_NULL;
    mt_layer_ops(self)->backward(self, x, dy, self->input_grad, &pass);
    self->last_input = MP_OBJ_FROM_PTR(x);
    return MP_OBJ_FROM_PTR(self->input_grad);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(layer_backward_obj, 2, 3, layer_backward);

static void check_loss_output(mt_layer_obj_t *self, const mt_loss_obj_t *loss) {
    if (loss->takes_labels && self->out_shape.ndim != 2) {
        char buf[64];
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%q: %q needs (batch, classes) outputs, the model gives %s"),
            mt_layer_name(self), loss->name, mt_shape_str(&self->out_shape, buf, sizeof(buf)));
    }
}

// train_step(x, y, loss, opt, skip_below=None) -> loss: forward, loss, backward and update,
// allocating nothing. With skip_below, a step whose loss is below it ends after the loss:
// no backward, no update (early halting's per-sample skip, mcutrain.halting). The caller
// knows whether it skipped: loss < skip_below, compared as Python floats, as here.
static mp_obj_t layer_train_step(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_x, ARG_y, ARG_loss, ARG_opt, ARG_skip_below };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_x, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_y, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_loss, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_opt, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_skip_below, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args - 1, pos_args + 1, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mt_layer_obj_t *self = mt_layer_get(pos_args[0], "self");
    const mt_loss_obj_t *loss = mt_loss_get(args[ARG_loss].u_obj);
    mp_obj_t opt = args[ARG_opt].u_obj;
    bool skippable = args[ARG_skip_below].u_obj != mp_const_none;
    // Converted before anything runs: a bad skip_below is a TypeError with nothing changed.
    mp_float_t skip_below = skippable ? mp_obj_get_float(args[ARG_skip_below].u_obj) : (mp_float_t)0;
    // A TypeError/ValueError before anything runs; its update policies active before planning.
    mt_optim_activate(opt, self, "train_step");
    mt_tensor_obj_t *x = prepare_input(self, args[ARG_x].u_obj, "train_step: x", false);
    check_loss_output(self, loss);
    plan_loss(self);
    run_forward(self, x, self->training);
    self->last_input = MP_OBJ_NULL;  // set again once the whole step has succeeded
    float value = run_loss(self, loss, args[ARG_y].u_obj, true);
    if (!isfinite(value)) {
        // The fused update runs inside backward: stop before it, or every weight turns NaN.
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%q.train_step: loss is not finite; weights unchanged"),
            mt_layer_name(self));
    }
    mp_obj_t result = mp_obj_new_float_from_f(value);
    // Compared as the returned Python float (30 bits on the boards), so that the caller's
    // `loss < skip_below` always agrees with what happened here.
    bool skip = skippable && mp_obj_get_float(result) < skip_below;
    if (!skip && mt_layer_has_trainable(self)) {
        mt_optim_obj_t *optim = mt_optim_begin_pass(opt, self, "train_step");
        // The sample's loss relative to the largest seen, for dynamic top-k updates.
        float ratio = mt_optim_loss_ratio(optim, value);
        mt_pass_t pass = { .training = self->training, .scratch = self->scratch,
            .scratch_floats = self->scratch_floats, .optim = optim, .loss_ratio = ratio };
        mt_layer_ops(self)->backward(self, x, self->output_grad, NULL, &pass);
    }
    self->last_input = MP_OBJ_FROM_PTR(x);
    return result;
}
static MP_DEFINE_CONST_FUN_OBJ_KW(layer_train_step_obj, 5, layer_train_step);

// predict(x) -> output Tensor, inference mode (BatchNorm uses running statistics), in an
// inference plan: no gradient buffers, and a Sequential's activations take turns in two
// buffers (so the layers' .output before the last are overwritten as it runs).
static mp_obj_t layer_predict(mp_obj_t self_in, mp_obj_t x_in) {
    mt_layer_obj_t *self = mt_layer_get(self_in, "self");
    mt_tensor_obj_t *x = prepare_input(self, x_in, "predict: x", true);
    run_forward(self, x, false);
    self->last_input = MP_OBJ_NULL;  // an inference plan has nothing for backward
    return MP_OBJ_FROM_PTR(self->output);
}
static MP_DEFINE_CONST_FUN_OBJ_2(layer_predict_obj, layer_predict);

// evaluate(x, y, loss=cross_entropy) -> (mean loss, accuracy) on one batch.
static mp_obj_t layer_evaluate(size_t n_args, const mp_obj_t *args) {
    mt_layer_obj_t *self = mt_layer_get(args[0], "self");
    const mt_loss_obj_t *loss = mt_loss_get(n_args > 3 ? args[3] : MP_OBJ_FROM_PTR(&mt_cross_entropy_obj));
    mt_tensor_obj_t *x = prepare_input(self, args[1], "evaluate: x", true);
    check_loss_output(self, loss);
    plan_loss(self);
    run_forward(self, x, false);
    self->last_input = MP_OBJ_NULL;  // set again once the loss has succeeded
    float value = run_loss(self, loss, args[2], false);
    mp_obj_t accuracy = mp_const_none;
    if (loss->takes_labels) {
        int rows = self->out_shape.dim[0], classes = self->out_shape.dim[1];
        int correct = 0;
        for (int r = 0; r < rows; r++) {
            correct += row_argmax(self->output, r, classes) == self->labels[r];
        }
        accuracy = mp_obj_new_float_from_f((float)correct / (float)rows);
    }
    mp_obj_t items[2] = { mp_obj_new_float_from_f(value), accuracy };
    return mp_obj_new_tuple(2, items);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(layer_evaluate_obj, 3, 4, layer_evaluate);

/******************************************************************************/
// Introspection: parameters, state_dict, memory, macs, config

// Dicts users read (state_dict, memory, macs, config) keep their insertion order. At
// least one slot: an empty dict's NULL table makes dict.copy() memcpy from NULL (UBSan).
mp_obj_t mt_new_ordered_dict(size_t n) {
    mp_obj_t dict = mp_obj_new_dict(n ? n : 1);
    mp_obj_dict_get_map(dict)->is_ordered = 1;
    return dict;
}

static const qstr param_names[] = {
    MP_QSTR_weight, MP_QSTR_bias, MP_QSTR_running_mean, MP_QSTR_running_var, MP_QSTR_weight_scale,
};

static mt_tensor_obj_t *layer_param(const mt_layer_obj_t *layer, size_t i) {
    return i == 0 ? layer->weight : i == 1 ? layer->bias : i == 4 ? layer->weight_scale : layer->extra_params[i - 2];
}

// Children's name prefixes: Residual names them body/shortcut, Sequential by index.
static qstr child_name(const mt_layer_obj_t *layer, size_t i);

static void collect_params(const mt_layer_obj_t *layer, mp_obj_t list, mp_obj_t dict, vstr_t *prefix,
    bool trainable_only) {
    mt_layer_obj_t *const *children;
    size_t n = mt_layer_children(layer, &children);
    size_t len = prefix->len;
    for (size_t i = 0; i < n; i++) {
        if (children[i] == NULL) {
            continue;
        }
        qstr name = child_name(layer, i);
        if (name != MP_QSTRnull) {
            vstr_printf(prefix, "%q.", name);
        } else {
            vstr_printf(prefix, "%u.", (unsigned)i);
        }
        collect_params(children[i], list, dict, prefix, trainable_only);
        prefix->len = len;
    }
    for (size_t i = 0; i < MP_ARRAY_SIZE(param_names); i++) {
        mt_tensor_obj_t *p = layer_param(layer, i);
        if (p == NULL || (trainable_only && i >= 2)) {
            continue;
        }
        if (list != MP_OBJ_NULL && i < 2) {
            mp_obj_list_append(list, MP_OBJ_FROM_PTR(p));
        }
        if (dict != MP_OBJ_NULL) {
            vstr_printf(prefix, "%q", param_names[i]);
            mp_obj_dict_store(dict, mp_obj_new_str(prefix->buf, prefix->len), MP_OBJ_FROM_PTR(p));
            prefix->len = len;
        }
    }
}

void mt_layer_collect_params(const mt_layer_obj_t *layer, mp_obj_t list, mp_obj_t dict, bool trainable_only) {
    vstr_t prefix;
    vstr_init(&prefix, 16);
    collect_params(layer, list, dict, &prefix, trainable_only);
    vstr_clear(&prefix);
}

static void visit(mt_layer_obj_t *layer, mt_layer_visit_t fn, void *ctx, vstr_t *name) {
    mt_layer_obj_t *const *children;
    size_t n = mt_layer_children(layer, &children);
    if (n == 0) {
        fn(layer, vstr_null_terminated_str(name), ctx);
        return;
    }
    size_t len = name->len;
    for (size_t i = 0; i < n; i++) {
        if (children[i] == NULL) {
            continue;
        }
        qstr q = child_name(layer, i);
        if (len) {
            vstr_add_char(name, '.');
        }
        if (q != MP_QSTRnull) {
            vstr_add_str(name, qstr_str(q));
        } else {
            vstr_printf(name, "%u", (unsigned)i);
        }
        visit(children[i], fn, ctx, name);
        name->len = len;
    }
}

void mt_layer_visit(mt_layer_obj_t *layer, mt_layer_visit_t fn, void *ctx) {
    vstr_t name;
    vstr_init(&name, 16);
    visit(layer, fn, ctx, &name);
    vstr_clear(&name);
}

// parameters() -> list of weight and bias Tensors, in order.
static mp_obj_t layer_parameters(mp_obj_t self_in) {
    mp_obj_t list = mp_obj_new_list(0, NULL);
    vstr_t prefix;
    vstr_init(&prefix, 16);
    collect_params(mt_layer_get(self_in, "self"), list, MP_OBJ_NULL, &prefix, false);
    return list;
}
static MP_DEFINE_CONST_FUN_OBJ_1(layer_parameters_obj, layer_parameters);

// state_dict() -> {"0.weight": Tensor, ...}: the live tensors, PyTorch-style names.
static mp_obj_t layer_state_dict(mp_obj_t self_in) {
    mp_obj_t dict = mt_new_ordered_dict(0);
    vstr_t prefix;
    vstr_init(&prefix, 16);
    collect_params(mt_layer_get(self_in, "self"), MP_OBJ_NULL, dict, &prefix, false);
    return dict;
}
static MP_DEFINE_CONST_FUN_OBJ_1(layer_state_dict_obj, layer_state_dict);

// Checks that value can load into the model's tensor `dst` named key: a Tensor of the
// same shape and a compatible dtype (float32 and float16 convert into each other).
static mt_tensor_obj_t *loadable(mp_obj_t key, mp_obj_t value, const mt_tensor_obj_t *dst) {
    const char *name = mp_obj_str_get_str(key);
    if (!mp_obj_is_type(value, &mt_tensor_type)) {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("load_state_dict: %s must be a Tensor, not %s"),
            name, mp_obj_get_type_str(value));
    }
    mt_tensor_obj_t *src = MP_OBJ_TO_PTR(value);
    if (!mt_shape_equal(&src->shape, &dst->shape)) {
        // e.g. a PyTorch (O, I, KH, KW) conv weight for the engine's (O, KH, KW, I).
        char a[64], b[64];
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("load_state_dict: %s has shape %s, the model %s"),
            name, mt_shape_str(&src->shape, a, sizeof(a)), mt_shape_str(&dst->shape, b, sizeof(b)));
    }
    bool both_float = (MT_DTYPES_FLOAT & MT_DTYPE_BIT(src->dtype)) && (MT_DTYPES_FLOAT & MT_DTYPE_BIT(dst->dtype));
    if (src->dtype != dst->dtype && !both_float) {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("load_state_dict: %s is %q, the model's is %q"),
            name, mt_dtype_qstr(src->dtype), mt_dtype_qstr(dst->dtype));
    }
    return src;
}

// Appends "what: [names]" of a non-empty list to msg.
static void describe_keys(vstr_t *msg, const char *what, mp_obj_t list) {
    if (mp_obj_get_int(mp_obj_len(list)) == 0) {
        return;
    }
    if (msg->len) {
        vstr_add_str(msg, "; ");
    }
    vstr_add_str(msg, what);
    mp_print_t out = { msg, (mp_print_strn_t)vstr_add_strn };
    mp_obj_print_helper(&out, list, PRINT_REPR);
}

// load_state_dict(state_dict, strict=True) -> (missing, unexpected) key lists, as PyTorch:
// each value must be a Tensor of its parameter's shape and a compatible dtype; with strict
// the keys must match exactly (strict=False skips missing and unexpected ones, shapes are
// still checked). Everything is checked before anything is copied, so a refused dict leaves
// the model unchanged.
static mp_obj_t layer_load_state_dict(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_state_dict, ARG_strict };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_state_dict, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_strict, MP_ARG_BOOL, {.u_bool = true} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args - 1, pos_args + 1, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mp_obj_t src = args[ARG_state_dict].u_obj;
    if (!mp_obj_is_dict_or_ordereddict(src)) {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("load_state_dict: need a dict, not %s"),
            mp_obj_get_type_str(src));
    }
    mp_map_t *own_map = mp_obj_dict_get_map(layer_state_dict(pos_args[0]));
    mp_map_t *src_map = mp_obj_dict_get_map(src);
    mp_obj_t missing = mp_obj_new_list(0, NULL), unexpected = mp_obj_new_list(0, NULL);
    for (size_t i = 0; i < own_map->alloc; i++) {
        if (mp_map_slot_is_filled(own_map, i) && mp_map_lookup(src_map, own_map->table[i].key, MP_MAP_LOOKUP) == NULL) {
            mp_obj_list_append(missing, own_map->table[i].key);
        }
    }
    for (size_t i = 0; i < src_map->alloc; i++) {
        if (mp_map_slot_is_filled(src_map, i) && mp_map_lookup(own_map, src_map->table[i].key, MP_MAP_LOOKUP) == NULL) {
            mp_obj_list_append(unexpected, src_map->table[i].key);
        }
    }
    if (args[ARG_strict].u_bool && (mp_obj_is_true(missing) || mp_obj_is_true(unexpected))) {
        vstr_t msg;
        vstr_init(&msg, 64);
        describe_keys(&msg, "missing keys ", missing);
        describe_keys(&msg, "unexpected keys ", unexpected);
        mp_raise_msg_varg(&mp_type_KeyError, MP_ERROR_TEXT("load_state_dict: %s"), vstr_null_terminated_str(&msg));
    }
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < own_map->alloc; i++) {
            if (!mp_map_slot_is_filled(own_map, i)) {
                continue;
            }
            mp_map_elem_t *e = mp_map_lookup(src_map, own_map->table[i].key, MP_MAP_LOOKUP);
            if (e == NULL) {
                continue;  // missing, allowed by strict=False
            }
            mt_tensor_obj_t *dst = MP_OBJ_TO_PTR(own_map->table[i].value);
            mt_tensor_obj_t *src_t = loadable(own_map->table[i].key, e->value, dst);
            if (pass == 0 || src_t == dst) {
                continue;
            }
            if (!mt_tensor_convert_into(src_t, dst)) {
                memmove(dst->data, src_t->data, dst->size * mt_dtype_size(dst->dtype));
                dst->scale = src_t->scale;
                dst->zero_point = src_t->zero_point;
            }
        }
    }
    mp_obj_t result[2] = { missing, unexpected };
    return mp_obj_new_tuple(2, result);
}
static MP_DEFINE_CONST_FUN_OBJ_KW(layer_load_state_dict_obj, 2, layer_load_state_dict);

// copy_from(other): other's parameters, running statistics, tracked quant_range (exactly:
// a Python float on the boards keeps only 30 bits) and trainable into this layer, a simple
// layer of the same type and config. mt.clone builds its copies with it.
static mp_obj_t layer_copy_from(mp_obj_t self_in, mp_obj_t other_in) {
    mt_layer_obj_t *self = mt_layer_get(self_in, "self");
    mt_layer_obj_t *other = mt_layer_get(other_in, "copy_from: other");
    if (self->base.type != other->base.type || (mt_layer_ops(self)->flags & MT_LAYER_COMPOSITE)) {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("%q.copy_from: need a %q, not %q (containers: mt.clone)"),
            mt_layer_name(self), mt_layer_name(self), mt_layer_name(other));
    }
    // Check everything first, so a refused copy leaves the layer unchanged.
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < MP_ARRAY_SIZE(param_names); i++) {
            mt_tensor_obj_t *dst = layer_param(self, i), *src = layer_param(other, i);
            if (dst == NULL && src == NULL) {
                continue;
            }
            if (dst == NULL || src == NULL || dst->dtype != src->dtype || !mt_shape_equal(&dst->shape, &src->shape)) {
                mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%q.copy_from: its %q differs: build it with the same config"),
                    mt_layer_name(self), param_names[i]);
            }
            if (pass == 1 && dst != src) {
                memmove(dst->data, src->data, dst->size * mt_dtype_size(dst->dtype));
                dst->scale = src->scale;
                dst->zero_point = src->zero_point;
            }
        }
    }
    if (self->quant_range != NULL && other->quant_range != NULL) {
        *self->quant_range = *other->quant_range;
    }
    self->trainable = other->trainable;
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(layer_copy_from_obj, layer_copy_from);

// The input dtype a model expects: that of its first layer with a dtype of its own.
static uint8_t first_dtype(const mt_layer_obj_t *layer) {
    mt_layer_obj_t *const *children;
    size_t n = mt_layer_children(layer, &children);
    for (size_t i = 0; i < n; i++) {
        uint8_t d = children[i] ? first_dtype(children[i]) : MT_DTYPE_ANY;
        if (d != MT_DTYPE_ANY) {
            return d;
        }
    }
    if (n == 0 && (mt_layer_ops(layer)->flags & MT_LAYER_CONVERTS)) {
        // A Convert first: it takes float32, or float16 when converting to float32.
        return layer->dtype == MT_FLOAT32 ? MT_FLOAT16 : MT_FLOAT32;
    }
    return n ? MT_DTYPE_ANY : layer->dtype;
}

// For memory(shape) and macs(shape): the dtype the model last ran on, else the one it expects.
static uint8_t planned_input_dtype(const mt_layer_obj_t *self) {
    if (self->planned) {
        return self->in_dtype;
    }
    uint8_t d = first_dtype(self);
    return d == MT_DTYPE_ANY ? MT_FLOAT32 : d;
}

// 64-bit sums: a model's byte counts, each checked when planned, may exceed 32 bits together.
typedef struct {
    uint64_t weights, gradients, optimizer, activations;
} memory_use_t;

static void add_memory(const mt_layer_obj_t *layer, memory_use_t *use) {
    const mt_layer_ops_t *ops = mt_layer_ops(layer);
    mt_layer_obj_t *const *children;
    size_t n = mt_layer_children(layer, &children);
    for (size_t i = 0; i < n; i++) {
        if (children[i] != NULL) {
            add_memory(children[i], use);
        }
    }
    for (size_t i = 0; i < MP_ARRAY_SIZE(param_names); i++) {
        mt_tensor_obj_t *p = layer_param(layer, i);
        if (p == NULL) {
            continue;
        }
        use->weights += p->size * mt_dtype_size(p->dtype);
        if (p->grad != mp_const_none) {
            use->gradients += ((mt_tensor_obj_t *)MP_OBJ_TO_PTR(p->grad))->size * sizeof(float);
        }
    }
    if (ops->grad_bytes != NULL) {
        use->gradients += ops->grad_bytes(layer);
    }
    // Outputs of its own (a Sequential's is its last layer's; a Residual's sum is its own).
    // A pooled output's bytes are its Sequential's shared buffers (that layer's state_bytes).
    bool own_output = !layer->in_place && !layer->out_pooled && !(ops->flags & MT_LAYER_VIEW)
        && (n == 0 || layer->output != children[n - 1]->output);
    if (layer->planned && layer->output != NULL && own_output) {
        use->activations += layer->output->size * mt_dtype_size(layer->output->dtype);
    }
    use->activations += layer->state_bytes;
}

// release(): frees what running the model planned (activations, gradient buffers, scratch)
// until its next call, e.g. a float model once quantized. Weights and optimizer state stay.
static mp_obj_t layer_release(mp_obj_t self_in) {
    mt_layer_obj_t *self = mt_layer_get(self_in, "self");
    if (self->owned) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%q is part of a model: release the model"), mt_layer_name(self));
    }
    mt_layer_release(self);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(layer_release_obj, layer_release);

// memory(input_shape=None, inference=False) -> dict of bytes by kind, for a training step or,
// with inference=True, for predict/evaluate (no gradients, reused activations). Plans the
// model that way for input_shape (default: the shape it is planned for), as a call would.
static mp_obj_t layer_memory(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_input_shape, ARG_inference };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_input_shape, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_inference, MP_ARG_KW_ONLY | MP_ARG_BOOL, {.u_bool = false} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args - 1, pos_args + 1, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mt_layer_obj_t *self = mt_layer_get(pos_args[0], "self");
    const bool inference = args[ARG_inference].u_bool;
    if (args[ARG_input_shape].u_obj != mp_const_none) {
        mt_shape_t shape;
        mt_shape_from_obj(args[ARG_input_shape].u_obj, &shape, "memory: input_shape");
        plan_top(self, &shape, planned_input_dtype(self), inference, true);
    } else if (self->planned && self->plans_inference != inference) {
        mt_shape_t shape = self->in_shape;
        plan_top(self, &shape, self->in_dtype, inference, true);
    }
    if (!self->planned) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%q.memory: give input_shape, or run forward/train_step first"), mt_layer_name(self));
    }
    memory_use_t use = { 0 };
    add_memory(self, &use);
    if (inference) {
        use.gradients = 0;  // .grad tensors a script made are its own, not inference's
    } else {
        // The state of the last optimizer built for this model (it owns that state).
        use.optimizer = self->optim != MP_OBJ_NULL ? mt_optim_state_bytes(self->optim) : 0;
        // A training step's loss buffers, whether or not one has run yet (plan_loss).
        use.gradients += mt_shape_bytes(&self->out_shape, self->out_dtype, "output gradient");
    }
    uint64_t scratch = (uint64_t)self->scratch_floats * sizeof(float) + (uint64_t)self->out_shape.dim[0] * sizeof(int32_t);
    size_t loss_floats = self->out_dtype != MT_FLOAT32 ? mt_loss_buf_floats(&self->out_shape) : 0;
    scratch += loss_floats > self->scratch_floats ? (uint64_t)loss_floats * sizeof(float) : 0;  // see plan_loss
    mp_obj_t dict = mt_new_ordered_dict(6);
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_weights), mp_obj_new_int_from_ull(use.weights));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_gradients), mp_obj_new_int_from_ull(use.gradients));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_optimizer), mp_obj_new_int_from_ull(use.optimizer));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_activations), mp_obj_new_int_from_ull(use.activations));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_scratch), mp_obj_new_int_from_ull(scratch));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_total),
        mp_obj_new_int_from_ull(use.weights + use.gradients + use.optimizer + use.activations + scratch));
    return dict;
}
static MP_DEFINE_CONST_FUN_OBJ_KW(layer_memory_obj, 1, layer_memory);

// macs(input_shape=None) -> {"forward", "backward", "train_step"} multiply-accumulates.
static mp_obj_t layer_macs(size_t n_args, const mp_obj_t *args) {
    mt_layer_obj_t *self = mt_layer_get(args[0], "self");
    if (n_args > 1) {
        mt_shape_t shape;
        mt_shape_from_obj(args[1], &shape, "macs: input_shape");
        plan_top(self, &shape, planned_input_dtype(self), self->planned && self->plans_inference, false);
    }
    if (!self->planned) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%q.macs: give input_shape, or run forward/train_step first"), mt_layer_name(self));
    }
    uint64_t fwd = mt_layer_macs(self, MT_MACS_FORWARD, false);
    uint64_t bwd = mt_layer_macs(self, MT_MACS_GRAD_INPUT, false) + mt_layer_macs(self, MT_MACS_GRAD_WEIGHT, false);
    mp_obj_t dict = mt_new_ordered_dict(3);
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_forward), mp_obj_new_int_from_ull(fwd));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_backward), mp_obj_new_int_from_ull(bwd));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_train_step), mp_obj_new_int_from_ull(fwd + bwd));
    return dict;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(layer_macs_obj, 1, 2, layer_macs);

static mp_obj_t layer_config(mp_obj_t self_in) {
    mt_layer_obj_t *self = mt_layer_get(self_in, "self");
    const mt_layer_ops_t *ops = mt_layer_ops(self);
    return ops->config ? ops->config(self) : mt_new_ordered_dict(0);
}
static MP_DEFINE_CONST_FUN_OBJ_1(layer_config_obj, layer_config);

static void set_trainable(mt_layer_obj_t *layer, bool trainable) {
    mt_layer_obj_t *const *children;
    size_t n = mt_layer_children(layer, &children);
    for (size_t i = 0; i < n; i++) {
        if (children[i] != NULL) {
            set_trainable(children[i], trainable);
        }
    }
    layer->trainable = trainable;
}

// layer.quant_range = (min, max) sets the tracked range as if observed once (calibration);
// None forgets it, so the next pass measures it again.
static void set_quant_range(mt_range_tracker_t *t, mp_obj_t value) {
    if (value == mp_const_none) {
        t->count = 0;
        return;
    }
    mp_obj_t *items;
    mp_obj_get_array_fixed_n(value, 2, &items);
    float lo = (float)mp_obj_get_float(items[0]), hi = (float)mp_obj_get_float(items[1]);
    mt_qparams_t qp;
    if (!(lo <= hi) || mt_qparams_asymmetric(lo, hi, &qp) != 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("quant_range must be (min, max) with finite min <= max"));
    }
    t->min = lo;
    t->max = hi;
    t->count = 1;
}

void mt_layer_attr(mp_obj_t self_in, qstr attr, mp_obj_t *dest) {
    mt_layer_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (dest[0] == MP_OBJ_SENTINEL) {
        if (attr == MP_QSTR_trainable && dest[1] != MP_OBJ_NULL) {
            if (!mp_obj_is_bool(dest[1])) {
                mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("trainable must be True or False, not %s"),
                    mp_obj_get_type_str(dest[1]));
            }
            set_trainable(self, dest[1] == mp_const_true);
            dest[0] = MP_OBJ_NULL;
        } else if (attr == MP_QSTR_quant_range && dest[1] != MP_OBJ_NULL && self->quant_range != NULL) {
            set_quant_range(self->quant_range, dest[1]);
            dest[0] = MP_OBJ_NULL;
        }
        return;
    }
    if (attr == MP_QSTR_quant_range && self->quant_range != NULL) {
        const mt_range_tracker_t *t = self->quant_range;
        mp_obj_t pair[2] = { mp_obj_new_float_from_f(t->min), mp_obj_new_float_from_f(t->max) };
        dest[0] = t->count == 0 ? mp_const_none : mp_obj_new_tuple(2, pair);
        return;
    }
    switch (attr) {
        case MP_QSTR_trainable:
            dest[0] = mp_obj_new_bool(mt_layer_has_trainable(self) || (self->trainable && !(mt_layer_ops(self)->flags & MT_LAYER_COMPOSITE)));
            return;
        case MP_QSTR_output:
            dest[0] = self->output ? MP_OBJ_FROM_PTR(self->output) : mp_const_none;
            return;
        case MP_QSTR_training:
            dest[0] = mp_obj_new_bool(self->training);
            return;
        case MP_QSTR_input_shape:
            dest[0] = self->planned ? mt_shape_to_tuple(&self->in_shape) : mp_const_none;
            return;
        case MP_QSTR_output_shape:
            dest[0] = self->planned ? mt_shape_to_tuple(&self->out_shape) : mp_const_none;
            return;
        case MP_QSTR_dtype:
            // Its own, else (parameterless layers, containers) the output's once planned.
            if (self->dtype != MT_DTYPE_ANY) {
                dest[0] = MP_OBJ_NEW_QSTR(mt_layer_dtype_qstr(self));
            } else {
                dest[0] = self->planned ? MP_OBJ_NEW_QSTR(mt_dtype_qstr(self->out_dtype)) : mp_const_none;
            }
            return;
        case MP_QSTR_selected:
            // The structures a partial update changed in the last pass (None: all of them).
            if (self->update.kind != MT_UPDATE_CHANNELS && self->update.kind != MT_UPDATE_TOPK) {
                dest[0] = mp_const_none;
            } else {
                mp_obj_t list = mp_obj_new_list(0, NULL);
                for (int i = 0; i < self->update.selected; i++) {
                    mp_obj_list_append(list, MP_OBJ_NEW_SMALL_INT(self->update.selection[i]));
                }
                dest[0] = list;
            }
            return;
    }
    for (size_t i = 0; i < MP_ARRAY_SIZE(param_names); i++) {
        if (attr == param_names[i] && (i < 2 || layer_param(self, i) != NULL)) {
            mt_tensor_obj_t *p = layer_param(self, i);
            dest[0] = p ? MP_OBJ_FROM_PTR(p) : mp_const_none;
            return;
        }
    }
    mt_layer_obj_t *const *children;
    size_t n = mt_layer_children(self, &children);
    for (size_t i = 0; i < n; i++) {
        if (child_name(self, i) == attr) {
            dest[0] = children[i] ? MP_OBJ_FROM_PTR(children[i]) : mp_const_none;
            return;
        }
    }
    if (attr == MP_QSTR_shortcut && self->base.type->name == MP_QSTR_Residual) {
        dest[0] = mp_const_none;  // an identity shortcut
        return;
    }
    dest[1] = MP_OBJ_SENTINEL;  // continue lookup in locals_dict
}

static qstr child_name(const mt_layer_obj_t *layer, size_t i) {
    // Residual's two children have names; Sequential's are numbered.
    const mt_layer_ops_t *ops = mt_layer_ops(layer);
    if ((ops->flags & MT_LAYER_COMPOSITE) && layer->base.type->name == MP_QSTR_Residual) {
        return i == 0 ? MP_QSTR_body : MP_QSTR_shortcut;
    }
    return MP_QSTRnull;
}

static const mp_rom_map_elem_t layer_locals_dict_table[] = {
    { MP_ROM_QSTR(MP_QSTR_forward), MP_ROM_PTR(&layer_forward_obj) },
    { MP_ROM_QSTR(MP_QSTR_backward), MP_ROM_PTR(&layer_backward_obj) },
    { MP_ROM_QSTR(MP_QSTR_train_step), MP_ROM_PTR(&layer_train_step_obj) },
    { MP_ROM_QSTR(MP_QSTR_predict), MP_ROM_PTR(&layer_predict_obj) },
    { MP_ROM_QSTR(MP_QSTR_evaluate), MP_ROM_PTR(&layer_evaluate_obj) },
    { MP_ROM_QSTR(MP_QSTR_parameters), MP_ROM_PTR(&layer_parameters_obj) },
    { MP_ROM_QSTR(MP_QSTR_state_dict), MP_ROM_PTR(&layer_state_dict_obj) },
    { MP_ROM_QSTR(MP_QSTR_load_state_dict), MP_ROM_PTR(&layer_load_state_dict_obj) },
    { MP_ROM_QSTR(MP_QSTR_copy_from), MP_ROM_PTR(&layer_copy_from_obj) },
    { MP_ROM_QSTR(MP_QSTR_memory), MP_ROM_PTR(&layer_memory_obj) },
    { MP_ROM_QSTR(MP_QSTR_release), MP_ROM_PTR(&layer_release_obj) },
    { MP_ROM_QSTR(MP_QSTR_macs), MP_ROM_PTR(&layer_macs_obj) },
    { MP_ROM_QSTR(MP_QSTR_config), MP_ROM_PTR(&layer_config_obj) },
    { MP_ROM_QSTR(MP_QSTR_update_stats), MP_ROM_PTR(&mt_update_stats_obj) },
    { MP_ROM_QSTR(MP_QSTR_train), MP_ROM_PTR(&mt_layer_train_obj) },
    { MP_ROM_QSTR(MP_QSTR_eval), MP_ROM_PTR(&mt_layer_eval_obj) },
    { MP_ROM_QSTR(MP_QSTR_zero_grad), MP_ROM_PTR(&mt_layer_zero_grad_obj) },
    { MP_ROM_QSTR(MP_QSTR_named_parameters), MP_ROM_PTR(&mt_layer_named_parameters_obj) },
};
MP_DEFINE_CONST_DICT(mt_layer_locals_dict, layer_locals_dict_table);
