// Update policies: which structures (conv filters, dense rows) of which layers an
// optimizer updates. Full, frozen, bias only, last k layers, a fixed channel ratio (MIT's
// sparse update) and dynamic top-k (Deutel et al. 2024): per layer and sample, the k
// output structures with the largest error, k = floor(min(lmin + eps (lmax - lmin), 1) N)
// with eps the sample's loss over the largest loss seen.
//
// With a partial update, the error of unselected structures is dropped: both the input
// gradient and the weight gradient use the selected output channels only, so skipped work
// costs nothing. The kernels run unchanged on compact copies of the selected channels.
#ifndef MCUTRAIN_PARTIAL_UPDATE_H
#define MCUTRAIN_PARTIAL_UPDATE_H

#include "layer.h"

// Applies `update` (a policy, or a dict of layer name -> policy) to the model's layers.
void mt_update_apply(mp_obj_t model, mp_obj_t update);

// Output structures of a layer with weights (its weight's first dimension).
int mt_update_structures(const mt_layer_obj_t *layer);
// Whether backward takes the compact path (an optimizer and a CHANNELS/TOPK policy).
static inline bool mt_update_is_partial(const mt_layer_obj_t *layer, const mt_pass_t *pass) {
    return pass->optim != NULL && (layer->update.kind == MT_UPDATE_CHANNELS || layer->update.kind == MT_UPDATE_TOPK);
}
// The most structures one pass can select (sizes the compact scratch).
int mt_update_max_selected(const mt_layer_obj_t *layer);

// A planned Linear/Conv layer's sizes for the compact path: n output structures, rows of its
// output and input (pixels times batch), input channels, weights per structure.
typedef struct {
    int n, rows_out, rows_in, in_c, row_len;
    bool depthwise;
} mt_update_geometry_t;
mt_update_geometry_t mt_update_geometry(const mt_layer_obj_t *layer, bool depthwise);
// The most scratch `scratch(layer, k)` asks for over k = 1..kmax (the kernels on a compact
// layer of any count a pass may select).
size_t mt_update_scratch_upto(const mt_layer_obj_t *layer, size_t (*scratch)(const mt_layer_obj_t *layer, int k),
    int kmax);
// Elements of `param` (the layer's weight or bias) an optimizer with `policy` for the
// layer may ever change.
size_t mt_update_state_elems(const mt_layer_obj_t *layer, const mt_update_t *policy,
    const mt_tensor_obj_t *param);
// Makes `policy` (kind and ratios; an optimizer's own copy) the one the layer's passes run
// with; true if that changed anything (the model must plan again: the compact path's
// scratch depends on it).
bool mt_update_activate(mt_layer_obj_t *leaf, const mt_update_t *policy);

// Chooses this pass's structures from the error dy (rows, N); returns their indices
// (increasing) and sets *k. `mag` needs N floats, `taken` N bytes.
const int32_t *mt_update_select(mt_layer_obj_t *layer, const float *dy, int rows, const mt_pass_t *pass,
    float *mag, uint8_t *taken, int *k);

// The same from a float16 error (magnitudes summed in fp32).
const int32_t *mt_update_select_f16(mt_layer_obj_t *layer, const uint16_t *dy, int rows, const mt_pass_t *pass,
    float *mag, uint8_t *taken, int *k);
// The same from an int8 error (magnitudes |dy - zero_point| summed exactly in int32);
// `mag` needs N int32.
const int32_t *mt_update_select_s8(mt_layer_obj_t *layer, const int8_t *dy, int32_t zero_point, int rows,
    const mt_pass_t *pass, int32_t *mag, uint8_t *taken, int *k);

// Updates rows `rows[0..k)` of the layer's weight (row_len floats each) and bias from
// their compact gradients (db ignored without a bias).
void mt_update_selected_rows(const mt_pass_t *pass, mt_layer_obj_t *layer, const int32_t *rows, int k,
    int row_len, const float *dw, const float *db);

// A BiasOnly update through an optimizer: adds the bias gradient (dy summed over its rows)
// and returns true; false when the layer's policy is something else.
bool mt_update_bias_only(const mt_pass_t *pass, mt_layer_obj_t *layer, const float *dy, int rows);

// The same for a float16 layer (its error fp16); `sums` needs N floats.
bool mt_update_bias_only_f16(const mt_pass_t *pass, mt_layer_obj_t *layer, const uint16_t *dy, int rows,
    float *sums);

// update_stats(): MACs of the last backward against a full update, and per layer how many
// structures were updated.
extern const mp_obj_fun_builtin_fixed_t mt_update_stats_obj;

#endif
