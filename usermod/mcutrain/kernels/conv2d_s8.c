// int8 Conv2d: forward, input gradient and fused update (conv2d_s8.h), as int16-panel GEMMs
// (gemm_s8.h); depthwise layers go to depthwise_s8.c.
//
//   forward     rows = output pixels (im2col of 3 pixels at a time), columns = output
//               channels (the weights, packed once per call), k = the patch;
//   grad_input  rows = input pixels (a gather of dy over the taps that reach each pixel, so
//               no int32 image of dx is needed), columns = input channels (the transposed,
//               rescaled weights), k = (tap, output channel);
//   update      rows = a block of output channels (dy transposed), columns = pairs of
//               consecutive weights of a channel's row, k = output pixels in order. The
//               columns come from a copy of x transposed to channel-pair-major rows ("xp",
//               the size of the padded input), where an output row's pixels are contiguous
//               for every tap.
#include <string.h>
#include "conv2d_s8.h"
#include "depthwise_s8.h"
#include "gemm_s8.h"
#include "s8_common.h"
#include "checked_size.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

// Output pixels per update tile.
#define UPDATE_TILE_SLOTS 128

static int taps_of(const mt_conv2d_params_t *p) {
    return p->kernel_h * p->kernel_w;
}

static int out_pixels(const mt_conv2d_params_t *p) {
    return p->batch * p->out_h * p->out_w;
}

static int in_pixels(const mt_conv2d_params_t *p) {
    return p->batch * p->in_h * p->in_w;
}

static int round_up(int v, int m) {
    return (v + m - 1) / m * m;
}

// Scratch is carved into 8-byte aligned regions; with a NULL base it only counts bytes,
// saturating at MT_SIZE_OVERFLOW (checked_size.h) for a layer too large to plan.
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

// ---- patches ----------------------------------------------------------------------------

// Output pixel q's patch: its image, top-left input pixel, and the kernel columns
// [kw_lo, kw_hi) inside the image.
typedef struct {
    int image;
    int ih0, iw0, kw_lo, kw_hi;
} patch_t;

static patch_t patch_of(const mt_conv2d_params_t *p, int q) {
    const int per_image = p->out_h * p->out_w, r = q % per_image;
    patch_t t;
    t.image = q / per_image;
    t.ih0 = r / p->out_w * p->stride_h - p->pad_h;
    t.iw0 = r % p->out_w * p->stride_w - p->pad_w;
    t.kw_lo = mt_s8_max(0, -t.iw0);
    t.kw_hi = mt_s8_min(p->kernel_w, p->in_w - t.iw0);
    return t;
}

// dst[0..K) = the patch of group g under output pixel q, `pad` where it leaves the image.
static void im2col_pixel(const mt_conv2d_params_t *p, const int8_t *x, int q, int g, int8_t pad,
    int8_t *dst) {
    const int in_c = p->in_c, cg = in_c / p->groups, kw = p->kernel_w, row_len = kw * cg;
    const patch_t pt = patch_of(p, q);
    const int8_t *image = x + (size_t)pt.image * p->in_h * p->in_w * in_c + g * cg;
    for (int i = 0; i < p->kernel_h; i++, dst += row_len) {
        const int ih = pt.ih0 + i;
        if (ih < 0 || ih >= p->in_h || pt.kw_lo >= pt.kw_hi) {
            memset(dst, pad, (size_t)row_len);
            continue;
        }
        const int8_t *src = image + ((size_t)ih * p->in_w + pt.iw0 + pt.kw_lo) * in_c;
        memset(dst, pad, (size_t)(pt.kw_lo * cg));
        if (cg == in_c) {
            memcpy(dst + pt.kw_lo * cg, src, (size_t)((pt.kw_hi - pt.kw_lo) * cg));
        } else {
            for (int j = pt.kw_lo; j < pt.kw_hi; j++, src += in_c) {
                memcpy(dst + j * cg, src, (size_t)cg);
            }
        }
        memset(dst + pt.kw_hi * cg, pad, (size_t)((kw - pt.kw_hi) * cg));
    }
}

// Output index o (< out) with o * stride == v, or -1.
static int exact_out(int v, int stride, int out) {
    if (v < 0 || v % stride) {
        return -1;
    }
    v /= stride;
    return v < out ? v : -1;
}

// dst[(t * og) .. + og) = dy of group g at the output pixel that tap t of input pixel q
// reaches, zeros where no output pixel does.
static void gather_dy_pixel(const mt_conv2d_params_t *p, const int8_t *dy, int q, int g,
    int8_t *dst) {
    const int per_image = p->in_h * p->in_w, n = q / per_image, r = q % per_image;
    const int ih = r / p->in_w, iw = r % p->in_w, og = p->out_c / p->groups;
    for (int i = 0; i < p->kernel_h; i++) {
        const int oh = exact_out(ih + p->pad_h - i, p->stride_h, p->out_h);
        for (int j = 0; j < p->kernel_w; j++, dst += og) {
            const int ow = oh < 0 ? -1 : exact_out(iw + p->pad_w - j, p->stride_w, p->out_w);
            if (ow < 0) {
                memset(dst, 0, (size_t)og);
            } else {
                memcpy(dst, dy + (((size_t)n * p->out_h + oh) * p->out_w + ow) * p->out_c + g * og,
                    (size_t)og);
            }
        }
    }
}

// The patch of output pixel q (group g) minus zp as one panel row (words dst[0], dst[stride],
// ...), straight from x: needs in_c / groups to be a multiple of 4, so that every tap's run
// starts a group of 4 in the row.
static inline void pack_patch(const mt_conv2d_params_t *p, const int8_t *x, int q, int g, int32_t zp,
    int kp, int32_t *dst, int stride) {
    const int in_c = p->in_c, cg = in_c / p->groups, kw = p->kernel_w, row_len = kw * cg;
    const int words = stride * cg / 2;     // words a tap's run advances dst by
    const patch_t pt = patch_of(p, q);
    const int8_t *image = x + (size_t)pt.image * p->in_h * p->in_w * in_c + g * cg;
    for (int i = 0; i < p->kernel_h; i++) {
        const int ih = pt.ih0 + i;
        if (ih < 0 || ih >= p->in_h || pt.kw_lo >= pt.kw_hi) {
            mt_pack_zero_run(row_len, dst, stride);
            dst += kw * words;
            continue;
        }
        const int8_t *src = image + ((size_t)ih * p->in_w + pt.iw0 + pt.kw_lo) * in_c;
        mt_pack_zero_run(pt.kw_lo * cg, dst, stride);
        dst += pt.kw_lo * words;
        if (cg == in_c) {
            const int n = (pt.kw_hi - pt.kw_lo) * cg;
            mt_s8_pack_run(src, n, zp, dst, stride);
            dst += (pt.kw_hi - pt.kw_lo) * words;
        } else {
            for (int j = pt.kw_lo; j < pt.kw_hi; j++, src += in_c, dst += words) {
                mt_s8_pack_run(src, cg, zp, dst, stride);
            }
        }
        mt_pack_zero_run((kw - pt.kw_hi) * cg, dst, stride);
        dst += (kw - pt.kw_hi) * words;
    }
    mt_pack_zero_run(kp - p->kernel_h * row_len, dst, stride);
}

// The gather of gather_dy_pixel as one panel row, straight from dy (og a multiple of 4).
static inline void pack_dy_pixel(const mt_conv2d_params_t *p, const int8_t *dy, int q, int g, int kp,
    int32_t *dst, int stride) {
    const int per_image = p->in_h * p->in_w, n = q / per_image, r = q % per_image;
    const int ih = r / p->in_w, iw = r % p->in_w, og = p->out_c / p->groups;
    const int words = stride * og / 2, kw = p->kernel_w;
    const int8_t *image = dy + (size_t)n * p->out_h * p->out_w * p->out_c + g * og;
    const int unit = p->stride_h == 1 && p->stride_w == 1;
    for (int i = 0; i < p->kernel_h; i++) {
        const int oh = unit ? (ih + p->pad_h - i < p->out_h ? ih + p->pad_h - i : -1)
            : exact_out(ih + p->pad_h - i, p->stride_h, p->out_h);
        if (oh < 0) {
            mt_pack_zero_run(kw * og, dst, stride);
            dst += kw * words;
            continue;
        }
        const int8_t *row = image + (size_t)oh * p->out_w * p->out_c;
        for (int j = 0; j < kw; j++, dst += words) {
            const int v = iw + p->pad_w - j;
            const int ow = unit ? (v >= 0 && v < p->out_w ? v : -1)
                : exact_out(v, p->stride_w, p->out_w);
            if (ow < 0) {
                mt_pack_zero_run(og, dst, stride);
            } else {
                mt_s8_pack_run(row + (size_t)ow * p->out_c, og, 0, dst, stride);
            }
        }
    }
    mt_pack_zero_run(kp - p->kernel_h * kw * og, dst, stride);
}

