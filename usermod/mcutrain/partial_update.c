// Update policies (mt.Full, mt.Frozen, mt.BiasOnly, mt.LastLayers, mt.ChannelRatio,
// mt.TopK) and the selection of structures for a partial update.
#include <math.h>
#include <string.h>

#include "py/runtime.h"
#include "partial_update.h"
#include "grad_sink.h"
#include "kernels/select_f32.h"
#include "kernels/select_s8.h"
#include "kernels/select_f16.h"
#include "kernels/half.h"

// Policies as users write them; FROZEN and LAST_LAYERS become trainable flags.
enum { POLICY_FULL, POLICY_FROZEN, POLICY_BIAS_ONLY, POLICY_LAST_LAYERS, POLICY_CHANNELS, POLICY_TOPK };

typedef struct {
    mp_obj_base_t base;
    uint8_t kind;
    float a, b;    // CHANNELS: ratio; TOPK: lambda_min, lambda_max
    int k;         // LAST_LAYERS
} mt_policy_obj_t;

static const qstr policy_names[] = {
    MP_QSTR_Full, MP_QSTR_Frozen, MP_QSTR_BiasOnly, MP_QSTR_LastLayers, MP_QSTR_ChannelRatio, MP_QSTR_TopK,
};

static void policy_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_policy_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "%q(", policy_names[self->kind]);
    if (self->kind == POLICY_CHANNELS) {
        mp_printf(print, "%f", (double)self->a);
    } else if (self->kind == POLICY_TOPK) {
        mp_printf(print, "%f, %f", (double)self->a, (double)self->b);
    } else if (self->kind == POLICY_LAST_LAYERS) {
        mp_printf(print, "%d", self->k);
    }
    mp_print_str(print, ")");
}

static MP_DEFINE_CONST_OBJ_TYPE(
    mt_policy_type,
    MP_QSTR_UpdatePolicy,
    MP_TYPE_FLAG_NONE,
    print, policy_print
    );

static mt_policy_obj_t *new_policy(uint8_t kind) {
    mt_policy_obj_t *p = mp_obj_malloc(mt_policy_obj_t, &mt_policy_type);
    p->kind = kind;
    p->a = p->b = 1.0f;
    p->k = 0;
    return p;
}

static float check_ratio(mp_obj_t obj, const char *what) {
    float r = (float)mp_obj_get_float(obj);
    if (!(r > 0.0f && r <= 1.0f)) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s must be in (0, 1], not %f"), what, (double)r);
    }
    return r;
}

static mp_obj_t policy_full(void) {
    return MP_OBJ_FROM_PTR(new_policy(POLICY_FULL));
}
MP_DEFINE_CONST_FUN_OBJ_0(mt_policy_full_obj, policy_full);

static mp_obj_t policy_frozen(void) {
    return MP_OBJ_FROM_PTR(new_policy(POLICY_FROZEN));
}
MP_DEFINE_CONST_FUN_OBJ_0(mt_policy_frozen_obj, policy_frozen);

static mp_obj_t policy_bias_only(void) {
    return MP_OBJ_FROM_PTR(new_policy(POLICY_BIAS_ONLY));
}
MP_DEFINE_CONST_FUN_OBJ_0(mt_policy_bias_only_obj, policy_bias_only);

// LastLayers(k): only the last k layers with parameters train.
static mp_obj_t policy_last_layers(mp_obj_t k_in) {
    mp_int_t k = mp_obj_get_int(k_in);
    if (k < 1) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("LastLayers: k must be >= 1, not %d"), (int)k);
    }
    mt_policy_obj_t *p = new_policy(POLICY_LAST_LAYERS);
    p->k = (int)k;
    return MP_OBJ_FROM_PTR(p);
}
MP_DEFINE_CONST_FUN_OBJ_1(mt_policy_last_layers_obj, policy_last_layers);

// ChannelRatio(r): the first floor(r * N) output channels of each layer train.
static mp_obj_t policy_channel_ratio(mp_obj_t r) {
    mt_policy_obj_t *p = new_policy(POLICY_CHANNELS);
    p->a = check_ratio(r, "ChannelRatio: ratio");
    return MP_OBJ_FROM_PTR(p);
}
MP_DEFINE_CONST_FUN_OBJ_1(mt_policy_channel_ratio_obj, policy_channel_ratio);

