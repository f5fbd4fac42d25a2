// int8 depthwise convolution: forward, input gradient and update (depthwise_s8.h) on int16
// channel planes, SMLAD over pairs of taps on Cortex-M4, plain int16 loops elsewhere.
#include <string.h>
#include "depthwise_s8.h"
#include "s8_common.h"
#include "checked_size.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
// The zero columns of a plane are a few halfwords: a memset call per run costs more.
#pragma GCC optimize("no-tree-loop-distribute-patterns")
#endif

#define GROUP 4          // channels gathered per pass over a band of rows
#define MIN_ROWS 4       // rows a band holds at least (fewer re-gathered halo rows)
#define SLACK 256        // bytes the scratch may exceed what depthwise layers took before

int mt_depthwise_s8_applies(const mt_conv2d_params_t *p) {
    return p->groups == p->in_c && p->out_c == p->in_c;
}

static int even(int v) {
    return (v + 1) & ~1;
}

// ---- geometry and scratch ---------------------------------------------------------------

enum { PASS_FORWARD, PASS_GRAD_INPUT, PASS_UPDATE };

// One pass's band: `rows` result rows (output rows; input rows for the input gradient) of
// `cols` pixels from plane rows of `wa` halfwords; bands start every `rows` rows.
typedef struct {
    int kwp;          // weight row length: kernel_w rounded up to even
    int cols, height; // result row length, result rows in all
    int wa;           // plane row length, with zero columns for the last pair's reads
    int rows;         // result rows per band
    int owp;          // dy plane row length (update)
} geom_t;

typedef struct {
    mt_s8_rq_t *rq;   // C (forward, input gradient)
    int32_t *mm;      // 2 * C: accumulator min, max (forward, input gradient)
    int16_t *wq;      // GROUP * kernel_h * kwp (forward, input gradient)
    int16_t *plane;   // GROUP planes of x (or dy) rows, plane_rows(rows) * wa apart
    int16_t *dplane;  // GROUP planes of dy rows, rows * owp apart (update)
    int32_t *acc;     // rows * cols (forward, input gradient) or GROUP * taps (update)
} dw_scratch_t;

typedef struct {
    uint8_t *base;
    size_t used;
} arena_t;

static inline __attribute__((always_inline)) void *take(arena_t *a, size_t bytes) {
    void *p = a->base ? a->base + a->used : NULL;
    bool overflow = false;
    a->used = mt_add_size(a->used, mt_add_size(bytes, 7, &overflow) & ~(size_t)7, &overflow);
    return p;
}

static int taps_of(const mt_conv2d_params_t *p) {
    return p->kernel_h * p->kernel_w;
}

// The layer as the passes see it: transposed (heights and widths swapped) when its output
// rows are shorter than its columns, so that the planes' rows (and the loops along them) are
// the long side. x_row, x_col (y_row, y_col): bytes between the view's rows and columns of x
// and dx (y and dy).
typedef struct {
    mt_conv2d_params_t v;
    int transposed;
    size_t x_row, x_col, y_row, y_col;
} view_t;

// Plane rows a band of `rows` result rows reads.
static int plane_rows(const mt_conv2d_params_t *p, int pass, int rows) {
    return pass == PASS_GRAD_INPUT ? rows + p->kernel_h - 1 : (rows - 1) * p->stride_h + p->kernel_h;
}

static geom_t geom_base(const mt_conv2d_params_t *p, int pass) {
    geom_t g;
    g.kwp = even(p->kernel_w);
    if (pass == PASS_GRAD_INPUT) {
        g.cols = p->in_w;
        g.height = p->in_h;
        g.wa = even(p->in_w - 1 + g.kwp + 2);
    } else {
        g.cols = p->out_w;
        g.height = p->out_h;
        g.wa = even((p->out_w - 1) * p->stride_w + g.kwp + 2);
    }
    g.owp = even(p->out_w);
    g.rows = 1;
    return g;
}

static size_t layout(const mt_conv2d_params_t *p, int pass, const geom_t *g, void *scratch,
    dw_scratch_t *s) {
    const size_t C = (size_t)p->in_c, prow = (size_t)plane_rows(p, pass, g->rows);
    bool overflow = false;
    arena_t a = { scratch, 0 };
    s->rq = NULL;
    s->mm = NULL;
    s->wq = NULL;
    if (pass != PASS_UPDATE) {
        s->rq = take(&a, C * sizeof(mt_s8_rq_t));
        s->mm = take(&a, 2 * C * sizeof(int32_t));
        s->wq = take(&a, (size_t)GROUP * p->kernel_h * g->kwp * 2);
    }
    s->plane = take(&a, mt_mul_size(GROUP * prow, (size_t)g->wa * 2, &overflow));
    if (pass == PASS_UPDATE) {
        s->dplane = take(&a, mt_mul_size(GROUP * (size_t)g->rows, (size_t)g->owp * 2, &overflow));
        s->acc = take(&a, (size_t)GROUP * taps_of(p) * sizeof(int32_t));
    } else {
        s->dplane = NULL;
        s->acc = take(&a, mt_mul_size((size_t)g->rows, (size_t)g->cols * 4, &overflow));
    }
    return overflow ? MT_SIZE_OVERFLOW : a.used;
}

// What these layers' scratch was before the planes (byte loops on transposed weights): the
// budget bands grow in.
static size_t budget(const mt_conv2d_params_t *p) {
    const size_t C = (size_t)p->in_c, taps = (size_t)taps_of(p);
    bool overflow = false;
    size_t b = 0;
    b = mt_add_size(b, (C * sizeof(mt_s8_rq_t) + 7) & ~(size_t)7, &overflow);
    b = mt_add_size(b, (2 * C * 4 + 7) & ~(size_t)7, &overflow);
    b = mt_add_size(b, (mt_mul_size(taps, C, &overflow) + 7) & ~(size_t)7, &overflow);
    b = mt_add_size(b, (mt_mul_size(taps, C * 4, &overflow) + 7) & ~(size_t)7, &overflow);
    return mt_add_size(b, (taps * 4 + 7) & ~(size_t)7, &overflow);
}