// ---- forward epilogue of a full 3x2 block ----------------------------------------------
//
// Per output channel a record {m, k, right, min, max}: requantization by SMMLA (the zero point
// folded into k, see mt_s8_rq_c; needs left == 0 and 1 <= right <= 23) and the channel's
// accumulator range so far.
enum { REC_M, REC_K, REC_RIGHT, REC_MIN, REC_MAX, REC_WORDS };

typedef struct {
    int32_t O;            // output row stride
    int32_t lo, hi;       // fused clamp
    int32_t flags;        // EPI_TRACK | EPI_LO | EPI_HI
} epi_ctx_t;

enum { EPI_TRACK = 1, EPI_LO = 2, EPI_HI = 4 };

#if MT_S8_DSP
#include "gemm_s8_loop.h"
// The epilogue's pieces, on the sums in r4-r9 (rows 0-2 of channel 0 in r4, r6, r8, of
// channel 1 in r5, r7, r9) with r1 = the block's first record:
// the range of three sums of one channel into its record's min and max (r0, r3 scratch);
#define MT_MINMAX(lo_off, a, b, c) \
        "ldrd r0, r3, [r1, #" #lo_off "]\n\t" \
        "cmp " a ", r0\n\t" "it lt\n\t" "movlt r0, " a "\n\t" \
        "cmp " b ", r0\n\t" "it lt\n\t" "movlt r0, " b "\n\t" \
        "cmp " c ", r0\n\t" "it lt\n\t" "movlt r0, " c "\n\t" \
        "cmp " a ", r3\n\t" "it gt\n\t" "movgt r3, " a "\n\t" \
        "cmp " b ", r3\n\t" "it gt\n\t" "movgt r3, " b "\n\t" \
        "cmp " c ", r3\n\t" "it gt\n\t" "movgt r3, " c "\n\t" \
        "strd r0, r3, [r1, #" #lo_off "]\n\t"
// both channels' range (if lr has EPI_TRACK), then the six sums requantized and saturated to
// int8 (r1 ends 20 bytes on, at channel 1's record; r0, r3 scratch, lr kept);
#define MT_EPI_RANGE_RQ \
        "tst lr, #1\n\t" \
        "beq 1f\n\t" \
        MT_MINMAX(12, "r4", "r6", "r8") \
        MT_MINMAX(32, "r5", "r7", "r9") \
        "1:\n\t" \
        "push {lr}\n\t" \
        "ldm r1!, {r0, r3, lr}\n\t" \
        "smmla r4, r4, r0, r3\n\t" "smmla r6, r6, r0, r3\n\t" "smmla r8, r8, r0, r3\n\t" \
        "asr r4, r4, lr\n\t" "asr r6, r6, lr\n\t" "asr r8, r8, lr\n\t" \
        "adds r1, #8\n\t" \
        "ldm r1, {r0, r3, lr}\n\t" \
        "smmla r5, r5, r0, r3\n\t" "smmla r7, r7, r0, r3\n\t" "smmla r9, r9, r0, r3\n\t" \
        "asr r5, r5, lr\n\t" "asr r7, r7, lr\n\t" "asr r9, r9, lr\n\t" \
        "ssat r4, #8, r4\n\t" "ssat r5, #8, r5\n\t" "ssat r6, #8, r6\n\t" \
        "ssat r7, #8, r7\n\t" "ssat r8, #8, r8\n\t" "ssat r9, #8, r9\n\t" \
        "pop {lr}\n\t"
// the activation's bounds, r11 (if lr has EPI_LO) and r12 (EPI_HI).
#define MT_LO(r) "cmp " r ", r11\n\t" "it lt\n\t" "movlt " r ", r11\n\t"
#define MT_HI(r) "cmp " r ", r12\n\t" "it gt\n\t" "movgt " r ", r12\n\t"
#define MT_EPI_CLAMP \
        "tst lr, #2\n\t" \
        "beq 2f\n\t" \
        MT_LO("r4") MT_LO("r5") MT_LO("r6") MT_LO("r7") MT_LO("r8") MT_LO("r9") \
        "2:\n\t" \
        "tst lr, #4\n\t" \
        "beq 3f\n\t" \
        MT_HI("r4") MT_HI("r5") MT_HI("r6") MT_HI("r7") MT_HI("r8") MT_HI("r9") \
        "3:\n\t"

// r0 = acc (6), r1 = two records, r2 = out (row 0, channel 0), r3 = ctx. About 60 instructions
// plus 40 for the range and up to 36 for the clamp, none of them branches in the data path.
#define MT_ARG __attribute__((unused))
__attribute__((naked, noinline))
static void epi_3x2(const int32_t *acc MT_ARG, int32_t *rec MT_ARG, int8_t *out MT_ARG,
    const epi_ctx_t *ctx MT_ARG) {
    __asm__ volatile (
        "push {r4-r11, lr}\n\t"
        "ldm r0, {r4-r9}\n\t"
        "ldm r3, {r10, r11, r12, lr}\n\t"
        MT_EPI_RANGE_RQ
        MT_EPI_CLAMP
        "strb r4, [r2]\n\t" "strb r5, [r2, #1]\n\t" "add r2, r2, r10\n\t"
        "strb r6, [r2]\n\t" "strb r7, [r2, #1]\n\t" "add r2, r2, r10\n\t"
        "strb r8, [r2]\n\t" "strb r9, [r2, #1]\n\t"
        "pop {r4-r11, pc}\n\t");
}

// mt_gemm_s16_3x2_multi and epi_3x2 in one loop, the epilogue straight from the sums'
// registers: block j (B's rows 2j, 2j + 1, each kp long, one after the other) starts its
// six sums from init[2j], init[2j + 1], and its outputs go through the records rec + 10j
// to out + 2j (rows ctx->O apart). Every block must take epi_3x2 (three rows, both channels
// of the fast form). Saves, per block, the sums' store and reload and the call with its
// loop in C (about 30 instructions).
// r0 = kp, r1 = A, r2 = B, r3 = nb (>= 1); stack: init, rec, out, ctx.
__attribute__((naked, noinline))
static void gemm_epi_3x2(int kp MT_ARG, const int32_t *a MT_ARG, const int32_t *b MT_ARG,
    int nb MT_ARG, const int32_t *init MT_ARG, int32_t *rec MT_ARG, int8_t *out MT_ARG,
    const epi_ctx_t *ctx MT_ARG) {
    __asm__ volatile (
        "push {r4-r11, lr}\n\t"
        "sub sp, sp, #16\n\t"            // kp, A, blocks left, B between blocks
        "str r0, [sp, #0]\n\t"
        "str r1, [sp, #4]\n\t"
        "str r3, [sp, #8]\n\t"
        "5:\n\t"
        "ldr r0, [sp, #0]\n\t"
        "ldr r1, [sp, #4]\n\t"
        "ldr r3, [sp, #52]\n\t"          // init (36 bytes pushed + 16 of locals)
        "ldm r3!, {r4, r5}\n\t"
        "str r3, [sp, #52]\n\t"
        "mov r6, r4\n\t"
        "mov r7, r5\n\t"
        "mov r8, r4\n\t"
        "mov r9, r5\n\t"
        MT_GEMM_S8_K_LOOP
        "str r2, [sp, #12]\n\t"
        "ldr r3, [sp, #64]\n\t"          // ctx: O, lo, hi, flags
        "ldm r3, {r10, r11, r12, lr}\n\t"
        "ldr r1, [sp, #56]\n\t"          // rec
        MT_EPI_RANGE_RQ
        "adds r1, #20\n\t"
        "str r1, [sp, #56]\n\t"
        MT_EPI_CLAMP
        "ldr r2, [sp, #60]\n\t"          // out
        "strb r4, [r2]\n\t" "strb r5, [r2, #1]\n\t" "add r3, r2, r10\n\t"
        "strb r6, [r3]\n\t" "strb r7, [r3, #1]\n\t" "add r3, r3, r10\n\t"
        "strb r8, [r3]\n\t" "strb r9, [r3, #1]\n\t"
        "adds r2, #2\n\t"
        "str r2, [sp, #60]\n\t"
        "ldr r2, [sp, #12]\n\t"
        "ldr r3, [sp, #8]\n\t"
        "subs r3, r3, #1\n\t"
        "str r3, [sp, #8]\n\t"
        "bne 5b\n\t"
        "add sp, sp, #16\n\t"
        "pop {r4-r11, pc}\n\t");
}
#undef MT_EPI_CLAMP
#undef MT_HI
#undef MT_LO
#undef MT_EPI_RANGE_RQ
#undef MT_MINMAX
#undef MT_ARG
#else
// The record's fields and the context in locals: the int8 stores to out may alias anything,
// so GCC would otherwise reload and store them around every output.
static void epi_3x2(const int32_t *acc, int32_t *rec, int8_t *out, const epi_ctx_t *ctx) {
    const int32_t flags = ctx->flags, O = ctx->O;
    const int32_t lo = flags & EPI_LO ? ctx->lo : MT_S8_ACT_MIN;
    const int32_t hi = flags & EPI_HI ? ctx->hi : MT_S8_ACT_MAX;
    for (int c = 0; c < 2; c++, rec += REC_WORDS) {
        const int32_t m = rec[REC_M], k = rec[REC_K], right = rec[REC_RIGHT];
        int32_t mn = rec[REC_MIN], mx = rec[REC_MAX];
        for (int r = 0; r < 3; r++) {
            const int32_t v = acc[r * 2 + c];
            mn = mt_s8_min(mn, v);
            mx = mt_s8_max(mx, v);
            const int32_t t = mt_s8_ssat8(mt_s8_rq_zp(v, m, k, right));
            out[r * O + c] = (int8_t)mt_s8_clamp(t, lo, hi);
        }
        if (flags & EPI_TRACK) {
            rec[REC_MIN] = mn;
            rec[REC_MAX] = mx;
        }
    }
}
#endif

