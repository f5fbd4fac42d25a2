// The layer protocol shared by every layer type, Sequential and Residual included.
//
// A layer is planned once for an input shape: it sets its output shape and takes its
// output buffer and any per-shape state from the model's arena (plan_arena.h). After that, forward and backward only run
// kernels on planned memory, so a training step allocates nothing. Any layer can be
// the top of a model: the methods in layer.c (forward, backward, train_step, memory,
// ...) work on a single Linear as well as on a nested Sequential.
#ifndef MCUTRAIN_LAYER_H
#define MCUTRAIN_LAYER_H

#include "py/obj.h"
#include "tensor.h"
#include "plan_arena.h"
#include "kernels/half.h"

typedef struct _mt_layer_obj_t mt_layer_obj_t;
typedef struct _mt_optim_obj_t mt_optim_obj_t;

// Which of a layer's parameters an optimizer updates (partial_update.h).
typedef enum {
    MT_UPDATE_FULL,
    MT_UPDATE_BIAS_ONLY,
    MT_UPDATE_CHANNELS,      // the first floor(ratio * N) output structures, always the same
    MT_UPDATE_TOPK,          // per sample, the k structures with the largest error
} mt_update_kind_t;

typedef struct {
    uint8_t kind;            // mt_update_kind_t
    float ratio_min;         // CHANNELS: the ratio; TOPK: lambda_min
    float ratio_max;         // TOPK: lambda_max
    int32_t *selection;      // the structures updated in the last pass (N entries)
    int32_t selected;        // how many (N for a full update, 0 if none)
} mt_update_t;

// What a forward or backward pass may use.
typedef struct {
    bool training;           // BatchNorm: batch statistics (and update running ones)
    float *scratch;          // shared scratch of mt_layer_scratch_floats() floats
    size_t scratch_floats;
    mt_optim_obj_t *optim;   // NULL: backward writes each parameter's .grad
    float loss_ratio;        // this sample's loss over the largest seen (dynamic top-k)
} mt_pass_t;

typedef enum {
    MT_MACS_FORWARD,
    MT_MACS_GRAD_INPUT,
    MT_MACS_GRAD_WEIGHT,
} mt_macs_kind_t;

// Layer properties the planner uses to share memory safely.
enum {
    MT_LAYER_VIEW = 1,             // output always is the input reinterpreted (Flatten)
    MT_LAYER_MAY_RUN_IN_PLACE = 2, // output may overwrite the input (ReLU)
    MT_LAYER_NEEDS_OUTPUT = 4,     // backward reads the layer's own output
    MT_LAYER_COMPOSITE = 8,        // has children (Sequential, Residual)
    MT_LAYER_CONVERTS = 16,        // output dtype differs from the input's (Convert)
};

// A layer's dtype: one of the tensor dtypes, or ANY for parameterless layers that take
// their input's. Activations and errors of a layer are stored in its dtype.
#define MT_DTYPE_ANY (0xff)
// Bit masks of dtypes, for mt_layer_ops_t.dtypes.
#define MT_DTYPE_BIT(d) (1u << (d))
#define MT_DTYPES_FLOAT (MT_DTYPE_BIT(MT_FLOAT32) | MT_DTYPE_BIT(MT_FLOAT16))

// Where a backward pass adds a parameter's gradient (times alpha): the parameter itself
// (fused plain SGD), a velocity or an optimizer's gradient buffer, or .grad.
typedef struct {
    void *data;
    float alpha;
    uint8_t dtype;           // MT_FLOAT32, or MT_FLOAT16 for fp16 weights and velocities
    mt_f16_rng_t *rng;       // fp16 destinations: stochastic rounding state, or NULL
} mt_grad_dest_t;

#define MT_LAYER_MAGIC (0x4c61)

// Activations a Sequential folds into the Conv or Linear layer before them (layer_activation.c).
enum {
    MT_ACT_NONE,
    MT_ACT_RELU,
    MT_ACT_RELU6,
};