// The pass's geometry with the most rows per band that fit the budget (at least MIN_ROWS).
static geom_t geom(const mt_conv2d_params_t *p, int pass) {
    geom_t g = geom_base(p, pass);
    dw_scratch_t s;
    const int lo = g.height < MIN_ROWS ? g.height : MIN_ROWS;
    g.rows = lo;
    const size_t at_lo = layout(p, pass, &g, NULL, &s);
    const size_t limit = mt_max_size(mt_add_size(budget(p), SLACK, &(bool){false}), at_lo);
    if (at_lo >= MT_SIZE_OVERFLOW) {
        return g;
    }
    g.rows = g.height;
    const size_t at_hi = layout(p, pass, &g, NULL, &s);
    if (at_hi > limit) {
        // Bytes grow linearly in rows (up to 8-byte rounding): step back from the estimate.
        const size_t per_row = (at_hi - at_lo) / (size_t)(g.height - lo) + 1;
        int rows = lo + (int)((limit - at_lo) / per_row);
        g.rows = rows < g.height ? rows : g.height;
        while (g.rows > lo && layout(p, pass, &g, NULL, &s) > limit) {
            g.rows--;
        }
        // Bands of even size: a last band of a row or two costs a whole band's setup.
        const int bands = (g.height + g.rows - 1) / g.rows;
        g.rows = (g.height + bands - 1) / bands;
    }
    return g;
}

static view_t view_as(const mt_conv2d_params_t *p, int transposed) {
    view_t w;
    const size_t C = (size_t)p->in_c;
    w.v = *p;
    w.transposed = transposed;
    w.x_row = (size_t)p->in_w * C;
    w.x_col = C;
    w.y_row = (size_t)p->out_w * C;
    w.y_col = C;
    if (w.transposed) {
        w.v.in_h = p->in_w;
        w.v.in_w = p->in_h;
        w.v.out_h = p->out_w;
        w.v.out_w = p->out_h;
        w.v.kernel_h = p->kernel_w;
        w.v.kernel_w = p->kernel_h;
        w.v.stride_h = p->stride_w;
        w.v.stride_w = p->stride_h;
        w.v.pad_h = p->pad_w;
        w.v.pad_w = p->pad_h;
        w.x_row = C;
        w.x_col = (size_t)p->in_w * C;
        w.y_row = C;
        w.y_col = (size_t)p->out_w * C;
    }
    return w;
}

// Scratch bytes of all three passes on a view.
static size_t view_bytes(const view_t *vw) {
    size_t bytes = 0;
    for (int pass = PASS_FORWARD; pass <= PASS_UPDATE; pass++) {
        const geom_t g = geom(&vw->v, pass);
        dw_scratch_t s;
        bytes = mt_max_size(bytes, layout(&vw->v, pass, &g, NULL, &s));
    }
    return bytes;
}

// Transposed when the output is taller than wide, unless its bands would need more scratch
// than the budget (and than the plain view).
static view_t view_of(const mt_conv2d_params_t *p) {
    const view_t plain = view_as(p, 0);
    if (p->out_w >= p->out_h) {
        return plain;
    }
    const view_t t = view_as(p, 1);
    bool overflow = false;
    // Transposed when it needs no more than max(budget + SLACK, the plain view's bytes):
    // within the budget it wins without sizing the plain view (three passes' geometry less
    // on every call).
    const size_t bytes = view_bytes(&t);
    if (bytes <= mt_add_size(budget(p), SLACK, &overflow)) {
        return t;
    }
    return bytes <= view_bytes(&plain) ? t : plain;
}

size_t mt_depthwise_s8_scratch_bytes(const mt_conv2d_params_t *layer) {
    const view_t vw = view_of(layer);
    return view_bytes(&vw);
}

// ---- planes -------------------------------------------------------------------------------