// y for up to 3 rows of one output channel from its accumulators (acc[0], acc[2], acc[4]),
// tracking the accumulator range in its record; the general case (any rows, any shift).
static void forward_out(const int32_t *acc, int rows, const mt_s8_rq_t *rq, int32_t zp,
    int32_t lo, int32_t hi, int32_t *rec, int8_t *out, int O) {
    for (int r = 0; r < rows; r++, out += O) {
        const int32_t v = acc[2 * r];
        rec[REC_MIN] = mt_s8_min(rec[REC_MIN], v);
        rec[REC_MAX] = mt_s8_max(rec[REC_MAX], v);
        *out = (int8_t)mt_s8_clamp(mt_s8_rq(v, rq) + zp, lo, hi);
    }
}

// dx for a full 3x2 block (left == 0, 1 <= right <= 23): rec = {m, k, right}, range =
// {min, max} of the accumulators so far, out = row 0, C = row stride.
#if MT_S8_DSP
// On the sums in r4-r9: their range into r10 (min), r11 (max); then, with r0 = m, r1 = k,
// r3 = right, each requantized, saturated and clamped to -127 (r10 = -127 by then).
#define MT_MM(r) "cmp " r ", r10\n\t" "it lt\n\t" "movlt r10, " r "\n\t" \
                 "cmp " r ", r11\n\t" "it gt\n\t" "movgt r11, " r "\n\t"
#define MT_GI_RANGE MT_MM("r4") MT_MM("r5") MT_MM("r6") MT_MM("r7") MT_MM("r8") MT_MM("r9")
#define MT_DX(r) "smmla " r ", " r ", r0, r1\n\t" "asr " r ", " r ", r3\n\t" \
                 "ssat " r ", #8, " r "\n\t" "cmp " r ", r10\n\t" "it lt\n\t" "movlt " r ", r10\n\t"
#define MT_GI_DX MT_DX("r4") MT_DX("r5") MT_DX("r6") MT_DX("r7") MT_DX("r8") MT_DX("r9")
#define MT_ARG __attribute__((unused))
__attribute__((naked, noinline))
static void grad_input_out(const int32_t *acc MT_ARG, const int32_t *rec MT_ARG,
    int8_t *out MT_ARG, int32_t *range_and_C MT_ARG) {
    __asm__ volatile (
        "push {r4-r11, lr}\n\t"
        "ldm r0, {r4-r9}\n\t"
        "ldm r3, {r10, r11, r12}\n\t"      // min, max, C
        MT_GI_RANGE
        "stm r3, {r10, r11}\n\t"
        "ldm r1, {r0, r1, r3}\n\t"         // m, k, right
        "mvn r10, #126\n\t"                 // -127
        MT_GI_DX
        "strb r4, [r2]\n\t" "strb r5, [r2, #1]\n\t" "add r2, r2, r12\n\t"
        "strb r6, [r2]\n\t" "strb r7, [r2, #1]\n\t" "add r2, r2, r12\n\t"
        "strb r8, [r2]\n\t" "strb r9, [r2, #1]\n\t"
        "pop {r4-r11, pc}\n\t");
}

// mt_gemm_s16_3x2 against nb consecutive 2-row blocks of B with grad_input_out after each,
// in one loop, the epilogue straight from the sums' registers: block j's sums start at 0 and
// its dx go to out + 2j. Saves, per block, the sums' store and reload and the calls with
// their loop in C. r0 = kp, r1 = A, r2 = B, r3 = nb (>= 1); stack: rec, out, range_and_C.
__attribute__((naked, noinline))
static void gemm_gi_3x2(int kp MT_ARG, const int32_t *a MT_ARG, const int32_t *b MT_ARG,
    int nb MT_ARG, const int32_t *rec MT_ARG, int8_t *out MT_ARG,
    int32_t *range_and_C MT_ARG) {
    __asm__ volatile (
        "push {r4-r11, lr}\n\t"
        "sub sp, sp, #16\n\t"            // kp, A, blocks left, B between blocks
        "str r0, [sp, #0]\n\t"
        "str r1, [sp, #4]\n\t"
        "str r3, [sp, #8]\n\t"
        "5:\n\t"
        "ldr r0, [sp, #0]\n\t"
        "ldr r1, [sp, #4]\n\t"
        "movs r4, #0\n\t"
        "movs r5, #0\n\t"
        "movs r6, #0\n\t"
        "movs r7, #0\n\t"
        "movs r8, #0\n\t"
        "movs r9, #0\n\t"
        MT_GEMM_S8_K_LOOP
        "str r2, [sp, #12]\n\t"
        "ldr r3, [sp, #60]\n\t"          // range_and_C (36 bytes pushed + 16 of locals)
        "ldm r3, {r10, r11, r12}\n\t"      // min, max, C
        MT_GI_RANGE
        "stm r3, {r10, r11}\n\t"
        "ldr r1, [sp, #52]\n\t"          // rec
        "ldm r1, {r0, r1, r3}\n\t"         // m, k, right
        "mvn r10, #126\n\t"                 // -127
        MT_GI_DX
        "ldr r2, [sp, #56]\n\t"          // out
        "strb r4, [r2]\n\t" "strb r5, [r2, #1]\n\t" "add r3, r2, r12\n\t"
        "strb r6, [r3]\n\t" "strb r7, [r3, #1]\n\t" "add r3, r3, r12\n\t"
        "strb r8, [r3]\n\t" "strb r9, [r3, #1]\n\t"
        "adds r2, #2\n\t"
        "str r2, [sp, #56]\n\t"
        "ldr r2, [sp, #12]\n\t"
        "ldr r3, [sp, #8]\n\t"
        "subs r3, r3, #1\n\t"
        "str r3, [sp, #8]\n\t"
        "bne 5b\n\t"
        "add sp, sp, #16\n\t"
        "pop {r4-r11, pc}\n\t");
}
#undef MT_ARG
#undef MT_GI_DX
#undef MT_DX
#undef MT_GI_RANGE
#undef MT_MM
#else
static void grad_input_out(const int32_t *acc, const int32_t *rec, int8_t *out,
    int32_t *range_and_C) {
    const int C = range_and_C[2];
    for (int i = 0; i < 6; i++) {
        const int32_t v = acc[i];
        range_and_C[0] = mt_s8_min(range_and_C[0], v);
        range_and_C[1] = mt_s8_max(range_and_C[1], v);
        out[(i >> 1) * C + (i & 1)] = (int8_t)mt_s8_max(
            mt_s8_ssat8(mt_s8_rq_zp(v, rec[0], rec[1], rec[2])), -MT_S8_SYM_MAX);
    }
}
#endif

