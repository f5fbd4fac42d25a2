// Partial updates of int8 Linear and Conv layers (partial_update.h, Deutel et al. 2024):
// per pass, k output channels (the leading ones for ChannelRatio; for TopK those whose
// int8 error has the largest sum of |dy - zero point|) keep their error, the others'
// is dropped. The usual int8 kernels then run on compact copies of the selected channels
// (a layer of k output channels: a copy of their error, and for a depthwise layer of their
// input; their weight rows, scales and bias swapped in place to the front, so the compact
// layer costs no copy of the weights), so the backward work scales with k; the rows then
// swap back and every other weight, scale and bias stays bit-identical.
#include "py/runtime.h"
#include "layer_s8.h"
#include "optim.h"
#include "partial_update.h"
#include "kernels/select_s8.h"
#include "kernels/vector_f32.h"
#include "kernels/checked_size.h"

static size_t align8(size_t n) {
    return (n + 7) & ~(size_t)7;
}

static mt_update_geometry_t geometry_of(const mt_layer_obj_t *layer, const mt_s8_kernels_t *k) {
    return mt_update_geometry(layer, k->depthwise != NULL && k->depthwise(layer));
}

// Offsets into the scratch of the compact buffers for up to kmax channels.
typedef struct {
    size_t mag, taken, dy, x, dx, kernel, end;
} layout_t;

static layout_t layout_of(const mt_update_geometry_t *g, int kmax, size_t kernel_bytes) {
    bool of = false;
    size_t k = (size_t)kmax, rows_in = g->depthwise ? (size_t)g->rows_in : 0;
    layout_t l;
    l.mag = 0;
    l.taken = align8(mt_mul_size((size_t)g->n, sizeof(int32_t), &of));
    l.dy = mt_add_size(l.taken, align8((size_t)g->n), &of);
    l.x = mt_add_size(l.dy, align8(mt_mul_size((size_t)g->rows_out, k, &of)), &of);
    l.dx = mt_add_size(l.x, align8(mt_mul_size(rows_in, k, &of)), &of);
    l.kernel = mt_add_size(l.dx, align8(mt_mul_size(rows_in, k, &of)), &of);
    l.end = mt_add_size(l.kernel, kernel_bytes, &of);
    return l;
}

size_t mt_s8_partial_scratch_bytes(const mt_layer_obj_t *layer, const mt_s8_kernels_t *k) {
    if (layer->update.kind != MT_UPDATE_CHANNELS && layer->update.kind != MT_UPDATE_TOPK) {
        return 0;
    }
    mt_update_geometry_t g = geometry_of(layer, k);
    int kmax = mt_update_max_selected(layer);
    return layout_of(&g, kmax, mt_update_scratch_upto(layer, k->scratch_bytes, kmax)).end;
}

// The selected channels' weight rows, scales and bias to the front of the layer's own
// arrays (the view's), and back.
static void rows_to_front(mt_s8_layer_t *s, mt_layer_obj_t *layer, const int32_t *sel, int k, int row_len) {
    mt_rows_to_front(layer->weight->data, (size_t)row_len, sel, k);
    mt_rows_to_front(layer->weight_scale->data, sizeof(float), sel, k);
    if (s->bias_q) {
        mt_rows_to_front(s->bias_q, sizeof(int32_t), sel, k);
    }
}

static void rows_back(mt_s8_layer_t *s, mt_layer_obj_t *layer, const int32_t *sel, int k, int row_len) {
    mt_rows_back(layer->weight->data, (size_t)row_len, sel, k);
    mt_rows_back(layer->weight_scale->data, sizeof(float), sel, k);
    if (s->bias_q) {
        mt_rows_back(s->bias_q, sizeof(int32_t), sel, k);
    }
}