typedef struct _mt_layer_ops_t {
    uint16_t magic;          // MT_LAYER_MAGIC: tells layer types from other types
    uint16_t flags;
    // Dimensions the input has, batch included; 0 accepts any. An input with one
    // dimension less is taken as a batch of one.
    uint8_t input_ndim;
    // The input dtypes the layer can run on (MT_DTYPE_BIT mask).
    uint8_t dtypes;
    // Checks the input shape and sets self->out_shape; per-shape state comes from
    // mt_plan_alloc/mt_plan_tensor only (it runs twice: measuring, then placing), never
    // from the heap directly. Raises ValueError naming the layer and the shapes.
    void (*plan)(mt_layer_obj_t *self, const mt_shape_t *in);
    size_t (*scratch_floats)(const mt_layer_obj_t *self);
    // Reads x (self->in_shape, self->in_dtype), writes self->output.
    void (*forward)(mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_pass_t *pass);
    // dy and dx are in the layer's output and input dtypes; only their data (and, for
    // quantized errors, scale) matter, not their shapes. dx == NULL: no input gradient is
    // needed. Parameter gradients go through mt_grad_begin/mt_grad_end unless the layer
    // is frozen.
    void (*backward)(mt_layer_obj_t *self, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
        mt_tensor_obj_t *dx, const mt_pass_t *pass);
    // MACs of one kind of pass for the planned shape; composites pass need_dx on
    // (whether their input gradient is wanted) to decide where backward stops.
    uint64_t (*macs)(const mt_layer_obj_t *self, mt_macs_kind_t kind, bool need_dx);
    // Constructor arguments as a dict (for saving models and for repr).
    mp_obj_t (*config)(const mt_layer_obj_t *self);
    // Composites: the children, in order; NULL for simple layers.
    size_t (*children)(const mt_layer_obj_t *self, mt_layer_obj_t *const **children);
    // Composites: bytes of gradient buffers they own (for memory()).
    size_t (*grad_bytes)(const mt_layer_obj_t *self);
    // Drops the buffers the type's plan() allocated beyond the common fields (NULL: none).
    void (*release)(mt_layer_obj_t *self);
} mt_layer_ops_t;

struct _mt_layer_obj_t {
    mp_obj_base_t base;
    mt_shape_t in_shape;
    mt_shape_t out_shape;
    uint8_t dtype;                 // as constructed (MT_DTYPE_ANY: the input's)
    uint8_t in_dtype;              // planned input and output dtypes
    uint8_t out_dtype;
    bool planned;
    bool planned_as_top;           // planned by its own call (owns scratch), not by a parent's
    bool trainable;
    bool training;                 // train()/eval(): the mode calls run in by default
    bool in_place;                 // output shares the input's memory (set when planned)
    bool out_pooled;               // output in buffers its Sequential shares out (inference plans)
    bool owned;                    // adopted by a container, for good (mt_layer_adopt)
    // Set when planned by a Sequential (layer_activation.c): an activation folded into this
    // layer's forward (MT_ACT_*); whether its backward masks dy with it first (the
    // activation layer then passes dy on); on an activation layer, that it is folded.
    uint8_t act;
    bool act_masks_dy;
    bool act_folded;
    mt_tensor_obj_t *weight;       // NULL when absent
    mt_tensor_obj_t *bias;
    mt_tensor_obj_t *output;
    size_t state_bytes;            // per-shape state besides the output (memory())
    // Used when this layer is the top of a model.
    mp_obj_t last_input;
    mt_tensor_obj_t *input_grad;
    size_t input_grad_bytes;       // its block's size (gc_nbytes walks the block: too slow per call)
    mt_tensor_obj_t *output_grad;
    float *scratch;
    size_t scratch_floats;
    int32_t *labels;
    mt_tensor_obj_t *loss_buf;     // fp32 chunk of a float16/int8 output for the loss, or NULL
    mt_plan_arena_t arena;         // the block all of the above but input_grad live in (plan_arena.h)
    bool plans_loss;               // the plan includes the loss buffers (a train_step or evaluate ran)
    bool plans_inference;          // the plan is for inference (predict, evaluate): no gradients
    mt_tensor_obj_t *extra_params[2];  // BatchNorm running statistics
    mt_tensor_obj_t *weight_scale;     // int8 layers: fp32 scale of each weight row (out_c)
    // int8 layers: the tracked real range their int8 output is quantized from (Convert to
    // int8: its input's); layer.quant_range reads and sets it (calibration). NULL otherwise.
    struct _mt_range_tracker_t *quant_range;
    mt_update_t update;                // set by the optimizer's update= policy
    // The last optimizer built for this layer as a model (memory() reports its state), or
    // MP_OBJ_NULL. The state itself belongs to the optimizer (optim.h).
    mp_obj_t optim;
};