// ---- shared pieces ------------------------------------------------------------------------

// The bytes of the layer's own int8 tensors for `batch` samples: weights, input, output
// and their errors. Kernel scratch grows only up to this (or its smallest layout), so it
// never dominates a small layer's memory.
static size_t layer_bytes(const mt_conv2d_params_t *p, int batch) {
    const size_t in = (size_t)p->in_h * p->in_w * p->in_c;
    const size_t out = (size_t)p->out_h * p->out_w * p->out_c;
    return (size_t)p->out_c * taps_of(p) * (p->in_c / p->groups) + 2 * (size_t)batch * (in + out);
}

// Channel pairs per block of a weight panel of `total` pairs (4 * kp bytes each): as many
// as the layer's bytes at its batch hold (at least one), spread evenly over the blocks.
static int pairs_per_block(const mt_conv2d_params_t *p, int total, int kp) {
    // At least one pair: a layer smaller than one panel row must not make zero blocks
    // (a division by zero below).
    const size_t fit = mt_max_size(layer_bytes(p, p->batch) / (4 * (size_t)kp), 1);
    const int blocks = fit >= (size_t)total ? 1 : (total + (int)fit - 1) / (int)fit;
    return (total + blocks - 1) / blocks;
}

// ---- general: forward ---------------------------------------------------------------------

typedef struct {
    mt_s8_rq_t *rq;       // out_c
    int32_t *rec;         // REC_WORDS * out_c
    int16_t *wpanel;      // one block of channel pairs: pairs blocks of 2 * kp
    int16_t *apanel;      // 3 * kp
    int8_t *stage;        // 3 * K, when patches cannot be packed straight from x
    int32_t *init;        // 2 per pair of the block: the biases
    int32_t *sums;        // 6 per pair of the block: a row of 3x2 blocks
    uint8_t *fast;        // 1 per pair of the block: epi_3x2 takes it
} fwd_scratch_t;

// Patches are packed straight from x when every tap's channel run fills whole groups of 4.
static int fwd_direct(const mt_conv2d_params_t *p) {
    return (p->in_c / p->groups) % 4 == 0;
}

// Otherwise a kernel row at a time when that fills whole groups of 4 and is contiguous in
// x (one group; e.g. a 10x4 first conv on one channel): rows cut by the image's edge go
// through a row of the staging buffer.
static int fwd_by_rows(const mt_conv2d_params_t *p) {
    return !fwd_direct(p) && p->groups == 1 && p->kernel_w * p->in_c % 4 == 0;
}

// The patch of output pixel q minus zp as one panel row (words dst[0], dst[stride], ...),
// a kernel row at a time (fwd_by_rows); stage holds kernel_w * in_c bytes.
static void pack_patch_rows(const mt_conv2d_params_t *p, const int8_t *x, int q, int32_t zp,
    int kp, int32_t *dst, int stride, int8_t *stage) {
    const int C = p->in_c, kw = p->kernel_w, row_len = kw * C;
    const int words = stride * row_len / 2;     // words a kernel row advances dst by
    const patch_t pt = patch_of(p, q);
    const int8_t *image = x + (size_t)pt.image * p->in_h * p->in_w * C;
    for (int i = 0; i < p->kernel_h; i++, dst += words) {
        const int ih = pt.ih0 + i;
        if (ih < 0 || ih >= p->in_h || pt.kw_lo >= pt.kw_hi) {
            mt_pack_zero_run(row_len, dst, stride);
            continue;
        }
        const int8_t *src = image + ((size_t)ih * p->in_w + pt.iw0 + pt.kw_lo) * C;
        if (pt.kw_lo > 0 || pt.kw_hi < kw) {
            memset(stage, (int8_t)zp, (size_t)row_len);
            memcpy(stage + pt.kw_lo * C, src, (size_t)((pt.kw_hi - pt.kw_lo) * C));
            src = stage;
        }
        mt_s8_pack_run(src, row_len, zp, dst, stride);
    }
    mt_pack_zero_run(kp - p->kernel_h * row_len, dst, stride);
}

static size_t fwd_layout(const mt_conv2d_params_t *p, int pairs, void *scratch,
    fwd_scratch_t *s) {
    const int K = taps_of(p) * (p->in_c / p->groups);
    const size_t kp = (size_t)mt_gemm_s8_kpad(K);
    arena_t a = { scratch, 0 };
    s->rq = take(&a, (size_t)p->out_c * sizeof(mt_s8_rq_t));
    s->rec = take(&a, REC_WORDS * (size_t)p->out_c * sizeof(int32_t));
    s->wpanel = take(&a, (size_t)pairs * 2 * kp * sizeof(int16_t));
    s->apanel = take(&a, 3 * kp * sizeof(int16_t));
    s->stage = take(&a, fwd_direct(p) ? 0 : 3 * (size_t)K);
    s->init = take(&a, (size_t)pairs * 2 * sizeof(int32_t));
    s->sums = take(&a, (size_t)pairs * 6 * sizeof(int32_t));
    s->fast = take(&a, (size_t)pairs);
    return a.used;
}

static int fwd_pairs(const mt_conv2d_params_t *p) {
    const int K = taps_of(p) * (p->in_c / p->groups);
    return pairs_per_block(p, (p->out_c / p->groups + 1) / 2, mt_gemm_s8_kpad(K));
}

int mt_conv2d_s8_forward(const mt_conv2d_params_t *p, const mt_s8_quant_t *q, const int8_t *x,
    const int8_t *w, const float *w_scale, const int32_t *bias, int8_t *y, mt_range_t *y_range,
    void *scratch) {
    if (mt_depthwise_s8_applies(p)) {
        return mt_depthwise_s8_forward(p, q, x, w, w_scale, bias, y, y_range, scratch);
    }
    const int pairs = fwd_pairs(p);
    fwd_scratch_t s;
    fwd_layout(p, pairs, scratch, &s);
    const int O = p->out_c, G = p->groups, og = O / G, K = taps_of(p) * (p->in_c / G);
    const int kp = mt_gemm_s8_kpad(K), ogb = (og + 1) / 2, pixels = out_pixels(p);
    const int32_t zp_x = q->x.zero_point, zp_y = q->y.zero_point;
    const int32_t lo = q->act_min, hi = q->act_max;
    for (int o = 0; o < O; o++) {
        if (mt_s8_rq_from_real((q->x.scale * w_scale[o]) / q->y.scale, &s.rq[o])) {
            return -1;
        }
    }
    // Per-channel records for the block epilogue; fast: both channels of a block qualify.
    for (int o = 0; o < O; o++) {
        int32_t *rec = s.rec + REC_WORDS * o;
        rec[REC_M] = s.rq[o].m;
        rec[REC_RIGHT] = s.rq[o].right;
        rec[REC_K] = s.rq[o].right >= 1 && s.rq[o].right <= 23 ? mt_s8_rq_c(s.rq[o].right, zp_y) : 0;
        rec[REC_MIN] = INT32_MAX;
        rec[REC_MAX] = INT32_MIN;
    }
    epi_ctx_t ctx = { O, lo, hi, (y_range ? EPI_TRACK : 0) | (lo > MT_S8_ACT_MIN ? EPI_LO : 0)
                      | (hi < MT_S8_ACT_MAX ? EPI_HI : 0) };
    const int direct = fwd_direct(p), by_rows = fwd_by_rows(p);
    int32_t *apanel = (int32_t *)s.apanel;
    // Blocks of channel pairs, each a pass over the patches: a layer whose packed weights
    // would outgrow its tensors packs them a block at a time.
    for (int g = 0; g < G; g++) {
        for (int cb0 = 0; cb0 < ogb; cb0 += pairs) {
            const int nb = mt_s8_min(pairs, ogb - cb0);
            mt_pack_s8_rows(w + ((size_t)g * og + 2 * cb0) * K, K, mt_s8_min(2 * nb, og - 2 * cb0),
                K, 0, 2, kp, s.wpanel);
            // Each pair's bias as its sums' start, and whether the block epilogue takes it.
            int all_fast = 1;
            for (int cb = cb0; cb < cb0 + nb; cb++) {
                const int o0 = g * og + 2 * cb, cols = mt_s8_min(2, og - 2 * cb);
                s.init[2 * (cb - cb0)] = bias ? bias[o0] : 0;
                s.init[2 * (cb - cb0) + 1] = bias && cols > 1 ? bias[o0 + 1] : 0;
                s.fast[cb - cb0] = cols == 2 && s.rq[o0].left == 0 && s.rq[o0 + 1].left == 0
                    && s.rq[o0].right >= 1 && s.rq[o0].right <= 23
                    && s.rq[o0 + 1].right >= 1 && s.rq[o0 + 1].right <= 23;
                all_fast &= s.fast[cb - cb0];
            }
            (void)all_fast;
            for (int q0 = 0; q0 < pixels; q0 += 3) {
                const int rows = mt_s8_min(3, pixels - q0);
                if (direct) {
                    for (int r = 0; r < 3; r++) {
                        if (r < rows) {
                            pack_patch(p, x, q0 + r, g, zp_x, kp, apanel + r, 3);
                        } else {
                            mt_pack_zero_run(kp, apanel + r, 3);
                        }
                    }
                } else if (by_rows) {
                    for (int r = 0; r < 3; r++) {
                        if (r < rows) {
                            pack_patch_rows(p, x, q0 + r, zp_x, kp, apanel + r, 3, s.stage);
                        } else {
                            mt_pack_zero_run(kp, apanel + r, 3);
                        }
                    }
                } else {
                    for (int r = 0; r < rows; r++) {
                        im2col_pixel(p, x, q0 + r, g, (int8_t)zp_x, s.stage + r * K);
                    }
                    mt_pack_s8_rows(s.stage, K, rows, K, zp_x, 3, kp, s.apanel);
                }
#if MT_S8_DSP
                if (rows == 3 && all_fast) {
                    const int o0 = g * og + 2 * cb0;
                    gemm_epi_3x2(kp, apanel, (const int32_t *)s.wpanel, nb, s.init,
                        s.rec + REC_WORDS * o0, y + (size_t)q0 * O + o0, &ctx);
                    continue;
                }
#endif
                mt_gemm_s16_3x2_multi(kp, apanel, (const int32_t *)s.wpanel, nb, s.init, s.sums);
                const int32_t *acc = s.sums;
                for (int cb = cb0; cb < cb0 + nb; cb++, acc += 6) {
                    const int o0 = g * og + 2 * cb, cols = mt_s8_min(2, og - 2 * cb);
                    int8_t *out = y + (size_t)q0 * O + o0;
                    int32_t *rec = s.rec + REC_WORDS * o0;
                    if (rows == 3 && s.fast[cb - cb0]) {
                        epi_3x2(acc, rec, out, &ctx);
                        continue;
                    }
                    forward_out(acc, rows, &s.rq[o0], zp_y, lo, hi, rec, out, O);
                    if (cols > 1) {
                        forward_out(acc + 1, rows, &s.rq[o0 + 1], zp_y, lo, hi, rec + REC_WORDS,
                            out + 1, O);
                    }
                }
            }
        }
    }
    if (y_range) {
        mt_s8_fold_range(O, s.rec + REC_MIN, REC_WORDS, q->x.scale, w_scale, y_range);
    }
    return 0;
}