static inline int32_t load2(const int16_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store2(int16_t *p, uint32_t v) {
    memcpy(p, &v, sizeof v);
}

// Weights of nch channels as int16 rows of kwp (zero padded); flipped (for the input
// gradient) reverses the taps.
static void widen_weights(const view_t *vw, const int8_t *w, int nch, int kwp, int flipped,
    int16_t *wq) {
    const int kh = vw->v.kernel_h, kw = vw->v.kernel_w, taps = kh * kw;
    // The view's tap (i, j) is the layer's tap i * si + j * sj (kernel rows and columns
    // swap when transposed); flipped reads them from the other end.
    const int si = vw->transposed ? 1 : kw, sj = vw->transposed ? kh : 1;
    const int step = flipped ? -sj : sj;
    for (int c = 0; c < nch; c++, w += taps) {
        for (int i = 0; i < kh; i++, wq += kwp) {
            const int8_t *src = w + (flipped ? taps - 1 - i * si : i * si);
            int j = 0;
            for (; j < kw; j++, src += step) {
                wq[j] = *src;
            }
            for (; j < kwp; j++) {
                wq[j] = 0;
            }
        }
    }
}

static void zero_cols(int16_t *dst, size_t plane, int nch, int from, int to) {
    for (int ch = 0; ch < nch; ch++, dst += plane) {
        for (int k = from; k < to; k++) {
            dst[k] = 0;
        }
    }
}

// One plane row of channels [0, nch) of src: pixel s of n (C bytes apart) minus zp
// at column s * step + off when inside [0, wa). Other columns are left alone: they are zero
// from the start of the call (every band writes the same columns).
static void gather_row(const int8_t *src, int n, size_t C, int nch, int step, int off, int32_t zp,
    int16_t *dst, size_t plane, int wa) {
    int lo = 0, hi = n;
    while (lo < hi && lo * step + off < 0) {
        lo++;
    }
    while (hi > lo && (hi - 1) * step + off >= wa) {
        hi--;
    }
    src += (size_t)lo * C;
    int16_t *d = dst + lo * step + off;
#if MT_S8_DSP
    if (nch == GROUP) {
        // One word holds the group's 4 channels: SXTAB16 splits it into (c0, c2), (c1, c3)
        // and subtracts zp from both halves.
        const uint32_t neg = mt_s8_pair(-zp);
        int16_t *d1 = d + plane, *d2 = d1 + plane, *d3 = d2 + plane;
        int k = 0;
        if (step == 1) {
            // Two pixels at a time: PKHBT/PKHTB pair each channel's values into one word.
            for (; k + 1 < hi - lo; k += 2, src += 2 * C) {
                const uint32_t v0 = mt_s8_load32(src), v1 = mt_s8_load32(src + C);
                const uint32_t a0 = __sxtab16(neg, v0), b0 = mt_s8_sxtab16_ror8(neg, v0);
                const uint32_t a1 = __sxtab16(neg, v1), b1 = mt_s8_sxtab16_ror8(neg, v1);
                store2(d + k, mt_s8_pkhbt(a0, a1));
                store2(d2 + k, mt_s8_pkhtb(a1, a0));
                store2(d1 + k, mt_s8_pkhbt(b0, b1));
                store2(d3 + k, mt_s8_pkhtb(b1, b0));
            }
        }
        for (; k < (hi - lo) * step; k += step, src += C) {
            const uint32_t v = mt_s8_load32(src);
            const uint32_t a = __sxtab16(neg, v), b = mt_s8_sxtab16_ror8(neg, v);
            d[k] = (int16_t)a;
            d2[k] = (int16_t)(a >> 16);
            d1[k] = (int16_t)b;
            d3[k] = (int16_t)(b >> 16);
        }
        return;
    }
#endif
    for (int k = 0; k < (hi - lo) * step; k += step, src += C) {
        for (int ch = 0; ch < nch; ch++) {
            d[ch * plane + k] = (int16_t)(src[ch] - zp);
        }
    }
}

// Plane rows [r0, r0 + count) of x (forward, update): padded-image row r is image row
// r - pad_h of image n.
static void gather_x(const view_t *vw, const int8_t *x, int n, int c0, int nch,
    int r0, int count, int32_t zp, const geom_t *g, size_t stride, int16_t *plane) {
    const mt_conv2d_params_t *p = &vw->v;
    const int8_t *image = x + (size_t)n * p->in_h * p->in_w * p->in_c + c0;
    for (int r = 0; r < count; r++) {
        const int ih = r0 + r - p->pad_h;
        int16_t *dst = plane + (size_t)r * g->wa;
        if (ih < 0 || ih >= p->in_h) {
            zero_cols(dst, stride, nch, 0, g->wa);
        } else {
            gather_row(image + ih * vw->x_row, p->in_w, vw->x_col, nch, 1, p->pad_w, zp, dst,
                stride, g->wa);
        }
    }
}

// Plane rows [r0, r0 + count) of dy dilated by the stride and offset by kernel - 1 - pad
// (input gradient): dy[oh][ow] sits at (oh * stride_h + kh - 1 - pad_h, ow * stride_w +
// kw - 1 - pad_w), zeros elsewhere, so dx is the plane correlated with the flipped filter.
static void gather_dy_dilated(const view_t *vw, const int8_t *dy, int n, int c0,
    int nch, int r0, int count, const geom_t *g, size_t stride, int16_t *plane) {
    const mt_conv2d_params_t *p = &vw->v;
    const int8_t *image = dy + (size_t)n * p->out_h * p->out_w * p->out_c + c0;
    const int off_h = p->kernel_h - 1 - p->pad_h, off_w = p->kernel_w - 1 - p->pad_w;
    for (int r = 0; r < count; r++) {
        const int v = r0 + r - off_h, oh = v / p->stride_h;
        int16_t *dst = plane + (size_t)r * g->wa;
        if (v < 0 || v % p->stride_h || oh >= p->out_h) {
            zero_cols(dst, stride, nch, 0, g->wa);
        } else {
            gather_row(image + oh * vw->y_row, p->out_w, vw->y_col, nch, p->stride_w, off_w, 0,
                dst, stride, g->wa);
        }
    }
}

// ---- multiply-accumulate ------------------------------------------------------------------

// acc[r * cols + o] = sum over taps (i, j) of pl[(r * sh + i) * wa + o * sw + j] *
// w[i * kwp + j], for a band of rows (the epilogue adds the bias).
#if MT_S8_DSP
// The taps a 3x3 output pair takes after its first product pair (r12, lr): the rest of
// kernel row 0 (r11 = (x_o+2, x_o+3) against r5) and rows 1 and 2 (planes r1 bytes apart,
// weights r6-r9), with P and Q the registers pointing at row 0's x_o and x_o+2. Shared by
// row3x3_pairs and fused3x3_pairs.
#define PAIR3X3_REST_TAPS_AT(P, Q) \
    "smlabt r12, r11, r5, r12\n\t" \
    "smlad lr, r11, r5, lr\n\t" \
    "ldr r10, [" P ", r1]\n\t" \
    "ldr r11, [" Q ", r1]\n\t" \
    "smlad r12, r10, r6, r12\n\t" \
    "smlatb lr, r10, r6, lr\n\t" \
    "smlabt r12, r11, r7, r12\n\t" \
    "smlad lr, r11, r7, lr\n\t" \
    "ldr r10, [" P ", r1, lsl #1]\n\t" \
    "ldr r11, [" Q ", r1, lsl #1]\n\t" \
    "smlad r12, r10, r8, r12\n\t" \
    "smlatb lr, r10, r8, lr\n\t" \
    "smlabt r12, r11, r9, r12\n\t" \
    "smlad lr, r11, r9, lr\n\t"
#define PAIR3X3_REST_TAPS PAIR3X3_REST_TAPS_AT("r0", "r2")

// One row of 3x3 output pairs (o, o+1), unit column stride: each kernel row's words
// (x_o, x_o+1) and (x_o+2, x_o+3) against weight pairs a = (w0, w1) and b = (w1, w2) make
// both outputs' 6 products in 4 instructions; 24 instructions a pair (1.5 products each).
typedef struct {
    const int16_t *p;     // row 0 of the plane at the first pair
    int32_t row_bytes;    // plane row stride in bytes
    const int16_t *end;   // p after the last pair
    int32_t *out;
    int32_t w[6];         // a0, b0, a1, b1, a2, b2
} row3x3_t;

#define MT_ARG __attribute__((unused))
__attribute__((naked, noinline))
static void row3x3_pairs(const row3x3_t *a MT_ARG) {
    __asm__ volatile (
        "push {r4-r11, lr}\n\t"
        "ldr r1, [r0, #8]\n\t"
        "push {r1}\n\t"                    // end, compared once a pair
        "ldr r1, [r0, #4]\n\t"             // row_bytes
        "ldr r3, [r0, #12]\n\t"            // out
        "add r4, r0, #16\n\t"
        "ldm r4, {r4-r9}\n\t"
        "ldr r0, [r0]\n\t"                 // p: words (x_o, x_o+1)
        "add r2, r0, #4\n\t"               // q = p + 4: words (x_o+2, x_o+3)
        "1:\n\t"
        "ldr r10, [r0]\n\t"
        "ldr r11, [r2]\n\t"
        "smuad r12, r10, r4\n\t"
        "smultb lr, r10, r4\n\t"
        PAIR3X3_REST_TAPS
        "strd r12, lr, [r3], #8\n\t"
        "adds r0, #4\n\t"
        "adds r2, #4\n\t"
        "ldr r10, [sp]\n\t"
        "cmp r0, r10\n\t"
        "bne 1b\n\t"
        "add sp, #4\n\t"
        "pop {r4-r11, pc}\n\t");
}
#undef MT_ARG

static void correlate_3x3(const int16_t *pl, int wa, int sh, const int16_t *w, int rows, int cols,
    int32_t *acc) {
    row3x3_t a;
    a.row_bytes = wa * 2;
    for (int i = 0; i < 3; i++) {
        a.w[2 * i] = load2(w + 4 * i);
        a.w[2 * i + 1] = load2(w + 4 * i + 1);
    }
    const int pairs = cols / 2;
    for (int r = 0; r < rows; r++, acc += cols) {
        const int16_t *p0 = pl + (size_t)r * sh * wa;
        if (pairs) {
            a.p = p0;
            a.end = p0 + 2 * pairs;
            a.out = acc;
            row3x3_pairs(&a);
        }
        if (cols & 1) {
            const int16_t *t = p0 + cols - 1;
            int32_t s0 = __smuad(load2(t), a.w[0]);
            s0 = __smlabt(load2(t + 2), a.w[1], s0);
            s0 = __smlad(load2(t + wa), a.w[2], s0);
            s0 = __smlabt(load2(t + wa + 2), a.w[3], s0);
            s0 = __smlad(load2(t + 2 * wa), a.w[4], s0);
            s0 = __smlabt(load2(t + 2 * wa + 2), a.w[5], s0);
            acc[cols - 1] = s0;
        }
    }
}
#endif

static void correlate(const int16_t *pl, int wa, int sh, int sw, const int16_t *w, int kh, int kw,
    int kwp, int rows, int cols, int32_t *acc) {
#if MT_S8_DSP
    if (kh == 3 && kw == 3 && sw == 1) {
        correlate_3x3(pl, wa, sh, w, rows, cols, acc);
        return;
    }
    for (int r = 0; r < rows; r++, acc += cols) {
        for (int o = 0; o < cols; o++) {
            const int16_t *base = pl + (size_t)r * sh * wa + o * sw;
            int32_t s = 0;
            for (int i = 0; i < kh; i++) {
                for (int j = 0; j < kwp; j += 2) {
                    s = __smlad(load2(base + i * wa + j), load2(w + i * kwp + j), s);
                }
            }
            acc[o] = s;
        }
    }
#else
    if (kh == 3 && kw == 3) {
        const int32_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[4], w4 = w[5], w5 = w[6];
        const int32_t w6 = w[8], w7 = w[9], w8 = w[10];
        for (int r = 0; r < rows; r++, acc += cols) {
            const int16_t *p0 = pl + (size_t)r * sh * wa, *p1 = p0 + wa, *p2 = p1 + wa;
            for (int o = 0; o < cols; o++, p0 += sw, p1 += sw, p2 += sw) {
                acc[o] = p0[0] * w0 + p0[1] * w1 + p0[2] * w2 + p1[0] * w3 + p1[1] * w4
                    + p1[2] * w5 + p2[0] * w6 + p2[1] * w7 + p2[2] * w8;
            }
        }
        return;
    }
    for (int r = 0; r < rows; r++, acc += cols) {
        for (int o = 0; o < cols; o++) {
            const int16_t *base = pl + (size_t)r * sh * wa + o * sw;
            int32_t s = 0;
            for (int i = 0; i < kh; i++) {
                for (int j = 0; j < kw; j++) {
                    s += base[i * wa + j] * w[i * kwp + j];
                }
            }
            acc[o] = s;
        }
    }
#endif
}

// ---- epilogues ----------------------------------------------------------------------------

#if MT_S8_DSP
// One row of the fast form with right >= 1: v = acc + init, range tracked by branches (taken
// only for a new extreme), SMMLA + ASR, SSAT, then a lower bound inside int8 (lo variant):
// 13 instructions an output, 16 with the bound.
typedef struct {
    const int32_t *acc, *end;
    int8_t *out;
    int32_t col_bytes, init, m, k, right, lo, hi, mn, mx;
} epi_row_t;

#define MT_ARG __attribute__((unused))
#define MT_EPI_ROW(name, clamp) \
    __attribute__((naked, noinline)) static void name(epi_row_t *e MT_ARG) { \
        __asm__ volatile ( \
            "push {r4-r11, lr}\n\t" \
            "push {r0}\n\t" \
            "add r1, r0, #12\n\t" \
            "ldm r1, {r3-r11}\n\t"      /* col_bytes init m k right lo hi mn mx */ \
            "ldr r2, [r0, #4]\n\t" \
            "ldr r1, [r0, #8]\n\t" \
            "ldr r0, [r0]\n\t" \
            "1:\n\t" \
            "ldr r12, [r0], #4\n\t" \
            "add r12, r12, r4\n\t" \
            "cmp r12, r10\n\t" \
            "blt 5f\n\t" \
            "2:\n\t" \
            "cmp r12, r11\n\t" \
            "bgt 6f\n\t" \
            "3:\n\t" \
            "smmla r12, r12, r5, r6\n\t" \
            "asr r12, r12, r7\n\t" \
            "ssat r12, #8, r12\n\t" \
            clamp \
            "strb r12, [r1]\n\t" \
            "add r1, r1, r3\n\t" \
            "cmp r0, r2\n\t" \
            "bne 1b\n\t" \
            "pop {r0}\n\t" \
            "strd r10, r11, [r0, #40]\n\t" \
            "str r1, [r0, #8]\n\t" \
            "pop {r4-r11, pc}\n\t" \
            "5:\n\t" \
            "mov r10, r12\n\t" \
            "b 2b\n\t" \
            "6:\n\t" \
            "mov r11, r12\n\t" \
            "b 3b\n\t"); \
    }
MT_EPI_ROW(epi_row_full, "")
MT_EPI_ROW(epi_row_lo, "cmp r12, r8\n\t" "it lt\n\t" "movlt r12, r8\n\t")
#undef MT_EPI_ROW
#undef MT_ARG
#endif

// The fast form of requant_run for a fixed shift (right == 0 is its own instance: SMMLAR).
static inline __attribute__((always_inline)) void requant_fast(const int32_t *acc, int rows,
    int cols, int32_t init, int32_t m, int32_t k, int32_t right, int32_t lo, int32_t hi,
    int32_t *mm, int8_t *out, size_t row_bytes, size_t col_bytes) {
#if MT_S8_DSP
    // Both bounds inside int8 (ReLU6; no layer asks for it yet) take the C loop below.
    if (right >= 1 && cols > 0 && hi == 127) {
        epi_row_t e = { acc, acc + cols, out, (int32_t)col_bytes, init, m, k, right, lo, hi,
            mm[0], mm[1] };
        for (int r = 0; r < rows; r++, out += row_bytes) {
            e.end = e.acc + cols;
            e.out = out;
            if (lo == -128) {
                epi_row_full(&e);
            } else {
                epi_row_lo(&e);     // ReLU, or dx's -127
            }
            e.acc = e.end;
        }
        mm[0] = e.mn;
        mm[1] = e.mx;
        return;
    }
#endif
    int32_t mn = mm[0], mx = mm[1];
    for (int r = 0; r < rows; r++, acc += cols, out += row_bytes) {
        int8_t *o = out;
        if (lo == -128 && hi == 127) {
            for (int i = 0; i < cols; i++, o += col_bytes) {
                const int32_t v = acc[i] + init;
                mn = mt_s8_min(mn, v);
                mx = mt_s8_max(mx, v);
                *o = (int8_t)mt_s8_ssat8(mt_s8_rq_zp(v, m, k, right));
            }
        } else {
            for (int i = 0; i < cols; i++, o += col_bytes) {
                const int32_t v = acc[i] + init;
                mn = mt_s8_min(mn, v);
                mx = mt_s8_max(mx, v);
                *o = (int8_t)mt_s8_clamp(mt_s8_ssat8(mt_s8_rq_zp(v, m, k, right)), lo, hi);
            }
        }
    }
    mm[0] = mn;
    mm[1] = mx;
}

// Requantizes a band of one channel's accumulators (rows x cols) plus init to out (rows
// row_bytes, columns col_bytes apart), clamped to [lo, hi], tracking their range in mm[0..1].
// The fast form (the zero point folded into one SMMLA, see mt_s8_rq_c) needs left == 0 and
// right <= 23; the general one any constants.
static void requant_run(const int32_t *acc, int rows, int cols, int32_t init,
    const mt_s8_rq_t *rq, int32_t zp, int32_t lo, int32_t hi, int32_t *mm, int8_t *out,
    size_t row_bytes, size_t col_bytes) {
    if (rq->left == 0 && rq->right == 0) {
        requant_fast(acc, rows, cols, init, rq->m, zp, 0, lo, hi, mm, out, row_bytes, col_bytes);
    } else if (rq->left == 0 && rq->right <= 23) {
        requant_fast(acc, rows, cols, init, rq->m, mt_s8_rq_c(rq->right, zp), rq->right, lo, hi,
            mm, out, row_bytes, col_bytes);
    } else {
        int32_t mn = mm[0], mx = mm[1];
        for (int r = 0; r < rows; r++, acc += cols, out += row_bytes) {
            int8_t *o = out;
            for (int i = 0; i < cols; i++, o += col_bytes) {
                const int32_t v = acc[i] + init;
                mn = mt_s8_min(mn, v);
                mx = mt_s8_max(mx, v);
                *o = (int8_t)mt_s8_clamp(mt_s8_rq(v, rq) + zp, lo, hi);
            }
        }
        mm[0] = mn;
        mm[1] = mx;
    }
}

// ---- fused 3x3 rows -----------------------------------------------------------------------

#if MT_S8_DSP
// One row of 3x3 output pairs at unit column stride, requantized as they are made (the fast
// form, right >= 1, upper bound 127): the multiply-adds of row3x3_pairs with the bias as the
// accumulators' start, the range tracked by branches taken only for a new extreme, SMMLA +
// ASR + SSAT per output, then both outputs' lower bound at once (SSUB16 + SEL against lo in
// both halves) and two byte stores. 48 instructions a pair, against 56 for row3x3_pairs and
// two epi_row_lo outputs with the accumulators stored and reloaded between them; row 0's
// two words come by one post-incremented LDRD (plane rows and pairs are word aligned).
typedef struct {
    const int16_t *p;     // 0: row 0 of the plane at the first pair (word aligned)
    int32_t row_bytes;    // 4 (a multiple of 4)
    const int16_t *end;   // 8: p after the last pair
    int8_t *out;          // 12: advanced past the pairs
    int32_t col_bytes;    // 16
    int32_t init;         // 20
    int32_t w[6];         // 24: a0, b0, a1, b1, a2, b2
    int32_t m, k, right;  // 48
    uint32_t lo2;         // 60: lo in both halfwords
    int32_t mn, mx;       // 64
} fused3x3_t;

#define MT_ARG __attribute__((unused))
__attribute__((naked, noinline))
static void fused3x3_pairs(fused3x3_t *a MT_ARG) {
    __asm__ volatile (
        "push {r4-r11, lr}\n\t"
        "sub sp, sp, #28\n\t"
        "str r0, [sp, #24]\n\t"
        "add r1, r0, #24\n\t"
        "ldm r1, {r4-r9}\n\t"
        "stm sp, {r4-r9}\n\t"              // the weights, reloaded by one LDM a pair
        "ldr r1, [r0, #4]\n\t"             // row_bytes
        "ldr r3, [r0, #20]\n\t"            // init
        "ldr r0, [r0]\n\t"                 // p: words (x_o, x_o+1)
        "mov r2, r0\n\t"
        "1:\n\t"
        "ldm sp, {r4-r9}\n\t"
        "ldrd r10, r11, [r0], #4\n\t"    // (x_o, x_o+1), (x_o+2, x_o+3): r2 = x_o, r0 = x_o+2
        "smlad r12, r10, r4, r3\n\t"
        "smlatb lr, r10, r4, r3\n\t"
        PAIR3X3_REST_TAPS_AT("r2", "r0")
        "adds r2, #4\n\t"
        "ldr r11, [sp, #24]\n\t"
        "add r10, r11, #48\n\t"
        "ldm r10, {r4-r9}\n\t"             // m k right lo2 mn mx
        "cmp r12, r8\n\t"
        "blt 5f\n\t"
        "2:\n\t"
        "cmp r12, r9\n\t"
        "bgt 6f\n\t"
        "3:\n\t"
        "cmp lr, r8\n\t"
        "blt 7f\n\t"
        "4:\n\t"
        "cmp lr, r9\n\t"
        "bgt 8f\n\t"
        "9:\n\t"
        "smmla r12, r12, r4, r5\n\t"
        "smmla lr, lr, r4, r5\n\t"
        "asr r12, r12, r6\n\t"
        "asr lr, lr, r6\n\t"
        "ssat r12, #8, r12\n\t"
        "ssat lr, #8, lr\n\t"
        "pkhbt r12, r12, lr, lsl #16\n\t"
        "ssub16 r10, r12, r7\n\t"
        "sel r12, r12, r7\n\t"
        "ldrd r8, r9, [r11, #12]\n\t"      // out, col_bytes
        "strb r12, [r8]\n\t"
        "lsr r12, r12, #16\n\t"
        "strb r12, [r8, r9]\n\t"
        "add r8, r8, r9, lsl #1\n\t"
        "str r8, [r11, #12]\n\t"
        "ldr r10, [r11, #8]\n\t"
        "cmp r0, r10\n\t"
        "bne 1b\n\t"
        "add sp, sp, #28\n\t"
        "pop {r4-r11, pc}\n\t"
        "5:\n\t"
        "mov r8, r12\n\t"
        "str r8, [r11, #64]\n\t"
        "b 2b\n\t"
        "6:\n\t"
        "mov r9, r12\n\t"
        "str r9, [r11, #68]\n\t"
        "b 3b\n\t"
        "7:\n\t"
        "mov r8, lr\n\t"
        "str r8, [r11, #64]\n\t"
        "b 4b\n\t"
        "8:\n\t"
        "mov r9, lr\n\t"
        "str r9, [r11, #68]\n\t"
        "b 9b\n\t");
}
#undef MT_ARG
#endif

// correlate + requant_run for one channel's band; 3x3 filters at unit column stride take
// fused3x3_pairs on Cortex-M4 when the constants allow its fast form.
static void correlate_requant(const int16_t *pl, int wa, int sh, int sw, const int16_t *w, int kh,
    int kw, int kwp, int rows, int cols, int32_t *acc, int32_t init, const mt_s8_rq_t *rq,
    int32_t zp, int32_t lo, int32_t hi, int32_t *mm, int8_t *out, size_t row_bytes,
    size_t col_bytes) {
#if MT_S8_DSP
    if (kh == 3 && kw == 3 && sw == 1 && cols >= 2 && hi == 127 && rq->left == 0
        && rq->right >= 1 && rq->right <= 23) {
        fused3x3_t a;
        a.row_bytes = wa * 2;
        a.col_bytes = (int32_t)col_bytes;
        a.init = init;
        for (int i = 0; i < 3; i++) {
            a.w[2 * i] = load2(w + 4 * i);
            a.w[2 * i + 1] = load2(w + 4 * i + 1);
        }
        a.m = rq->m;
        a.k = mt_s8_rq_c(rq->right, zp);
        a.right = rq->right;
        a.lo2 = mt_s8_pair(lo);
        a.mn = mm[0];
        a.mx = mm[1];
        const int pairs = cols / 2;
        for (int r = 0; r < rows; r++, out += row_bytes) {
            a.p = pl + (size_t)r * sh * wa;
            a.end = a.p + 2 * pairs;
            a.out = out;
            fused3x3_pairs(&a);
            if (cols & 1) {
                const int16_t *t = a.p + cols - 1;
                int32_t s0 = __smuad(load2(t), a.w[0]);
                s0 = __smlabt(load2(t + 2), a.w[1], s0);
                s0 = __smlad(load2(t + wa), a.w[2], s0);
                s0 = __smlabt(load2(t + wa + 2), a.w[3], s0);
                s0 = __smlad(load2(t + 2 * wa), a.w[4], s0);
                acc[0] = __smlabt(load2(t + 2 * wa + 2), a.w[5], s0);
                int32_t tail_mm[2] = { a.mn, a.mx };
                requant_fast(acc, 1, 1, init, a.m, a.k, a.right, lo, hi, tail_mm, a.out, 0,
                    col_bytes);
                a.mn = tail_mm[0];
                a.mx = tail_mm[1];
            }
        }
        mm[0] = a.mn;
        mm[1] = a.mx;
        return;
    }
#endif
    correlate(pl, wa, sh, sw, w, kh, kw, kwp, rows, cols, acc);
    requant_run(acc, rows, cols, init, rq, zp, lo, hi, mm, out, row_bytes, col_bytes);
}

static int make_rq(const mt_conv2d_params_t *p, float num, float den, const float *w_scale,
    mt_s8_rq_t *rq, int32_t *mm) {
    for (int c = 0; c < p->in_c; c++) {
        if (mt_s8_rq_from_real((num * w_scale[c]) / den, &rq[c])) {
            return -1;
        }
        mm[2 * c] = INT32_MAX;
        mm[2 * c + 1] = INT32_MIN;
    }
    return 0;
}

// ---- forward ------------------------------------------------------------------------------

int mt_depthwise_s8_forward(const mt_conv2d_params_t *layer, const mt_s8_quant_t *q,
    const int8_t *x, const int8_t *w, const float *w_scale, const int32_t *bias, int8_t *y,
    mt_range_t *y_range, void *scratch) {
    const view_t vw = view_of(layer);
    const mt_conv2d_params_t *p = &vw.v;
    const geom_t g = geom(p, PASS_FORWARD);
    dw_scratch_t s;
    layout(p, PASS_FORWARD, &g, scratch, &s);
    if (make_rq(p, q->x.scale, q->y.scale, w_scale, s.rq, s.mm)) {
        return -1;
    }
    const int C = p->in_c, kh = p->kernel_h, wrow = kh * g.kwp, taps = taps_of(p);
    const size_t stride = (size_t)plane_rows(p, PASS_FORWARD, g.rows) * g.wa;
    memset(s.plane, 0, GROUP * stride * sizeof(int16_t));
    for (int c0 = 0; c0 < C; c0 += GROUP) {
        const int nch = C - c0 < GROUP ? C - c0 : GROUP;
        widen_weights(&vw, w + c0 * taps, nch, g.kwp, 0, s.wq);
        for (int n = 0; n < p->batch; n++) {
            for (int oh = 0; oh < g.height; oh += g.rows) {
                const int rows = g.height - oh < g.rows ? g.height - oh : g.rows;
                const int prow = plane_rows(p, PASS_FORWARD, rows);
                gather_x(&vw, x, n, c0, nch, oh * p->stride_h, prow, q->x.zero_point, &g, stride,
                    s.plane);
                int8_t *out = y + (size_t)n * p->out_h * p->out_w * C + oh * vw.y_row + c0;
                for (int ch = 0; ch < nch; ch++) {
                    const int c = c0 + ch;
                    correlate_requant(s.plane + ch * stride, g.wa, p->stride_h, p->stride_w,
                        s.wq + ch * wrow, kh, p->kernel_w, g.kwp, rows, g.cols, s.acc,
                        bias ? bias[c] : 0, &s.rq[c], q->y.zero_point, q->act_min, q->act_max,
                        &s.mm[2 * c], out + ch, vw.y_row, vw.y_col);
                }
            }
        }
    }
    if (y_range) {
        mt_s8_fold_range(C, s.mm, 2, q->x.scale, w_scale, y_range);
    }
    return 0;
}

// ---- input gradient -----------------------------------------------------------------------

int mt_depthwise_s8_grad_input(const mt_conv2d_params_t *layer, const mt_s8_quant_t *q,
    const int8_t *dy, const int8_t *w, const float *w_scale, int8_t *dx, float *dx_absmax,
    void *scratch) {
    const view_t vw = view_of(layer);
    const mt_conv2d_params_t *p = &vw.v;
    const geom_t g = geom(p, PASS_GRAD_INPUT);
    dw_scratch_t s;
    layout(p, PASS_GRAD_INPUT, &g, scratch, &s);
    if (make_rq(p, q->dy_scale, q->dx_scale, w_scale, s.rq, s.mm)) {
        return -1;
    }
    const int C = p->in_c, kh = p->kernel_h, wrow = kh * g.kwp, taps = taps_of(p);
    const size_t stride = (size_t)plane_rows(p, PASS_GRAD_INPUT, g.rows) * g.wa;
    memset(s.plane, 0, GROUP * stride * sizeof(int16_t));
    for (int c0 = 0; c0 < C; c0 += GROUP) {
        const int nch = C - c0 < GROUP ? C - c0 : GROUP;
        widen_weights(&vw, w + c0 * taps, nch, g.kwp, 1, s.wq);
        for (int n = 0; n < p->batch; n++) {
            for (int ih = 0; ih < g.height; ih += g.rows) {
                const int rows = g.height - ih < g.rows ? g.height - ih : g.rows;
                const int prow = plane_rows(p, PASS_GRAD_INPUT, rows);
                gather_dy_dilated(&vw, dy, n, c0, nch, ih, prow, &g, stride, s.plane);
                int8_t *out = dx + (size_t)n * p->in_h * p->in_w * C + ih * vw.x_row + c0;
                for (int ch = 0; ch < nch; ch++) {
                    const int c = c0 + ch;
                    correlate_requant(s.plane + ch * stride, g.wa, 1, 1, s.wq + ch * wrow, kh,
                        p->kernel_w, g.kwp, rows, g.cols, s.acc, 0, &s.rq[c], 0, -MT_S8_SYM_MAX,
                        MT_S8_SYM_MAX, &s.mm[2 * c], out + ch, vw.x_row, vw.x_col);
                }
            }
        }
    }
    if (dx_absmax) {
        float m = 0.0f;
        for (int c = 0; c < C; c++) {
            if (s.mm[2 * c] > s.mm[2 * c + 1]) {
                continue;
            }
            const float unit = q->dy_scale * w_scale[c];
            const float lo = -((float)s.mm[2 * c] * unit), hi = (float)s.mm[2 * c + 1] * unit;
            m = lo > m ? lo : m;
            m = hi > m ? hi : m;
        }
        *dx_absmax = m;
    }
    return 0;
}

// ---- update -------------------------------------------------------------------------------

// Plane rows [oh0, oh0 + rows) of dy, owp halfwords a row (a zero column pads an odd out_w).
static void gather_dy(const view_t *vw, const int8_t *dy, int n, int c0, int nch,
    int oh0, int rows, const geom_t *g, int16_t *plane) {
    const mt_conv2d_params_t *p = &vw->v;
    const size_t stride = (size_t)g->rows * g->owp;
    const int8_t *image = dy + (size_t)n * p->out_h * p->out_w * p->out_c + c0;
    for (int r = 0; r < rows; r++) {
        gather_row(image + (oh0 + r) * vw->y_row, p->out_w, vw->y_col, nch, 1, 0, 0,
            plane + (size_t)r * g->owp, stride, g->owp);
    }
}

#if MT_S8_DSP
// One plane row's contribution to a 3-wide kernel row's tap sums s[0..2] at unit column
// stride: pixel pairs (x_o, x_o+1), (x_o+1, x_o+2) and (x_o+2, x_o+3) against (dy_o, dy_o+1),
// the last word the next pair's first; two pairs a turn (16 instructions for 6 SMLADs,
// against 20 a pair at a time). with_sum also adds the row's dy to *bsum.
static inline __attribute__((always_inline)) void row3_sums(const int16_t *xr, const int16_t *d,
    int owp, int32_t s[3], int32_t *bsum, int with_sum) {
    int32_t s0 = s[0], s1 = s[1], s2 = s[2], b = *bsum;
    const int16_t *const dend = d + (owp & ~3);
    int32_t k = load2(xr);
    for (; d != dend; d += 4, xr += 4) {
        const int32_t d0 = load2(d), d1 = load2(d + 2);
        const int32_t n1 = load2(xr + 2), n2 = load2(xr + 4);
        s0 = __smlad(k, d0, s0);
        s1 = __smlad(load2(xr + 1), d0, s1);
        s2 = __smlad(n1, d0, s2);
        s0 = __smlad(n1, d1, s0);
        s1 = __smlad(load2(xr + 3), d1, s1);
        s2 = __smlad(n2, d1, s2);
        if (with_sum) {
            b = __smlad(d0, 0x00010001, b);
            b = __smlad(d1, 0x00010001, b);
        }
        k = n2;
    }
    if (owp & 2) {
        const int32_t dd = load2(d);
        s0 = __smlad(k, dd, s0);
        s1 = __smlad(load2(xr + 1), dd, s1);
        s2 = __smlad(load2(xr + 2), dd, s2);
        if (with_sum) {
            b = __smlad(dd, 0x00010001, b);
        }
    }
    s[0] = s0;
    s[1] = s1;
    s[2] = s2;
    *bsum = b;
}
#endif

// sum[t] += sum over the band of dy * x under the layer's tap t; returns the band's sum of dy.
static int32_t tap_sums(const view_t *vw, const geom_t *g, const int16_t *xp,
    const int16_t *dp, int rows, int32_t *sum) {
    const mt_conv2d_params_t *p = &vw->v;
    const int kh = p->kernel_h, kw = p->kernel_w, sh = p->stride_h, sw = p->stride_w;
    // sum[i * ti + j * tj]: the layer's tap (i, j) of the view's (j, i) when transposed.
    const int ti = vw->transposed ? 1 : kw, tj = vw->transposed ? kh : 1;
    const int wa = g->wa, owp = g->owp;
    int32_t bsum = 0;
#if MT_S8_DSP
    if (sw == 1 && kw == 3) {
        // Kernel row 0 also sums dy (one more SMLAD a pair, not a loop of its own).
        for (int i = 0; i < kh; i++) {
            int32_t s[3] = { 0, 0, 0 };
            for (int r = 0; r < rows; r++) {
                const int16_t *xr = xp + (size_t)(r * sh + i) * wa, *d = dp + (size_t)r * owp;
                if (i == 0) {
                    row3_sums(xr, d, owp, s, &bsum, 1);
                } else {
                    row3_sums(xr, d, owp, s, &bsum, 0);
                }
            }
            sum[i * ti] += s[0];
            sum[i * ti + tj] += s[1];
            sum[i * ti + 2 * tj] += s[2];
        }
        return bsum;
    }
    for (int r = 0; r < rows; r++) {
        const int16_t *d = dp + (size_t)r * owp;
        for (int o = 0; o < owp; o += 2) {
            bsum = __smlad(load2(d + o), 0x00010001, bsum);
        }
    }
    for (int i = 0; i < kh; i++) {
        for (int j = 0; j < kw; j++) {
            int32_t t = 0;
            for (int r = 0; r < rows; r++) {
                const int16_t *xr = xp + (size_t)(r * sh + i) * wa + j, *d = dp + (size_t)r * owp;
                if (sw == 1) {
                    for (int o = 0; o < owp; o += 2) {
                        t = __smlad(load2(xr + o), load2(d + o), t);
                    }
                } else {
                    for (int o = 0; o < p->out_w; o++) {
                        t += xr[o * sw] * d[o];
                    }
                }
            }
            sum[i * ti + j * tj] += t;
        }
    }
#else
    for (int r = 0; r < rows; r++) {
        const int16_t *d = dp + (size_t)r * owp;
        for (int o = 0; o < p->out_w; o++) {
            bsum += d[o];
        }
    }
    if (kw == 3) {
        // A kernel row's three sums at once: one load of dy for three products.
        for (int i = 0; i < kh; i++) {
            int32_t s0 = 0, s1 = 0, s2 = 0;
            for (int r = 0; r < rows; r++) {
                const int16_t *xr = xp + (size_t)(r * sh + i) * wa, *d = dp + (size_t)r * owp;
                for (int o = 0; o < p->out_w; o++, xr += sw) {
                    const int32_t dd = d[o];
                    s0 += dd * xr[0];
                    s1 += dd * xr[1];
                    s2 += dd * xr[2];
                }
            }
            sum[i * ti] += s0;
            sum[i * ti + tj] += s1;
            sum[i * ti + 2 * tj] += s2;
        }
        return bsum;
    }
    for (int i = 0; i < kh; i++) {
        for (int j = 0; j < kw; j++) {
            int32_t t = 0;
            for (int r = 0; r < rows; r++) {
                const int16_t *xr = xp + (size_t)(r * sh + i) * wa + j, *d = dp + (size_t)r * owp;
                for (int o = 0; o < p->out_w; o++) {
                    t += xr[o * sw] * d[o];
                }
            }
            sum[i * ti + j * tj] += t;
        }
    }
#endif
    return bsum;
}

int mt_depthwise_s8_update(const mt_conv2d_params_t *layer, const mt_s8_quant_t *q,
    const mt_s8_update_t *u, const int8_t *x, const int8_t *dy, int8_t *w, float *w_scale,
    int32_t *bias, const uint8_t *mask, mt_grad_stats_t *w_stats, mt_grad_stats_t *b_stats,
    void *scratch, size_t scratch_bytes) {
    const view_t vw = view_of(layer);
    const mt_conv2d_params_t *p = &vw.v;
    const geom_t g = geom(p, PASS_UPDATE);
    dw_scratch_t s;
    if (layout(p, PASS_UPDATE, &g, scratch, &s) > scratch_bytes) {
        return -1;
    }
    const int C = p->in_c, taps = taps_of(p);
    const size_t stride = (size_t)plane_rows(p, PASS_UPDATE, g.rows) * g.wa;
    memset(s.plane, 0, GROUP * stride * sizeof(int16_t));
    memset(s.dplane, 0, (size_t)GROUP * g.rows * g.owp * sizeof(int16_t));
    mt_s8_step_t step;
    if (u) {
        step = mt_s8_step_make(u, q);
    }
    int32_t bsum[GROUP];
    for (int c0 = 0; c0 < C; c0 += GROUP) {
        const int nch = C - c0 < GROUP ? C - c0 : GROUP;
        int any = 0;
        for (int ch = 0; ch < nch; ch++) {
            any |= !mask || mask[c0 + ch];
            bsum[ch] = 0;
        }
        if (!any) {
            continue;
        }
        memset(s.acc, 0, (size_t)GROUP * taps * sizeof(int32_t));
        for (int n = 0; n < p->batch; n++) {
            for (int oh = 0; oh < g.height; oh += g.rows) {
                const int rows = g.height - oh < g.rows ? g.height - oh : g.rows;
                const int prow = plane_rows(p, PASS_UPDATE, rows);
                gather_x(&vw, x, n, c0, nch, oh * p->stride_h, prow, q->x.zero_point, &g, stride,
                    s.plane);
                gather_dy(&vw, dy, n, c0, nch, oh, rows, &g, s.dplane);
                for (int ch = 0; ch < nch; ch++) {
                    if (mask && !mask[c0 + ch]) {
                        continue;
                    }
                    bsum[ch] += tap_sums(&vw, &g, s.plane + ch * stride,
                        s.dplane + (size_t)ch * g.rows * g.owp, rows, s.acc + ch * taps);
                }
            }
        }
        for (int ch = 0; ch < nch; ch++) {
            const int c = c0 + ch;
            if (mask && !mask[c]) {
                continue;
            }
            int32_t *row = s.acc + ch * taps;
            if (b_stats) {
                mt_grad_stats_add(b_stats, &bsum[ch], 1);
            }
            if (u) {
                mt_s8_update_row(u, &step, taps, row, w + c * taps, &w_scale[c],
                    bias ? &bias[c] : NULL, bsum[ch], w_stats);
            } else if (w_stats) {
                mt_grad_stats_add(w_stats, row, taps);
            }
        }
    }
    return 0;
}