const mt_layer_ops_t *mt_layer_ops(const mt_layer_obj_t *layer);
// A mixed layer (int8 forward, fp32 backward; layer_mixed.h) takes and gives float32 but
// keeps int8 weights with per-channel scales.
static inline bool mt_layer_is_mixed(const mt_layer_obj_t *layer) {
    return layer->dtype == MT_FLOAT32 && layer->weight_scale != NULL;
}
// The dtype a layer was built with, as dtype= takes it: "mixed" for mixed layers.
qstr mt_layer_dtype_qstr(const mt_layer_obj_t *layer);
// The layer behind obj, or TypeError naming `what`.
mt_layer_obj_t *mt_layer_get(mp_obj_t obj, const char *what);
// The layer's class name, for messages.
qstr mt_layer_name(const mt_layer_obj_t *layer);

// Initializes the common fields (after mp_obj_malloc of the full layer struct).
void mt_layer_init(mt_layer_obj_t *layer);
// Parameters initialized like PyTorch's default: uniform in +-1/sqrt(fan_in), drawn in
// fp32 and rounded to `dtype` (the same seed gives the same values in every dtype).
mt_tensor_obj_t *mt_layer_new_param(const mt_shape_t *shape, int fan_in, mt_dtype_t dtype, const char *what);
// The dtype= argument of a constructor (None: MT_DTYPE_ANY if allow_any, else float32);
// `allowed` is a mask of MT_DTYPE_BIT()s.
uint8_t mt_layer_dtype_arg(mp_obj_t obj, unsigned allowed, bool allow_any, const char *what);

// dtype= of a layer with weights: as mt_layer_dtype_arg, plus "mixed" (sets *mixed and
// gives float32, the dtype of its activations and errors).
uint8_t mt_layer_weights_dtype_arg(mp_obj_t obj, unsigned allowed, const char *what, bool *mixed);

// Constructors of parameterless layers: no arguments but an optional dtype= (None: the
// input's; a dtype: the input must have it, as a model file records it).
uint8_t mt_layer_parse_any_dtype(size_t n_args, size_t n_kw, const mp_obj_t *args, const char *what);
// Prints "Name()" or "Name(dtype=float16)".
void mt_layer_print_simple(const mp_print_t *print, const mt_layer_obj_t *layer);

// A container's constructor takes its children: each must be a layer that no container
// owns yet (ValueError naming it otherwise; `what` is e.g. "Sequential"). Every child is
// checked before any is taken, and a child planned on its own loses that plan first.
void mt_layer_adopt(mt_layer_obj_t *const *children, size_t n, const char *what);

// Plans a child for `in` of dtype in_dtype; may_share lets it run in place on its input.
// pooled (inference plans): an output of its own gets no memory here, the container points
// it into a buffer it shares out (the layer's out_pooled says whether it did).
void mt_layer_plan(mt_layer_obj_t *layer, const mt_shape_t *in, uint8_t in_dtype, bool may_share, bool pooled);
// Forgets a layer tree's plan and drops every buffer planning allocated (outputs, gradient
// buffers, scratch, loss buffers) for the GC to take back; the next call plans again.
void mt_layer_release(mt_layer_obj_t *layer);
// Runs a planned child's forward (pointing view outputs at x first).
void mt_layer_forward(mt_layer_obj_t *layer, const mt_tensor_obj_t *x, const mt_pass_t *pass);
// A tensor header (not a Python object) over a planned buffer, for gradients passed
// between layers.
void mt_tensor_header_init(mt_tensor_obj_t *t, void *data, uint8_t dtype);
size_t mt_layer_scratch_floats(const mt_layer_obj_t *layer);
bool mt_layer_has_trainable(const mt_layer_obj_t *layer);
uint8_t mt_layer_input_ndim(const mt_layer_obj_t *layer);
// Whether the memory of this layer's output must survive until its backward.
bool mt_layer_output_needed(const mt_layer_obj_t *layer);
uint64_t mt_layer_macs(const mt_layer_obj_t *layer, mt_macs_kind_t kind, bool need_dx);