// ---- general: input gradient --------------------------------------------------------------

typedef struct {
    int32_t *r;           // out_c
    int16_t *wpanel;      // one block of input-channel pairs: pairs blocks of 2 * kp
    int16_t *apanel;      // 3 * kp
    int8_t *stage;        // 3 * taps * og, when dy cannot be packed straight
} gi_scratch_t;

// dy's gathers are packed straight from dy when each tap's run fills whole groups of 4.
static int gi_direct(const mt_conv2d_params_t *p) {
    return (p->out_c / p->groups) % 4 == 0;
}

static size_t gi_layout(const mt_conv2d_params_t *p, int pairs, void *scratch,
    gi_scratch_t *s) {
    const int K = taps_of(p) * (p->out_c / p->groups);
    const size_t kp = (size_t)mt_gemm_s8_kpad(K);
    arena_t a = { scratch, 0 };
    s->r = take(&a, (size_t)p->out_c * sizeof(int32_t));
    s->wpanel = take(&a, (size_t)pairs * 2 * kp * sizeof(int16_t));
    s->apanel = take(&a, 3 * kp * sizeof(int16_t));
    s->stage = take(&a, gi_direct(p) ? 0 : 3 * (size_t)K);
    return a.used;
}

static int gi_pairs(const mt_conv2d_params_t *p) {
    const int K = taps_of(p) * (p->out_c / p->groups);
    return pairs_per_block(p, (p->in_c / p->groups + 1) / 2, mt_gemm_s8_kpad(K));
}

// Panel of group g's transposed weights for its input channels [c0, c0 + n): row c - c0,
// k = tap * og + o, value w[o][tap][c] * r[o].
static void pack_weights_transposed(const mt_conv2d_params_t *p, const int8_t *w,
    const int32_t *r, int g, int c0, int n, int kp, int16_t *panel) {
    const int og = p->out_c / p->groups, cg = p->in_c / p->groups, taps = taps_of(p);
    const int K = taps * og, blocks = (n + 1) / 2;
    const int8_t *wg = w + (size_t)g * og * taps * cg + c0;
    const int32_t *rg = r + g * og;
    int t = 0, o = 0;
    for (int k = 0; k < kp; k++) {
        const int pos = mt_gemm_s8_pos(k);
        // Row 0 of block 0 at this position; rows 0 and 1 of a block are 2 int16 apart.
        int16_t *dst = panel + (pos >> 1) * 4 + (pos & 1);
        if (k < K) {
            const int8_t *src = wg + ((size_t)o * taps + t) * cg;
            const int32_t ro = rg[o];
            int c = 0;
            for (; c + 2 <= n; c += 2, dst += 2 * kp) {
                dst[0] = (int16_t)(src[c] * ro);
                dst[2] = (int16_t)(src[c + 1] * ro);
            }
            if (c < n) {
                dst[0] = (int16_t)(src[c] * ro);
                dst[2] = 0;
            }
            if (++o == og) {
                o = 0;
                t++;
            }
        } else {
            for (int b = 0; b < blocks; b++, dst += 2 * kp) {
                dst[0] = 0;
                dst[2] = 0;
            }
        }
    }
}

int mt_conv2d_s8_grad_input(const mt_conv2d_params_t *p, const mt_s8_quant_t *q,
    const int8_t *dy, const int8_t *w, const float *w_scale, int8_t *dx, float *dx_absmax,
    void *scratch) {
    if (mt_depthwise_s8_applies(p)) {
        return mt_depthwise_s8_grad_input(p, q, dy, w, w_scale, dx, dx_absmax, scratch);
    }
    const int pairs = gi_pairs(p);
    gi_scratch_t s;
    gi_layout(p, pairs, scratch, &s);
    const int G = p->groups, C = p->in_c, cg = C / G, og = p->out_c / G;
    const int K = taps_of(p) * og, kp = mt_gemm_s8_kpad(K), cgb = (cg + 1) / 2;
    const int pixels = in_pixels(p), direct = gi_direct(p);
    mt_s8_rq_t rq;
    float unit;
    if (mt_s8_grad_input_fold(K, p->out_c, w_scale, q->dy_scale, q->dx_scale, s.r, &rq, &unit)) {
        return -1;
    }
    int32_t amin = 0, amax = 0;
    const int fast = rq.left == 0 && rq.right >= 1 && rq.right <= 23;
    const int32_t rec[3] = { rq.m, fast ? mt_s8_rq_c(rq.right, 0) : 0, rq.right };
    int32_t range[3] = { 0, 0, C };
    // Blocks of input-channel pairs, each a pass over dy (see the forward).
    for (int g = 0; g < G; g++) {
        for (int cb0 = 0; cb0 < cgb; cb0 += pairs) {
            const int nb = mt_s8_min(pairs, cgb - cb0);
            pack_weights_transposed(p, w, s.r, g, 2 * cb0, mt_s8_min(2 * nb, cg - 2 * cb0), kp,
                s.wpanel);
            for (int q0 = 0; q0 < pixels; q0 += 3) {
                const int rows = mt_s8_min(3, pixels - q0);
                if (direct) {
                    for (int r = 0; r < 3; r++) {
                        if (r < rows) {
                            pack_dy_pixel(p, dy, q0 + r, g, kp, (int32_t *)s.apanel + r, 3);
                        } else {
                            mt_pack_zero_run(kp, (int32_t *)s.apanel + r, 3);
                        }
                    }
                } else {
                    for (int r = 0; r < rows; r++) {
                        gather_dy_pixel(p, dy, q0 + r, g, s.stage + r * K);
                    }
                    mt_pack_s8_rows(s.stage, K, rows, K, 0, 3, kp, s.apanel);
                }
#if MT_S8_DSP
                if (fast && rows == 3 && 2 * (cb0 + nb) <= cg) {
                    gemm_gi_3x2(kp, (const int32_t *)s.apanel, (const int32_t *)s.wpanel, nb, rec,
                        dx + (size_t)q0 * C + g * cg + 2 * cb0, range);
                    continue;
                }
#endif
                const int16_t *wp = s.wpanel;
                for (int cb = cb0; cb < cb0 + nb; cb++, wp += 2 * kp) {
                    const int c0 = g * cg + 2 * cb, cols = mt_s8_min(2, cg - 2 * cb);
                    int32_t acc[6] = { 0, 0, 0, 0, 0, 0 };
                    mt_gemm_s16_3x2(kp, (const int32_t *)s.apanel, (const int32_t *)wp, acc);
                    if (fast && rows == 3 && cols == 2) {
                        grad_input_out(acc, rec, dx + (size_t)q0 * C + c0, range);
                        continue;
                    }
                    for (int r = 0; r < rows; r++) {
                        int8_t *out = dx + (size_t)(q0 + r) * C + c0;
                        for (int c = 0; c < cols; c++) {
                            const int32_t v = acc[r * 2 + c];
                            amin = mt_s8_min(amin, v);
                            amax = mt_s8_max(amax, v);
                            out[c] = (int8_t)mt_s8_clamp(mt_s8_rq(v, &rq), -MT_S8_SYM_MAX,
                                MT_S8_SYM_MAX);
                        }
                    }
                }
            }
        }
    }
    amin = mt_s8_min(amin, range[0]);
    amax = mt_s8_max(amax, range[1]);
    if (dx_absmax) {
        const float a = -(float)amin > (float)amax ? -(float)amin : (float)amax;
        *dx_absmax = a * unit;
    }
    return 0;
}