// TopK(min_ratio, max_ratio=None): dynamic top-k structures per layer and sample; None (or
// no max_ratio) is a fixed min_ratio.
static mp_obj_t policy_topk(size_t n_args, const mp_obj_t *args) {
    mt_policy_obj_t *p = new_policy(POLICY_TOPK);
    p->a = check_ratio(args[0], "TopK: min_ratio");
    p->b = n_args > 1 && args[1] != mp_const_none ? check_ratio(args[1], "TopK: max_ratio") : p->a;
    if (p->b < p->a) {
        mp_raise_ValueError(MP_ERROR_TEXT("TopK: max_ratio must be >= min_ratio"));
    }
    return MP_OBJ_FROM_PTR(p);
}
MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mt_policy_topk_obj, 1, 2, policy_topk);

/******************************************************************************/
// Applying policies to a model

int mt_update_structures(const mt_layer_obj_t *layer) {
    return layer->weight ? layer->weight->shape.dim[0] : 0;
}

static bool has_params(const mt_layer_obj_t *layer) {
    return layer->weight != NULL || layer->bias != NULL;
}

static int floor_ratio(float ratio, int n) {
    // The guard makes ratios that are exact in decimal (0.6 of 10) give the exact answer
    // (6) whatever the fp32 rounding of the ratio, on every core.
    int k = (int)floorf(ratio * (float)n + 1e-3f);
    // At least one structure, so that a small layer still learns something.
    return k < 1 ? 1 : k > n ? n : k;
}

// The most structures of n that one pass under policy u can select.
static int max_selected_of(const mt_update_t *u, int n) {
    if (u->kind == MT_UPDATE_CHANNELS) {
        return floor_ratio(u->ratio_min, n);
    }
    if (u->kind == MT_UPDATE_TOPK) {
        return floor_ratio(u->ratio_max, n);
    }
    return n;
}

int mt_update_max_selected(const mt_layer_obj_t *layer) {
    return max_selected_of(&layer->update, mt_update_structures(layer));
}

size_t mt_update_state_elems(const mt_layer_obj_t *layer, const mt_update_t *policy,
    const mt_tensor_obj_t *param) {
    if (!layer->trainable) {
        return 0;
    }
    switch (policy->kind) {
        case MT_UPDATE_BIAS_ONLY:
            return param == layer->bias ? param->size : 0;
        case MT_UPDATE_CHANNELS: {
            // The same leading rows every step: state for those rows only.
            int n = mt_update_structures(layer);
            return param->size / (size_t)n * (size_t)max_selected_of(policy, n);
        }
        default:
            return param->size;
    }
}

mt_update_geometry_t mt_update_geometry(const mt_layer_obj_t *layer, bool depthwise) {
    mt_update_geometry_t g;
    g.n = mt_update_structures(layer);
    g.in_c = layer->in_shape.dim[layer->in_shape.ndim - 1];
    g.rows_out = (int)(mt_shape_size(&layer->out_shape) / (size_t)g.n);
    g.rows_in = (int)(mt_shape_size(&layer->in_shape) / (size_t)g.in_c);
    g.row_len = (int)(layer->weight->size / (size_t)g.n);
    g.depthwise = depthwise;
    return g;
}

size_t mt_update_scratch_upto(const mt_layer_obj_t *layer, size_t (*scratch)(const mt_layer_obj_t *layer, int k),
    int kmax) {
    size_t most = 0;
    for (int k = 1; k <= kmax; k++) {
        size_t s = scratch(layer, k);
        most = s > most ? s : most;
    }
    return most;
}

bool mt_update_activate(mt_layer_obj_t *leaf, const mt_update_t *policy) {
    mt_update_t *u = &leaf->update;
    if (u->kind == policy->kind && (policy->kind == MT_UPDATE_FULL || policy->kind == MT_UPDATE_BIAS_ONLY
        || (u->ratio_min == policy->ratio_min && u->ratio_max == policy->ratio_max))) {
        return false;
    }
    if ((policy->kind == MT_UPDATE_CHANNELS || policy->kind == MT_UPDATE_TOPK) && u->selection == NULL) {
        u->selection = m_new(int32_t, mt_update_structures(leaf));
    }
    u->kind = policy->kind;
    u->ratio_min = policy->ratio_min;
    u->ratio_max = policy->ratio_max;
    u->selected = 0;
    return true;
}