// Where a backward pass accumulates the gradient of `param`, and the matching end call;
// with an optimizer this is the fused update.
mt_grad_dest_t mt_grad_begin(const mt_pass_t *pass, mt_tensor_obj_t *param);
void mt_grad_end(const mt_pass_t *pass, mt_tensor_obj_t *param);
// The same for a layer's weight and its bias (db->data is NULL without a bias). Both share
// the optimizer, so their alphas are the same.
void mt_grad_begin_params(const mt_pass_t *pass, mt_layer_obj_t *layer, mt_grad_dest_t *dw, mt_grad_dest_t *db);
void mt_grad_end_params(const mt_pass_t *pass, mt_layer_obj_t *layer);

// Calls fn(leaf, name, ctx) for every simple layer under `layer` (itself if simple),
// with its state_dict-style name ("3.body.0"; "" for the root).
typedef void (*mt_layer_visit_t)(mt_layer_obj_t *leaf, const char *name, void *ctx);
void mt_layer_visit(mt_layer_obj_t *layer, mt_layer_visit_t fn, void *ctx);

// Folding an activation layer into the layer before it (layer_activation.c; a Sequential
// decides when, both being planned, the activation in place). Forward: int8 layers clamp
// in their kernels' epilogue (mt_act_s8_bounds), float ones clamp their output in place
// (mt_act_forward). Backward: with masks_dy, the producer's backward starts by masking dy
// in place (mt_act_mask_dy; the container's own buffer) and the activation passes dy on;
// without, the activation layer computes its input gradient as usual.
bool mt_act_can_fold(const mt_layer_obj_t *producer, const mt_layer_obj_t *act);
void mt_act_fold(mt_layer_obj_t *producer, mt_layer_obj_t *act, bool masks_dy);
void mt_act_forward(mt_layer_obj_t *producer);
void mt_act_mask_dy(mt_layer_obj_t *producer, mt_tensor_obj_t *dy);
// The int8 output clamp [lo, hi] of a layer whose output has scale y_scale and zero point
// y_zp: its folded activation's, or the whole int8 range.
void mt_act_s8_bounds(const mt_layer_obj_t *layer, float y_scale, int32_t y_zp, int32_t *lo, int32_t *hi);

// Raises ValueError "<Layer>: <msg> (input <shape>)".
NORETURN void mt_layer_raise_shape(const mt_layer_obj_t *layer, const char *msg, const mt_shape_t *in);
// The same with a message formatted from fmt and one int ("expects %d channels").
NORETURN void mt_layer_raise_expects(const mt_layer_obj_t *layer, const char *fmt, int n, const mt_shape_t *in);

// The common methods, shared by every layer type's locals dict.
extern const mp_obj_dict_t mt_layer_locals_dict;
void mt_layer_attr(mp_obj_t self_in, qstr attr, mp_obj_t *dest);
// layer_module.c: nn.Module habits (model(x), train()/eval(), zero_grad(), named_parameters()).
mp_obj_t mt_layer_call(mp_obj_t self_in, size_t n_args, size_t n_kw, const mp_obj_t *args);
MP_DECLARE_CONST_FUN_OBJ_VAR_BETWEEN(mt_layer_train_obj);
MP_DECLARE_CONST_FUN_OBJ_1(mt_layer_eval_obj);
MP_DECLARE_CONST_FUN_OBJ_1(mt_layer_zero_grad_obj);
MP_DECLARE_CONST_FUN_OBJ_1(mt_layer_named_parameters_obj);
// forward(x, training=<the layer's mode>) as a function of (self, x) and keywords.
mp_obj_t mt_layer_forward_call(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args);
size_t mt_layer_children(const mt_layer_obj_t *layer, mt_layer_obj_t *const **children);
// Adds the tree's tensors to list (parameters) and/or dict (state_dict names), all of them or,
// if trainable_only, the weights and biases (not BatchNorm's running statistics).
void mt_layer_collect_params(const mt_layer_obj_t *layer, mp_obj_t list, mp_obj_t dict, bool trainable_only);

// A dict that keeps insertion order (state_dict, config, memory).
mp_obj_t mt_new_ordered_dict(size_t n);

// Helpers for constructors: an int or (h, w) pair.
void mt_parse_pair(mp_obj_t obj, int *h, int *w, const char *what, int min);

#endif