// ---- general: update --------------------------------------------------------------------
//
// k runs over one sample's output pixels in order, two adjacent pixels to a word (both
// operands pair them the same way, so no permutation is needed), with only the last tile of
// a sample padded to MT_GEMM_S8_KSTEP: short output rows cost no padding slots. The columns
// are consecutive weights of a channel's row (tap-major, then channel) taken two at a time,
// so a single-channel first conv pairs taps instead of padding a channel. x is transposed
// one sample (and group) at a time, so the batch does not shrink the blocks.

// The update's shape: the transposed input's rows and the tiles of output pixels.
typedef struct {
    int cg, cpg;          // channels per group, pairs of them (rounded up)
    int K, Kp;            // weights per output channel; rounded up to even (a column pair)
    int xh, xws;          // xp rows, columns per stride phase
    int pixels;           // output pixels of a sample
    int tile;             // slots per tile, a multiple of MT_GEMM_S8_KSTEP
} upd_shape_t;

static upd_shape_t upd_shape(const mt_conv2d_params_t *p) {
    upd_shape_t u;
    u.cg = p->in_c / p->groups;
    u.cpg = (u.cg + 1) / 2;
    u.K = taps_of(p) * u.cg;
    u.Kp = round_up(u.K, 2);
    u.xh = (p->out_h - 1) * p->stride_h + p->kernel_h;
    u.xws = p->out_w + (p->kernel_w - 1) / p->stride_w;
    u.pixels = p->out_h * p->out_w;
    u.tile = mt_s8_min(round_up(u.pixels, MT_GEMM_S8_KSTEP), UPDATE_TILE_SLOTS);
    return u;
}

typedef struct {
    uint16_t *xp;         // cpg * xh * stride_w * xws channel pairs: one sample of one group
    int32_t *acc;         // block rows of Kp
    int16_t *apanel;      // block / 3 panels of 3 * tile
    int16_t *bpanel;      // 2 * tile
    int32_t *chan;        // block channel indices
    int32_t *bsum;        // block bias gradient sums
} upd_scratch_t;

static size_t upd_xp_pair(const mt_conv2d_params_t *p, const upd_shape_t *u) {
    return (size_t)u->xh * p->stride_w * u->xws;
}

static size_t upd_layout(const mt_conv2d_params_t *p, const upd_shape_t *u, int block,
    void *scratch, upd_scratch_t *s) {
    arena_t a = { scratch, 0 };
    s->xp = take(&a, (size_t)u->cpg * upd_xp_pair(p, u) * sizeof(uint16_t));
    s->acc = take(&a, (size_t)block * u->Kp * sizeof(int32_t));
    s->apanel = take(&a, (size_t)block * u->tile * sizeof(int16_t));
    s->bpanel = take(&a, 2 * (size_t)u->tile * sizeof(int16_t));
    s->chan = take(&a, (size_t)block * sizeof(int32_t));
    s->bsum = take(&a, (size_t)block * sizeof(int32_t));
    return a.used;
}

// xp[pair][xr][phase][col] = channels (2 pair, 2 pair + 1) of group g of sample n at input
// row xr - pad_h, column (col * stride_w + phase) - pad_w, as the two bytes of a halfword;
// zp_x outside the image and for the odd channel's missing partner.
static void build_xp(const mt_conv2d_params_t *p, const upd_shape_t *u, const int8_t *x,
    int n, int g, int8_t zp, uint16_t *xp) {
    const int sw = p->stride_w, C = p->in_c;
    const uint16_t pad = (uint16_t)(((uint16_t)(uint8_t)zp << 8) | (uint8_t)zp);
    const size_t row_step = (size_t)sw * u->xws;   // halfwords from one xp row to the next
    // Phase by phase: a phase's column bounds (two divisions) hold for all its rows.
    for (int ph = 0; ph < sw; ph++) {
        // Columns col with 0 <= col * sw + ph - pad_w < in_w: [lo, hi).
        const int first = p->pad_w - ph;
        const int lo = mt_s8_min(u->xws, first <= 0 ? 0 : (first + sw - 1) / sw);
        const int end = p->in_w + p->pad_w - ph;
        const int hi = mt_s8_max(lo, mt_s8_min(u->xws, end <= 0 ? 0 : (end + sw - 1) / sw));
        for (int cp = 0; cp < u->cpg; cp++) {
            const int c0 = g * u->cg + 2 * cp, has1 = 2 * cp + 1 < u->cg;
            uint16_t *row = xp + (size_t)cp * u->xh * row_step + (size_t)ph * u->xws;
            for (int xr = 0; xr < u->xh; xr++, row += row_step) {
                const int ih = xr - p->pad_h;
                uint16_t *o = row;
                int col = 0;
                if (ih < 0 || ih >= p->in_h) {
                    for (; col < u->xws; col++) {
                        *o++ = pad;
                    }
                    continue;
                }
                for (; col < lo; col++) {
                    *o++ = pad;
                }
                const int8_t *px = x + (((size_t)n * p->in_h + ih) * p->in_w) * C + c0
                    + (size_t)(lo * sw + ph - p->pad_w) * C;
                if (has1) {
                    for (; col < hi; col++, px += sw * C) {
                        *o++ = (uint16_t)mt_s8_load16(px);
                    }
                } else {
                    for (; col < hi; col++, px += sw * C) {
                        *o++ = (uint16_t)((uint8_t)px[0] | (pad & 0xff00u));
                    }
                }
                for (; col < u->xws; col++) {
                    *o++ = pad;
                }
            }
        }
    }
}

// Which bytes of xp's channel pairs a B column pass takes.
enum { COLS_BOTH, COLS_LO, COLS_HI };

#if MT_S8_DSP
static inline uint32_t sxtb16_ror8(uint32_t v) {
    uint32_t r;
    __asm__ ("sxtb16 %0, %1, ror #8" : "=r" (r) : "r" (v));
    return r;
}
#endif

// The words of two adjacent pixels h (low half) and h' (high half) of one channel pair:
// dst[0] = (lo - zp, lo' - zp) and, for COLS_BOTH, dst[1] = (hi - zp, hi' - zp); COLS_HI
// puts the high bytes' word in dst[0].
static inline __attribute__((always_inline)) void cols_emit(uint32_t h2, uint32_t neg,
    int32_t zp, int mode, int32_t *dst) {
#if MT_S8_DSP
    (void)zp;
    if (mode != COLS_HI) {
        dst[0] = (int32_t)__sxtab16(neg, h2);
    }
    if (mode != COLS_LO) {
        dst[mode == COLS_BOTH] = (int32_t)mt_s8_sxtab16_ror8(neg, h2);
    }
#else
    (void)neg;
    if (mode != COLS_HI) {
        dst[0] = mt_s8_words((int16_t)((int8_t)h2 - zp), (int16_t)((int8_t)(h2 >> 16) - zp));
    }
    if (mode != COLS_LO) {
        dst[mode == COLS_BOTH] = mt_s8_words((int16_t)((int8_t)(h2 >> 8) - zp),
            (int16_t)((int8_t)(h2 >> 24) - zp));
    }
#endif
}

