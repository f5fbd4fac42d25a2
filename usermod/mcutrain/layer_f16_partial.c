// Partial updates of float16 layers (layer_f16_partial.h).
#include "py/runtime.h"
#include "layer_f16_partial.h"
#include "partial_update.h"
#include "kernels/select_f32.h"
#include "kernels/select_s8.h"
#include "kernels/select_f16.h"
#include "kernels/half.h"
#include "kernels/checked_size.h"

static mt_update_geometry_t geometry_of(const mt_layer_obj_t *layer, const mt_f16_partial_ops_t *ops) {
    return mt_update_geometry(layer, ops->depthwise != NULL && ops->depthwise(layer));
}

// Float offsets: magnitudes and a mask over n channels, then for up to k channels their
// dy, weight rows (fp16), weight and bias gradients (fp32), a depthwise layer's x and dx
// (fp16), and the kernels' scratch.
typedef struct {
    size_t taken, dy, w, dw, db, x, dx, kernel, end;
} layout_t;

static size_t halves(size_t n) {
    return (n + 1) / 2;
}

static layout_t layout_of(const mt_update_geometry_t *g, int kmax, size_t kernel_floats) {
    bool of = false;
    size_t n = (size_t)g->n, k = (size_t)kmax, rows_in = g->depthwise ? (size_t)g->rows_in : 0;
    size_t w_elems = mt_mul_size(k, (size_t)g->row_len, &of);
    layout_t l;
    l.taken = n;
    l.dy = mt_add_size(l.taken, (n + 3) / 4, &of);
    l.w = mt_add_size(l.dy, halves(mt_mul_size((size_t)g->rows_out, k, &of)), &of);
    l.dw = mt_add_size(l.w, halves(w_elems), &of);
    l.db = mt_add_size(l.dw, w_elems, &of);
    l.x = mt_add_size(l.db, k, &of);
    l.dx = mt_add_size(l.x, halves(mt_mul_size(rows_in, k, &of)), &of);
    l.kernel = mt_add_size(l.dx, halves(mt_mul_size(rows_in, k, &of)), &of);
    l.end = mt_add_size(l.kernel, kernel_floats, &of);
    return l;
}

size_t mt_f16_partial_scratch_floats(const mt_layer_obj_t *layer, const mt_f16_partial_ops_t *ops) {
    if (layer->update.kind != MT_UPDATE_CHANNELS && layer->update.kind != MT_UPDATE_TOPK) {
        return 0;
    }
    mt_update_geometry_t g = geometry_of(layer, ops);
    int kmax = mt_update_max_selected(layer);
    return layout_of(&g, kmax, mt_update_scratch_upto(layer, ops->scratch_floats, kmax)).end;
}

void mt_f16_backward_partial(mt_layer_obj_t *layer, const mt_tensor_obj_t *x, const mt_tensor_obj_t *dy,
    mt_tensor_obj_t *dx, const mt_pass_t *pass, const mt_f16_partial_ops_t *ops) {
    mt_update_geometry_t g = geometry_of(layer, ops);
    layout_t l = layout_of(&g, mt_update_max_selected(layer), 0);
    float *base = pass->scratch;
    if (l.end > pass->scratch_floats) {
        mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("%q: partial update scratch not planned"),
            mt_layer_name(layer));
    }
    int k;
    const int32_t *sel = mt_update_select_f16(layer, dy->data, g.rows_out, pass, base, (uint8_t *)(base + l.taken),
        &k);
    uint16_t *dy_sel = (uint16_t *)(base + l.dy), *w_sel = (uint16_t *)(base + l.w);
    uint16_t *x_sel = (uint16_t *)(base + l.x), *dx_sel = (uint16_t *)(base + l.dx);
    float *dw = base + l.dw, *db = base + l.db, *kernel_scratch = base + l.kernel;
    mt_gather_columns_u16(dy->data, g.rows_out, g.n, sel, k, dy_sel);
    mt_gather_rows(layer->weight->data, (size_t)g.row_len * sizeof(uint16_t), sel, k, w_sel);
    const uint16_t *xv = x->data;
    if (g.depthwise) {
        mt_gather_columns_u16(x->data, g.rows_in, g.in_c, sel, k, x_sel);
        xv = x_sel;
    }
    if (dx != NULL) {
        ops->grad_input(layer, k, dy_sel, w_sel, g.depthwise ? dx_sel : dx->data, kernel_scratch);
        if (g.depthwise) {
            mt_scatter_columns_u16(dx_sel, g.rows_in, g.in_c, sel, k, dx->data);
        }
    }
    for (size_t i = 0; i < (size_t)k * g.row_len; i++) {
        dw[i] = 0.0f;
    }
    for (int i = 0; i < k; i++) {
        db[i] = 0.0f;
    }
    ops->grad_weight(layer, k, xv, dy_sel, dw, layer->bias ? db : NULL, kernel_scratch);
    mt_update_selected_rows(pass, layer, sel, k, g.row_len, dw, db);
}