void mt_s8_backward_partial(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_tensor_obj_t *x,
    const mt_tensor_obj_t *dy, mt_tensor_obj_t *dx, const mt_pass_t *pass, const mt_s8_kernels_t *k) {
    const mt_int8_sgd_t *sgd = mt_s8_sgd(layer, pass);
    mt_update_geometry_t g = geometry_of(layer, k);
    int kmax = mt_update_max_selected(layer);
    size_t total = pass->scratch_floats * sizeof(float);
    layout_t l = layout_of(&g, kmax, 0);
    if (l.end > total) {
        mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("%q: partial update scratch not planned"),
            mt_layer_name(layer));
    }
    uint8_t *base = (uint8_t *)pass->scratch;
    int32_t *mag = (int32_t *)(base + l.mag);
    int8_t *dy_sel = (int8_t *)(base + l.dy), *x_sel = (int8_t *)(base + l.x), *dx_sel = (int8_t *)(base + l.dx);
    int n_sel;
    const int32_t *sel = mt_update_select_s8(layer, dy->data, dy->zero_point, g.rows_out, pass, mag,
        base + l.taken, &n_sel);
    mt_s8_view_t v = mt_s8_view_of(s, layer);
    v.out_c = n_sel;
    mt_gather_columns_s8(dy->data, g.rows_out, g.n, sel, n_sel, dy_sel);
    const int8_t *x_view = x->data;
    if (g.depthwise) {
        // Each channel sees only its own input channel: compact x and dx the same way.
        mt_gather_columns_s8(x->data, g.rows_in, g.in_c, sel, n_sel, x_sel);
        x_view = x_sel;
    }
    void *kernel_scratch = base + l.kernel;
    s->q.dy_scale = dy->scale;
    rows_to_front(s, layer, sel, n_sel, g.row_len);
    nlr_buf_t nlr;
    if (nlr_push(&nlr) == 0) {
        if (dx != NULL) {
            mt_s8_grad_input_tracked(s, layer, &v, dy_sel, dy->scale, dx, g.depthwise ? dx_sel : dx->data,
                kernel_scratch, k);
            if (g.depthwise) {
                mt_scatter_columns_s8(dx_sel, g.rows_in, g.in_c, sel, n_sel, dx->data);
            }
        }
        if (sgd != NULL) {
            mt_s8_update_view(s, layer, &v, sgd, x_view, dy_sel, kernel_scratch, total - l.kernel, k);
        }
        nlr_pop();
    } else {
        rows_back(s, layer, sel, n_sel, g.row_len);  // the layer keeps its row order whatever happened
        nlr_jump(nlr.ret_val);
    }
    rows_back(s, layer, sel, n_sel, g.row_len);
    if (sgd != NULL && s->bias_q) {
        const float *scale = layer->weight_scale->data;
        float *bias = layer->bias->data;
        for (int j = 0; j < n_sel; j++) {
            int o = sel[j];
            mt_bias_s32_to_f32(&s->bias_q[o], &bias[o], 1, s->q.x.scale, &scale[o]);
        }
    }
}

void mt_s8_bias_only(mt_s8_layer_t *s, mt_layer_obj_t *layer, const mt_int8_sgd_t *sgd,
    const mt_tensor_obj_t *dy) {
    if (layer->bias == NULL) {
        return;
    }
    int n = s->out_c, rows = (int)(dy->size / (size_t)n);
    const int8_t *e = dy->data;
    int32_t zp = dy->zero_point;
    float *bias = layer->bias->data;
    float sigma = 0.0f;
    if (sgd->standardize) {
        // As the full update: divided by the running RMS of earlier steps' bias gradients
        // (this step's on the first), then this step's joins it.
        mt_grad_stats_t st = { 0 };
        for (int o = 0; o < n; o++) {
            int32_t sum = 0;
            for (int r = 0; r < rows; r++) {
                sum += e[(size_t)r * n + o] - zp;
            }
            st.sum += (float)sum;
            st.sum_sq += (float)sum * (float)sum;
            st.count++;
        }
        float rms = mt_grad_stats_rms(&st, s->q.dy_scale);
        if (s->sigma_b.count == 0) {
            mt_ema_observe(&s->sigma_b, rms, MT_S8_RANGE_MOMENTUM);
        }
        sigma = s->sigma_b.value;
        mt_ema_observe(&s->sigma_b, rms, MT_S8_RANGE_MOMENTUM);
    }
    float c = sgd->standardize ? sgd->lr * s->q.dy_scale / (sigma + 1e-8f) : sgd->lr * s->q.dy_scale;
    for (int o = 0; o < n; o++) {
        int32_t sum = 0;
        for (int r = 0; r < rows; r++) {
            sum += e[(size_t)r * n + o] - zp;
        }
        bias[o] -= c * (float)sum;
    }
}