// n pairs of adjacent pixels at src into the words dst[0], dst[2], ... (and dst[1], dst[3],
// ... for COLS_BOTH); returns dst advanced past them.
static inline __attribute__((always_inline)) int32_t *cols_pairs(const uint16_t *src, int n,
    uint32_t neg, int32_t zp, int mode, int32_t *dst) {
#if MT_S8_DSP
    if (mode == COLS_BOTH) {
        // Two pairs: 2 LDR (src may be only halfword aligned), 4 SXTAB16, one STM: 9
        // instructions for 8 values.
        __asm__ volatile (
            "lsrs %[n], %[n], #1\n\t"
            "bcc 2f\n\t"
            "ldr r5, [%[src]], #4\n\t"
            "sxtab16 r4, %[neg], r5\n\t"
            "sxtab16 r5, %[neg], r5, ror #8\n\t"
            "stm %[dst]!, {r4, r5}\n\t"
            "2:\n\t"
            "cmp %[n], #0\n\t"
            "beq 3f\n\t"
            "1:\n\t"
            "ldr r6, [%[src], #4]\n\t"
            "ldr r5, [%[src]], #8\n\t"
            "sxtab16 r4, %[neg], r5\n\t"
            "sxtab16 r5, %[neg], r5, ror #8\n\t"
            "sxtab16 r7, %[neg], r6, ror #8\n\t"
            "sxtab16 r6, %[neg], r6\n\t"
            "stm %[dst]!, {r4-r7}\n\t"
            "subs %[n], %[n], #1\n\t"
            "bne 1b\n\t"
            "3:\n\t"
            : [src] "+r" (src), [dst] "+r" (dst), [n] "+r" (n)
            : [neg] "r" (neg)
            : "r4", "r5", "r6", "r7", "cc", "memory");
        return dst;
    }
#endif
    for (int j = 0; j < n; j++, src += 2, dst += 2) {
        uint32_t h2;
        memcpy(&h2, src, sizeof h2);
        cols_emit(h2, neg, zp, mode, dst);
    }
    return dst;
}

// B for one tile: the sample's pixels [q0, q0 + n) of tap (kh, kw) from one channel pair's
// xp rows, as words 0, 2, 4, ... of dst (and 1, 3, 5, ... for COLS_BOTH) up to `slots`
// slots, zeros past n. Every output row is a contiguous run of xp; a pair of pixels may span
// two rows.
static inline __attribute__((always_inline)) void pack_cols_mode(const mt_conv2d_params_t *p,
    const upd_shape_t *u, const uint16_t *xp_pair, int kh, int kw, int q0, int n, int slots,
    int32_t zp, int mode, int32_t *dst) {
    const int sw = p->stride_w, ow_n = p->out_w;
    const size_t row_step = (size_t)p->stride_h * sw * u->xws;
    const uint32_t neg = mt_s8_pair(-zp);
    int32_t *const end = dst + slots;
    int ow = q0 % ow_n;
    // The current output row's pixels start at row + ow.
    const uint16_t *row = xp_pair + ((size_t)kh * sw + kw % sw) * u->xws + kw / sw
        + (size_t)(q0 / ow_n) * row_step;
    // Rows one stride apart and no wider than the output (a 1x1 kernel at stride 1) are one
    // contiguous run.
    const int row_len = row_step == (size_t)ow_n ? n + ow : ow_n;
    uint32_t carry = 0;
    int have = 0;
    if ((row_len & 1) == 0) {
        // Even rows: tiles (multiples of 8 pixels of a sample, which has an even count) start
        // and end on row pairs, so no pair spans two rows.
        for (int left = n; left > 0; left -= row_len - ow, ow = 0, row += row_step) {
            dst = cols_pairs(row + ow, mt_s8_min(row_len - ow, left) >> 1, neg, zp, mode, dst);
        }
        n = 0;
    }
    for (int left = n; left > 0; left -= row_len - ow, ow = 0, row += row_step) {
        const uint16_t *src = row + ow;
        int m = mt_s8_min(row_len - ow, left);
        if (have) {
            cols_emit(carry | (uint32_t)src[0] << 16, neg, zp, mode, dst);
            dst += 2;
            src++;
            m--;
        }
        dst = cols_pairs(src, m >> 1, neg, zp, mode, dst);
        have = m & 1;
        if (have) {
            carry = src[m - 1];
        }
    }
    if (have) {
        // The partner is a padding slot, zero in A: any value will do; zp gives 0.
        cols_emit(carry | (uint32_t)(uint16_t)(uint8_t)zp << 16, neg, zp, mode, dst);
        dst += 2;
    }
    for (; dst < end; dst += 2) {
        dst[0] = 0;
        if (mode == COLS_BOTH) {
            dst[1] = 0;
        }
    }
}

// B panel (2 columns: weights k, k + 1 of a channel's row, k even) over the tile.
static void pack_update_cols(const mt_conv2d_params_t *p, const upd_shape_t *u,
    const uint16_t *xp, int k, int q0, int n, int slots, int32_t zp, int32_t *dst) {
    const size_t xp_pair = upd_xp_pair(p, u);
    for (int col = 0; col < 2; col++) {
        const int kk = k + col;
        if (kk >= u->K) {
            for (int j = 0; j < slots / 2; j++) {
                dst[2 * j + 1] = 0;
            }
            return;
        }
        const int t = kk / u->cg, c = kk % u->cg, kh = t / p->kernel_w, kw = t % p->kernel_w;
        const uint16_t *src = xp + (size_t)(c / 2) * xp_pair;
        if (col == 0 && (c & 1) == 0 && c + 1 < u->cg) {
            // Both weights are one tap's channel pair.
            pack_cols_mode(p, u, src, kh, kw, q0, n, slots, zp, COLS_BOTH, dst);
            return;
        }
        if (c & 1) {
            pack_cols_mode(p, u, src, kh, kw, q0, n, slots, zp, COLS_HI, dst + col);
        } else {
            pack_cols_mode(p, u, src, kh, kw, q0, n, slots, zp, COLS_LO, dst + col);
        }
    }
}