typedef struct {
    mp_map_t *named;          // name -> policy, or NULL
    mt_policy_obj_t *policy;  // for every layer, or NULL
    int with_params;          // layers with parameters seen so far
    int last_k;               // LastLayers: layers with parameters in the model (first walk)
    size_t matched;
    bool dry_run;             // only check names and policies
} apply_ctx_t;

static void count_param_layers(mt_layer_obj_t *leaf, const char *name, void *ctx_in) {
    (void)name;
    apply_ctx_t *ctx = ctx_in;
    ctx->last_k += has_params(leaf);
}

static void set_policy(mt_layer_obj_t *leaf, const mt_policy_obj_t *p, int index_from_end) {
    leaf->update.kind = MT_UPDATE_FULL;
    leaf->update.selected = 0;
    switch (p->kind) {
        case POLICY_FROZEN:
            leaf->trainable = false;
            return;
        case POLICY_LAST_LAYERS:
            leaf->trainable = index_from_end < p->k;
            return;
        case POLICY_BIAS_ONLY:
            leaf->trainable = true;
            leaf->update.kind = MT_UPDATE_BIAS_ONLY;
            return;
        case POLICY_CHANNELS:
        case POLICY_TOPK:
            leaf->trainable = true;
            if (mt_update_structures(leaf) == 0) {
                return;  // BatchNorm and friends: per-channel scales, updated in full
            }
            leaf->update.kind = p->kind == POLICY_CHANNELS ? MT_UPDATE_CHANNELS : MT_UPDATE_TOPK;
            leaf->update.ratio_min = p->a;
            leaf->update.ratio_max = p->b;
            if (leaf->update.selection == NULL) {
                leaf->update.selection = m_new(int32_t, mt_update_structures(leaf));
            }
            return;
        default:
            leaf->trainable = true;
    }
}

static void apply_to_leaf(mt_layer_obj_t *leaf, const char *name, void *ctx_in) {
    apply_ctx_t *ctx = ctx_in;
    if (!has_params(leaf)) {
        return;
    }
    int index_from_end = ctx->last_k - 1 - ctx->with_params++;
    const mt_policy_obj_t *p = ctx->policy;
    if (ctx->named != NULL) {
        mp_map_elem_t *e = mp_map_lookup(ctx->named, mp_obj_new_str(name, strlen(name)), MP_MAP_LOOKUP);
        if (e == NULL) {
            return;  // layers the dict does not name keep their policy
        }
        ctx->matched++;
        if (!mp_obj_is_type(e->value, &mt_policy_type)) {
            mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("update[%s] must be a policy such as mt.TopK(0.1)"), name);
        }
        p = MP_OBJ_TO_PTR(e->value);
        if (p->kind == POLICY_LAST_LAYERS) {
            mp_raise_ValueError(MP_ERROR_TEXT("LastLayers applies to a whole model, not to one layer"));
        }
    }
    if ((p->kind == POLICY_CHANNELS || p->kind == POLICY_TOPK) && leaf->base.type->name != MP_QSTR_Linear
        && leaf->weight != NULL && leaf->weight->shape.ndim > 2) {
        // Grouped convolutions other than depthwise mix channels in ways the compact path
        // does not model; say so instead of doing full work silently.
        mp_obj_t groups = mp_obj_dict_get(mt_layer_ops(leaf)->config(leaf), MP_OBJ_NEW_QSTR(MP_QSTR_groups));
        mp_int_t g = mp_obj_get_int(groups);
        int in_c = leaf->weight->shape.dim[leaf->weight->shape.ndim - 1] * (int)g;
        if (g != 1 && !(g == in_c && g == mt_update_structures(leaf))) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("%q at %s: partial updates support groups=1 and depthwise convolutions"),
                policy_names[p->kind], name);
        }
    }
    if (!ctx->dry_run) {
        set_policy(leaf, p, index_from_end);
    }
}

static void reset_leaf(mt_layer_obj_t *leaf, const char *name, void *ctx) {
    (void)name;
    (void)ctx;
    leaf->update.kind = MT_UPDATE_FULL;
}

void mt_update_apply(mp_obj_t model_in, mp_obj_t update) {
    mt_layer_obj_t *model = mt_layer_get(model_in, "model");
    apply_ctx_t ctx = { 0 };
    if (mp_obj_is_type(update, &mt_policy_type)) {
        ctx.policy = MP_OBJ_TO_PTR(update);
    } else if (mp_obj_is_type(update, &mp_type_dict)) {
        ctx.named = mp_obj_dict_get_map(update);
        for (size_t i = 0; i < ctx.named->alloc; i++) {
            if (mp_map_slot_is_filled(ctx.named, i) && !mp_obj_is_str(ctx.named->table[i].key)) {
                mp_raise_TypeError(MP_ERROR_TEXT("update: layer names are strings such as '0' or '3.body.0'"));
            }
        }
    } else {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("update must be a policy (mt.TopK(0.1), ...) or a dict of them, not %s"),
            mp_obj_get_type_str(update));
    }
    mt_layer_visit(model, count_param_layers, &ctx);
    if (ctx.policy && ctx.policy->kind == POLICY_LAST_LAYERS && ctx.policy->k > ctx.last_k) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("LastLayers(%d): the model has only %d layers with parameters"), ctx.policy->k, ctx.last_k);
    }
    // Check every name and policy before changing anything.
    apply_ctx_t check = ctx;
    check.dry_run = true;
    mt_layer_visit(model, apply_to_leaf, &check);
    if (ctx.named && check.matched != ctx.named->used) {
        mp_raise_ValueError(MP_ERROR_TEXT("update: a name matches no layer with parameters (see model.state_dict())"));
    }
    mt_layer_visit(model, reset_leaf, NULL);
    mt_layer_visit(model, apply_to_leaf, &ctx);
    // The compact path needs more scratch: plan again on the next call.
    model->planned = false;
}

/******************************************************************************/
// Selection and row updates

// This pass's k: CHANNELS its fixed count; TOPK (Deutel et al. 2024)
// k = floor(min(lmin + eps (lmax - lmin), 1) N).
static int count_for_pass(const mt_update_t *u, int n, const mt_pass_t *pass) {
    if (u->kind == MT_UPDATE_CHANNELS) {
        return max_selected_of(u, n);
    }
    float eps = pass->loss_ratio;
    eps = eps > 1.0f ? 1.0f : eps < 0.0f ? 0.0f : eps;
    float ratio = u->ratio_min + eps * (u->ratio_max - u->ratio_min);
    return floor_ratio(ratio > 1.0f ? 1.0f : ratio, n);
}

// CHANNELS: the leading k structures (the magnitudes are not needed).
static const int32_t *select_leading(mt_update_t *u, int k) {
    for (int i = 0; i < k; i++) {
        u->selection[i] = i;
    }
    u->selected = k;
    return u->selection;
}

const int32_t *mt_update_select(mt_layer_obj_t *layer, const float *dy, int rows, const mt_pass_t *pass,
    float *mag, uint8_t *taken, int *k) {
    mt_update_t *u = &layer->update;
    int n = mt_update_structures(layer);
    *k = count_for_pass(u, n, pass);
    if (u->kind == MT_UPDATE_CHANNELS) {
        return select_leading(u, *k);
    }
    mt_channel_l1_f32(dy, rows, n, mag);
    mt_topk_indices(mag, n, *k, u->selection, taken);
    u->selected = *k;
    return u->selection;
}

const int32_t *mt_update_select_f16(mt_layer_obj_t *layer, const uint16_t *dy, int rows, const mt_pass_t *pass,
    float *mag, uint8_t *taken, int *k) {
    mt_update_t *u = &layer->update;
    int n = mt_update_structures(layer);
    *k = count_for_pass(u, n, pass);
    if (u->kind == MT_UPDATE_CHANNELS) {
        return select_leading(u, *k);
    }
    mt_channel_l1_f16(dy, rows, n, mag);
    mt_topk_indices(mag, n, *k, u->selection, taken);
    u->selected = *k;
    return u->selection;
}

const int32_t *mt_update_select_s8(mt_layer_obj_t *layer, const int8_t *dy, int32_t zero_point, int rows,
    const mt_pass_t *pass, int32_t *mag, uint8_t *taken, int *k) {
    mt_update_t *u = &layer->update;
    int n = mt_update_structures(layer);
    *k = count_for_pass(u, n, pass);
    if (u->kind == MT_UPDATE_CHANNELS) {
        return select_leading(u, *k);
    }
    mt_channel_l1_s8(dy, rows, n, zero_point, mag);
    mt_topk_indices_s32(mag, n, *k, u->selection, taken);
    u->selected = *k;
    return u->selection;
}