// A panels: dy transposed for the block's channels (3 per panel) over the tile's pixels
// [q0, q0 + n), `slots` slots; zeros past n and for missing channels. Adds each channel's
// sum of dy to bsum.
static void pack_update_dy(const mt_conv2d_params_t *p, const int8_t *dy, const int32_t *chan,
    int nchan, int q0, int n, int slots, int16_t *apanel, int32_t *bsum) {
    const int O = p->out_c, words = slots / 2, rows = (nchan + 2) / 3 * 3;
    int32_t *const panel = (int32_t *)apanel;
    int i = 0;
#if MT_S8_DSP
    // Four consecutive channels of two pixels: 2 LDR, 2 PKH, 4 SXTB16, 4 SXTAB16 (the sums),
    // 4 STR for 8 values, 20 instructions a turn (the C loop this replaces spilled to 39).
    // The sums run in int16 lanes, (c0, c2) and (c1, c3), straight from the loaded words: a
    // tile's at most 256 values of size <= 128 cannot wrap a lane.
    _Static_assert(UPDATE_TILE_SLOTS <= 256, "pack_update_dy's int16 sums");
    for (; i + 4 <= nchan && chan[i + 3] == chan[i] + 3; i += 4) {
        const int8_t *d = dy + (size_t)q0 * O + chan[i];
        int32_t *w[4];
        int32_t s[4];
        for (int t = 0; t < 4; t++) {
            w[t] = panel + (size_t)(i + t) / 3 * 3 * words + (i + t) % 3;
        }
        const int j = n / 2;
        uint32_t s02 = 0, s13 = 0;
        if (j > 0) {
            int32_t *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
            int count = j;
            uint32_t a, b, t;
            __asm__ volatile (
                "1:\n\t"
                "ldr %[b], [%[d], %[O]]\n\t"
                "ldr %[a], [%[d]]\n\t"
                "add %[d], %[d], %[O], lsl #1\n\t"
                "sxtab16 %[s02], %[s02], %[a]\n\t"
                "sxtab16 %[s13], %[s13], %[a], ror #8\n\t"
                "sxtab16 %[s02], %[s02], %[b]\n\t"
                "sxtab16 %[s13], %[s13], %[b], ror #8\n\t"
                "pkhbt %[t], %[a], %[b], lsl #16\n\t"
                "pkhtb %[a], %[b], %[a], asr #16\n\t"
                "sxtb16 %[b], %[t]\n\t"
                "str %[b], [%[w0]], #12\n\t"
                "sxtb16 %[b], %[t], ror #8\n\t"
                "str %[b], [%[w1]], #12\n\t"
                "sxtb16 %[b], %[a]\n\t"
                "str %[b], [%[w2]], #12\n\t"
                "sxtb16 %[b], %[a], ror #8\n\t"
                "str %[b], [%[w3]], #12\n\t"
                "subs %[count], %[count], #1\n\t"
                "bne 1b\n\t"
                : [d] "+r" (d), [count] "+r" (count), [w0] "+r" (w0), [w1] "+r" (w1),
                  [w2] "+r" (w2), [w3] "+r" (w3), [s02] "+r" (s02), [s13] "+r" (s13),
                  [a] "=&r" (a), [b] "=&r" (b), [t] "=&r" (t)
                : [O] "r" (O)
                : "cc", "memory");
        }
        s[0] = (int16_t)s02;
        s[1] = (int16_t)s13;
        s[2] = (int16_t)(s02 >> 16);
        s[3] = (int16_t)(s13 >> 16);
        for (int t = 0; t < 4; t++) {
            int jj = j;
            if (2 * jj < n) {
                s[t] += d[t];
                w[t][3 * jj++] = mt_s8_words(d[t], 0);
            }
            for (; jj < words; jj++) {
                w[t][3 * jj] = 0;
            }
            bsum[i + t] += s[t];
        }
    }
#endif
    for (; i < rows; i++) {
        int32_t *w = panel + (size_t)i / 3 * 3 * words + i % 3;
        int j = 0;
        if (i < nchan) {
            const int8_t *d = dy + (size_t)q0 * O + chan[i];
            int32_t sum = 0;
            for (; 2 * j + 2 <= n; j++, d += 2 * O) {
                sum += d[0] + d[O];
                w[3 * j] = mt_s8_words(d[0], d[O]);
            }
            if (2 * j < n) {
                sum += d[0];
                w[3 * j++] = mt_s8_words(d[0], 0);
            }
            bsum[i] += sum;
        }
        for (; j < words; j++) {
            w[3 * j] = 0;
        }
    }
}

// The largest block (a multiple of 3, at least 3, at most og rounded up) that fits.
static int upd_block(const mt_conv2d_params_t *p, const upd_shape_t *u, size_t scratch_bytes) {
    const int og = p->out_c / p->groups, max_block = round_up(og, 3);
    upd_scratch_t s;
    int block = 3;
    while (block + 3 <= max_block && upd_layout(p, u, block + 3, NULL, &s) <= scratch_bytes) {
        block += 3;
    }
    return block;
}

int mt_conv2d_s8_update(const mt_conv2d_params_t *p, const mt_s8_quant_t *q,
    const mt_s8_update_t *u, const int8_t *x, const int8_t *dy, int8_t *w, float *w_scale,
    int32_t *bias, const uint8_t *mask, mt_grad_stats_t *w_stats, mt_grad_stats_t *b_stats,
    void *scratch, size_t scratch_bytes) {
    if (w_stats) {
        w_stats->sum = w_stats->sum_sq = 0.0f;
        w_stats->count = 0;
    }
    if (b_stats) {
        b_stats->sum = b_stats->sum_sq = 0.0f;
        b_stats->count = 0;
    }
    if (mt_depthwise_s8_applies(p)) {
        return mt_depthwise_s8_update(p, q, u, x, dy, w, w_scale, bias, mask, w_stats, b_stats,
            scratch, scratch_bytes);
    }
    const upd_shape_t sh = upd_shape(p);
    const int block = upd_block(p, &sh, scratch_bytes);
    upd_scratch_t s;
    if (upd_layout(p, &sh, block, scratch, &s) > scratch_bytes) {
        return -1;
    }
    const int G = p->groups, og = p->out_c / G, K = sh.K, Kp = sh.Kp;
    const int32_t zp = q->x.zero_point;
    int xp_img = -1, xp_g = -1;   // whose input xp holds
    mt_s8_step_t step;
    if (u) {
        step = mt_s8_step_make(u, q);
    }
    for (int g = 0; g < G; g++) {
        for (int o_next = g * og; o_next < (g + 1) * og;) {
            // The next block of selected channels of this group.
            int nchan = 0;
            for (; o_next < (g + 1) * og && nchan < block; o_next++) {
                if (!mask || mask[o_next]) {
                    s.chan[nchan++] = o_next;
                }
            }
            if (nchan == 0) {
                continue;
            }
            const int panels = (nchan + 2) / 3;
            for (int i = 0; i < nchan; i++) {
                s.bsum[i] = 0;
            }
            memset(s.acc, 0, (size_t)panels * 3 * Kp * sizeof(int32_t));
            for (int img = 0; img < p->batch; img++) {
                if (img != xp_img || g != xp_g) {
                    build_xp(p, &sh, x, img, g, (int8_t)zp, s.xp);
                    xp_img = img;
                    xp_g = g;
                }
                const int8_t *dy_img = dy + (size_t)img * sh.pixels * p->out_c;
                for (int q0 = 0; q0 < sh.pixels; q0 += sh.tile) {
                    const int n = mt_s8_min(sh.tile, sh.pixels - q0);
                    const int slots = round_up(n, MT_GEMM_S8_KSTEP);
                    pack_update_dy(p, dy_img, s.chan, nchan, q0, n, slots, s.apanel, s.bsum);
                    for (int k = 0; k < K; k += 2) {
                        pack_update_cols(p, &sh, s.xp, k, q0, n, slots, zp, (int32_t *)s.bpanel);
                        mt_gemm_s16_3x2_rows_multi(slots, (const int32_t *)s.apanel,
                            (const int32_t *)s.bpanel, s.acc + k, Kp, panels);
                    }
                }
            }
            for (int i = 0; i < nchan; i++) {
                const int o = s.chan[i];
                int32_t *row = s.acc + (size_t)i * Kp;
                const int32_t bsum = s.bsum[i];
                if (b_stats) {
                    mt_grad_stats_add(b_stats, &bsum, 1);
                }
                if (u) {
                    mt_s8_update_row(u, &step, K, row, w + (size_t)o * K, &w_scale[o],
                        bias ? &bias[o] : NULL, bsum, w_stats);
                } else if (w_stats) {
                    mt_grad_stats_add(w_stats, row, K);
                }
            }
        }
    }
    return 0;
}

// ---- scratch sizes ------------------------------------------------------------------------

size_t mt_conv2d_s8_update_scratch_bytes(const mt_conv2d_params_t *p, int block) {
    if (mt_depthwise_s8_applies(p)) {
        return mt_depthwise_s8_scratch_bytes(p);
    }
    const upd_shape_t sh = upd_shape(p);
    upd_scratch_t s;
    return upd_layout(p, &sh, round_up(mt_s8_max(block, 1), 3), NULL, &s);
}

size_t mt_conv2d_s8_scratch_bytes(const mt_conv2d_params_t *p) {
    if (mt_depthwise_s8_applies(p)) {
        return mt_depthwise_s8_scratch_bytes(p);
    }
    fwd_scratch_t f;
    gi_scratch_t g;
    size_t bytes = fwd_layout(p, fwd_pairs(p), NULL, &f);
    const size_t gi = gi_layout(p, gi_pairs(p), NULL, &g);
    bytes = gi > bytes ? gi : bytes;
    // The update sums a block of channels' weight gradients in int32 (4 bytes a weight) and
    // packs x again for each block. Blocks grow while its scratch stays within the larger
    // of the above and the layer's bytes for one sample: fewer passes over x, but scratch
    // never outgrows the layer. One sample's: neither the sums nor x's copy (one sample at
    // a time) grow with the batch.
    const int og = p->out_c / p->groups;
    const size_t tensors = layer_bytes(p, 1);
    const size_t budget = tensors > bytes ? tensors : bytes;
    int block = 3;
    while (block < og && mt_conv2d_s8_update_scratch_bytes(p, block + 3) <= budget) {
        block += 3;
    }
    const size_t upd = mt_conv2d_s8_update_scratch_bytes(p, block);
    return upd > bytes ? upd : bytes;
}