void mt_update_selected_rows(const mt_pass_t *pass, mt_layer_obj_t *layer, const int32_t *rows, int k,
    int row_len, const float *dw, const float *db) {
    mt_optim_apply_rows(pass->optim, layer->weight, rows, k, row_len, dw);
    if (layer->bias) {
        mt_optim_apply_rows(pass->optim, layer->bias, rows, k, 1, db);
    }
}

bool mt_update_bias_only(const mt_pass_t *pass, mt_layer_obj_t *layer, const float *dy, int rows) {
    if (pass->optim == NULL || layer->update.kind != MT_UPDATE_BIAS_ONLY) {
        return false;
    }
    if (layer->bias) {
        mt_grad_dest_t db = mt_grad_begin(pass, layer->bias);
        mt_channel_sum_f32(dy, rows, mt_update_structures(layer), db.alpha, db.data);
        mt_grad_end(pass, layer->bias);
    }
    return true;
}

bool mt_update_bias_only_f16(const mt_pass_t *pass, mt_layer_obj_t *layer, const uint16_t *dy, int rows,
    float *sums) {
    if (pass->optim == NULL || layer->update.kind != MT_UPDATE_BIAS_ONLY) {
        return false;
    }
    if (layer->bias) {
        int n = mt_update_structures(layer);
        for (int c = 0; c < n; c++) {
            sums[c] = 0.0f;
        }
        for (int r = 0; r < rows; r++, dy += n) {
            for (int c = 0; c < n; c++) {
                sums[c] += mt_f16_to_f32(dy[c]);
            }
        }
        mt_grad_dest_t db = mt_grad_begin(pass, layer->bias);
        if (db.dtype == MT_FLOAT16) {
            mt_f16_add_scaled(db.data, sums, db.alpha, (size_t)n, db.rng);
        } else {
            float *d = db.data;
            for (int c = 0; c < n; c++) {
                d[c] += db.alpha * sums[c];
            }
        }
        mt_grad_end(pass, layer->bias);
    }
    return true;
}

/******************************************************************************/
// update_stats()

typedef struct {
    uint64_t done, full;
    mp_obj_t per_layer;
} stats_ctx_t;

static void stats_leaf(mt_layer_obj_t *leaf, const char *name, void *ctx_in) {
    stats_ctx_t *ctx = ctx_in;
    if (!has_params(leaf) || !leaf->planned) {
        return;
    }
    const mt_layer_ops_t *ops = mt_layer_ops(leaf);
    uint64_t fwd = ops->macs ? ops->macs(leaf, MT_MACS_FORWARD, true) : 0;
    int n = mt_update_structures(leaf);
    int selected = !leaf->trainable ? 0 : leaf->update.kind == MT_UPDATE_FULL || n == 0 ? n : leaf->update.selected;
    ctx->full += 2 * fwd;
    if (leaf->update.kind == MT_UPDATE_CHANNELS || leaf->update.kind == MT_UPDATE_TOPK) {
        ctx->done += n ? 2 * fwd * (uint64_t)selected / (uint64_t)n : 0;
    } else {
        ctx->done += fwd + (leaf->trainable && leaf->update.kind == MT_UPDATE_FULL ? fwd : 0);
    }
    mp_obj_t pair[2] = { MP_OBJ_NEW_SMALL_INT(selected), MP_OBJ_NEW_SMALL_INT(n) };
    mp_obj_dict_store(ctx->per_layer, mp_obj_new_str(name, strlen(name)), mp_obj_new_tuple(2, pair));
}

// update_stats() -> {"backward_macs": done, "full_backward_macs": full, "updated": {name: (k, N)}}
// for the last backward pass. Backward MACs count input and weight gradients of layers with
// parameters (first-layer input gradients included, an upper bound for a full update).
static mp_obj_t update_stats(mp_obj_t model_in) {
    mt_layer_obj_t *model = mt_layer_get(model_in, "model");
    stats_ctx_t ctx = { 0, 0, mt_new_ordered_dict(0) };
    mt_layer_visit(model, stats_leaf, &ctx);
    mp_obj_t dict = mt_new_ordered_dict(3);
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_backward_macs), mp_obj_new_int_from_ull(ctx.done));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_full_backward_macs), mp_obj_new_int_from_ull(ctx.full));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_updated), ctx.per_layer);
    return dict;
}
MP_DEFINE_CONST_FUN_OBJ_1(mt_update_stats_obj, update_stats);
