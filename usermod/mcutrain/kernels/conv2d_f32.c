// fp32 Conv2d: im2col on tiles of output pixels + GEMM, with direct paths for depthwise
// and pointwise convolutions.
#include "conv2d_f32.h"
#include "gemm_f32.h"
#include "checked_size.h"
#include <stdint.h>

// Thumb-2 with a single-precision FPU (Cortex-M4F/M7/M33): inline asm moves 8 floats per
// vldmia/vstmia where compiled C needs one load or store per float (see gemm_f32.c).
#if defined(__thumb2__) && defined(__ARM_FP) && (__ARM_FP & 4) && defined(__ARM_FEATURE_FMA) \
    && defined(__OPTIMIZE__) && !defined(MCUTRAIN_PORTABLE_KERNELS)
#define MT_CONV_ASM 1
#else
#define MT_CONV_ASM 0
#endif

// im2col works on tiles of at most 64 output pixels and 4096 floats (16 KB), small beside
// the activations of a 256 KB MCU; patches over 1024 floats take the 4-pixel minimum.
#define TILE_FLOATS 4096
#define TILE_ROWS_MIN 4
#define TILE_ROWS_MAX 64

static inline int min_int(int a, int b) {
    return a < b ? a : b;
}

static inline int max_int(int a, int b) {
    return a > b ? a : b;
}

static int is_depthwise(const mt_conv2d_params_t *p) {
    return p->groups == p->in_c && p->out_c == p->in_c;
}

static int is_pointwise(const mt_conv2d_params_t *p) {
    return p->kernel_h == 1 && p->kernel_w == 1 && p->stride_h == 1 && p->stride_w == 1
           && p->pad_h == 0 && p->pad_w == 0 && p->groups == 1;
}

// Length of one im2col row: a patch of one group's input channels.
static int patch_len(const mt_conv2d_params_t *p) {
    return p->kernel_h * p->kernel_w * (p->in_c / p->groups);
}

static int out_pixels(const mt_conv2d_params_t *p) {
    return p->batch * p->out_h * p->out_w;
}

// Output pixels per im2col tile: a multiple of 4 (the GEMM's block height) where possible.
static int tile_rows(const mt_conv2d_params_t *p) {
    int rows = TILE_FLOATS / patch_len(p);
    rows = max_int(TILE_ROWS_MIN, min_int(TILE_ROWS_MAX, rows)) & ~3;
    // In 64 bits: sizing runs before the layer's size checks (a mixed layer's scratch).
    const int64_t pixels = (int64_t)p->batch * p->out_h * p->out_w;
    return pixels < rows ? (int)pixels : rows;
}

// im2col tile floats at the start of scratch (0 for the direct paths).
static size_t tile_floats(const mt_conv2d_params_t *p) {
    if (is_depthwise(p) || is_pointwise(p)) {
        return 0;
    }
    bool overflow = false;  // saturates for a layer too large to plan (checked_size.h)
    return mt_mul_size((size_t)tile_rows(p), (size_t)patch_len(p), &overflow);
}

// Workspace after the tile where the GEMMs pack their operands (gemm_f32.h): pointwise
// convolutions only, enough for their forward (pixels x out_c x in_c), grad_input
// (pixels x in_c x out_c) and grad_weight (out_c x in_c x pixels) products, at most 8 KB.
// A partial update's backward runs with fewer output channels than it was sized for:
// each backward product's need only shrinks with out_c (its k or m).
// A general convolution's scratch is its im2col tile: packing there too would grow the
// layer's (and in a DS-CNN the model's) peak scratch by the workspace.
static size_t pack_floats(const mt_conv2d_params_t *p) {
    if (!is_pointwise(p) || p->batch <= 0) {
        return 0;
    }
    // A run's pixels (pointwise_runs), in 64 bits: sizing runs before the size checks.
    const int64_t pixels = (int64_t)p->batch * p->out_h * p->out_w;
    const int rows = p->out_w == p->in_w && p->out_h == p->in_h
                     ? (int)(pixels < 65536 ? pixels : 65536) : p->out_w;
    const int in_c = p->in_c, out_c = p->out_c;
    size_t f = mt_gemm_f32_pack_floats(rows, out_c, in_c);
    size_t g = mt_gemm_f32_pack_floats(rows, in_c, out_c);
    size_t h = mt_gemm_f32_pack_floats(out_c, in_c, rows);
    f = f > g ? f : g;
    return f > h ? f : h;
}

size_t mt_conv2d_f32_scratch_floats(const mt_conv2d_params_t *p) {
    bool overflow = false;
    return mt_add_size(tile_floats(p), pack_floats(p), &overflow);
}

// ---- float array helpers ------------------------------------------------------------------

// Short runs are common (an im2col row of a 1-channel conv is kernel_w floats): they take
// one 4-float move and single floats, and an empty run returns before any setup.
static void zero_floats(float *dst, int n) {
#if MT_CONV_ASM
    if (n <= 0) {
        return;
    }
    int singles = n & 3, octets = n >> 3, tmp;
    __asm__ volatile (
        "movs %[tmp], #0\n\t"
        "vmov s0, s1, %[tmp], %[tmp]\n\t" "vmov s2, s3, %[tmp], %[tmp]\n\t"
        "cmp %[octets], #0\n\t" "beq 2f\n\t"
        "vmov s4, s5, %[tmp], %[tmp]\n\t" "vmov s6, s7, %[tmp], %[tmp]\n\t"
        "1:\n\t"
        "vstmia %[dst]!, {s0-s7}\n\t"
        "subs %[octets], %[octets], #1\n\t" "bne 1b\n\t"
        "2:\n\t"
        "tst %[n], #4\n\t" "beq 3f\n\t"
        "vstmia %[dst]!, {s0-s3}\n\t"
        "3:\n\t"
        "cmp %[singles], #0\n\t" "beq 5f\n\t"
        "4:\n\t"
        "vstmia %[dst]!, {s0}\n\t"
        "subs %[singles], %[singles], #1\n\t" "bne 4b\n\t"
        "5:\n\t"
        : [dst] "+r" (dst), [singles] "+r" (singles), [octets] "+r" (octets), [tmp] "=&r" (tmp)
        : [n] "r" (n)
        : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "cc", "memory");
#else
    int i = 0;
    for (; i + 4 <= n; i += 4, dst += 4) {
        dst[0] = 0.0f; dst[1] = 0.0f; dst[2] = 0.0f; dst[3] = 0.0f;
    }
    for (; i < n; i++) {
        *dst++ = 0.0f;
    }
#endif
}

static void copy_floats(float *dst, const float *src, int n) {
#if MT_CONV_ASM
    if (n <= 0) {
        return;
    }
    int singles = n & 3, octets = n >> 3;
    __asm__ volatile (
        "cmp %[octets], #0\n\t" "beq 2f\n\t"
        "1:\n\t"
        "vldmia %[src]!, {s0-s7}\n\t" "vstmia %[dst]!, {s0-s7}\n\t"
        "subs %[octets], %[octets], #1\n\t" "bne 1b\n\t"
        "2:\n\t"
        "tst %[n], #4\n\t" "beq 3f\n\t"
        "vldmia %[src]!, {s0-s3}\n\t" "vstmia %[dst]!, {s0-s3}\n\t"
        "3:\n\t"
        "cmp %[singles], #0\n\t" "beq 5f\n\t"
        "4:\n\t"
        "vldmia %[src]!, {s0}\n\t" "vstmia %[dst]!, {s0}\n\t"
        "subs %[singles], %[singles], #1\n\t" "bne 4b\n\t"
        "5:\n\t"
        : [dst] "+r" (dst), [src] "+r" (src), [singles] "+r" (singles), [octets] "+r" (octets)
        : [n] "r" (n)
        : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "cc", "memory");
#else
    int i = 0;
    for (; i + 4 <= n; i += 4, dst += 4, src += 4) {
        const float a = src[0], b = src[1], c = src[2], d = src[3];
        dst[0] = a; dst[1] = b; dst[2] = c; dst[3] = d;
    }
    for (; i < n; i++) {
        *dst++ = *src++;
    }
#endif
}

// rows runs of len floats, src_stride floats apart, to dst, dst_stride floats apart: a
// patch's kernel rows that lie inside the image, in one loop.
static void copy_rows(int rows, int len, const float *src, int src_stride, float *dst,
    int dst_stride) {
#if MT_CONV_ASM
    const int octets = len >> 3, singles = len & 3;
    const int src_skip = (src_stride - len) * 4, dst_skip = (dst_stride - len) * 4;
    int n;
    __asm__ volatile (
        "1:\n\t"
        "movs %[n], %[octets]\n\t" "beq 3f\n\t"
        "2:\n\t"
        "vldmia %[src]!, {s0-s7}\n\t" "vstmia %[dst]!, {s0-s7}\n\t"
        "subs %[n], %[n], #1\n\t" "bne 2b\n\t"
        "3:\n\t"
        "tst %[len], #4\n\t" "beq 4f\n\t"
        "vldmia %[src]!, {s0-s3}\n\t" "vstmia %[dst]!, {s0-s3}\n\t"
        "4:\n\t"
        "movs %[n], %[singles]\n\t" "beq 6f\n\t"
        "5:\n\t"
        "vldmia %[src]!, {s0}\n\t" "vstmia %[dst]!, {s0}\n\t"
        "subs %[n], %[n], #1\n\t" "bne 5b\n\t"
        "6:\n\t"
        "add %[src], %[src], %[src_skip]\n\t" "add %[dst], %[dst], %[dst_skip]\n\t"
        "subs %[rows], %[rows], #1\n\t" "bne 1b\n\t"
        : [src] "+r" (src), [dst] "+r" (dst), [rows] "+r" (rows), [n] "=&r" (n)
        : [octets] "r" (octets), [singles] "r" (singles), [len] "r" (len),
          [src_skip] "r" (src_skip), [dst_skip] "r" (dst_skip)
        : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "cc", "memory");
#else
    for (int r = 0; r < rows; r++, src += src_stride, dst += dst_stride) {
        copy_floats(dst, src, len);
    }
#endif
}

static void add_floats(float *dst, const float *src, int n) {
#if MT_CONV_ASM
    int singles = n & 7, octets = n >> 3;
    __asm__ volatile (
        "cmp %[octets], #0\n\t" "beq 2f\n\t"
        "1:\n\t"
        "vldmia %[dst], {s0-s7}\n\t" "vldmia %[src]!, {s8-s15}\n\t"
        "vadd.f32 s0, s0, s8\n\t" "vadd.f32 s1, s1, s9\n\t"
        "vadd.f32 s2, s2, s10\n\t" "vadd.f32 s3, s3, s11\n\t"
        "vadd.f32 s4, s4, s12\n\t" "vadd.f32 s5, s5, s13\n\t"
        "vadd.f32 s6, s6, s14\n\t" "vadd.f32 s7, s7, s15\n\t"
        "vstmia %[dst]!, {s0-s7}\n\t"
        "subs %[octets], %[octets], #1\n\t" "bne 1b\n\t"
        "2:\n\t"
        "cmp %[singles], #0\n\t" "beq 4f\n\t"
        "3:\n\t"
        "vldr s0, [%[dst]]\n\t" "vldmia %[src]!, {s8}\n\t"
        "vadd.f32 s0, s0, s8\n\t" "vstmia %[dst]!, {s0}\n\t"
        "subs %[singles], %[singles], #1\n\t" "bne 3b\n\t"
        "4:\n\t"
        : [dst] "+r" (dst), [src] "+r" (src), [singles] "+r" (singles), [octets] "+r" (octets)
        :
        : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "s12",
          "s13", "s14", "s15", "cc", "memory");
#else
    int i = 0;
    for (; i + 4 <= n; i += 4, dst += 4, src += 4) {
        dst[0] += src[0]; dst[1] += src[1]; dst[2] += src[2]; dst[3] += src[3];
    }
    for (; i < n; i++) {
        *dst++ += *src++;
    }
#endif
}

// y[q][o] = bias[o] (or 0) for every output pixel q.
static void fill_bias(const mt_conv2d_params_t *p, const float *bias, float *y) {
    const int pixels = out_pixels(p), out_c = p->out_c;
    if (!bias) {
        zero_floats(y, pixels * out_c);
        return;
    }
    for (int q = 0; q < pixels; q++, y += out_c) {
        copy_floats(y, bias, out_c);
    }
}

// s[c] = sum over q < n of d[q * step + c] for 8 channels c.
static void sum8_strided(int n, const float *d, int step, float *s) {
#if MT_CONV_ASM
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f, s4 = 0.0f, s5 = 0.0f, s6 = 0.0f, s7 = 0.0f;
    __asm__ volatile (
        "cmp %[n], #0\n\t" "beq 2f\n\t"
        "1:\n\t"
        "vldmia %[d], {s8-s15}\n\t" "add %[d], %[d], %[step]\n\t"
        "vadd.f32 %[s0], %[s0], s8\n\t" "vadd.f32 %[s1], %[s1], s9\n\t"
        "vadd.f32 %[s2], %[s2], s10\n\t" "vadd.f32 %[s3], %[s3], s11\n\t"
        "vadd.f32 %[s4], %[s4], s12\n\t" "vadd.f32 %[s5], %[s5], s13\n\t"
        "vadd.f32 %[s6], %[s6], s14\n\t" "vadd.f32 %[s7], %[s7], s15\n\t"
        "subs %[n], %[n], #1\n\t" "bne 1b\n\t"
        "2:\n\t"
        : [d] "+r" (d), [n] "+r" (n),
          [s0] "+t" (s0), [s1] "+t" (s1), [s2] "+t" (s2), [s3] "+t" (s3),
          [s4] "+t" (s4), [s5] "+t" (s5), [s6] "+t" (s6), [s7] "+t" (s7)
        : [step] "r" (step * 4)
        : "s8", "s9", "s10", "s11", "s12", "s13", "s14", "s15", "cc", "memory");
    s[0] = s0; s[1] = s1; s[2] = s2; s[3] = s3; s[4] = s4; s[5] = s5; s[6] = s6; s[7] = s7;
#else
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f, s4 = 0.0f, s5 = 0.0f, s6 = 0.0f, s7 = 0.0f;
    for (int q = 0; q < n; q++, d += step) {
        s0 += d[0]; s1 += d[1]; s2 += d[2]; s3 += d[3];
        s4 += d[4]; s5 += d[5]; s6 += d[6]; s7 += d[7];
    }
    s[0] = s0; s[1] = s1; s[2] = s2; s[3] = s3; s[4] = s4; s[5] = s5; s[6] = s6; s[7] = s7;
#endif
}

// dbias[o] += alpha * sum over all output pixels of dy[q][o].
static void bias_grad(const mt_conv2d_params_t *p, const float *dy, float alpha, float *dbias) {
    const int pixels = out_pixels(p), out_c = p->out_c;
    int o = 0;
    for (; o + 8 <= out_c; o += 8) {
        float s[8];
        sum8_strided(pixels, dy + o, out_c, s);
        for (int i = 0; i < 8; i++) {
            dbias[o + i] += alpha * s[i];
        }
    }
    for (; o < out_c; o++) {
        float s = 0.0f;
        const float *d = dy + o;
        for (int q = 0; q < pixels; q++, d += out_c) {
            s += *d;
        }
        dbias[o] += alpha * s;
    }
}

// ---- im2col / col2im on a tile of output pixels -------------------------------------------

// Where output pixel q's patch lies in the image: its top-left input pixel (ih0, iw0) and
// the kernel columns [kw_lo, kw_hi) that fall inside the image.
typedef struct {
    int image_offset;   // floats from the start of x to image n
    int ih0, iw0, kw_lo, kw_hi;
} patch_t;

static patch_t patch_of(const mt_conv2d_params_t *p, int q) {
    const int per_image = p->out_h * p->out_w, r = q % per_image;
    patch_t t;
    t.image_offset = q / per_image * p->in_h * p->in_w * p->in_c;
    t.ih0 = r / p->out_w * p->stride_h - p->pad_h;
    t.iw0 = r % p->out_w * p->stride_w - p->pad_w;
    t.kw_lo = max_int(0, -t.iw0);
    t.kw_hi = min_int(p->kernel_w, p->in_w - t.iw0);
    return t;
}

// col[t][:] = the patch of group g's channels under output pixel q0 + t, zeros for padding.
static void im2col_tile(const mt_conv2d_params_t *p, const float *x, int q0, int rows, int g,
    float *col) {
    const int in_c = p->in_c, cg = in_c / p->groups, kw = p->kernel_w;
    const int row_len = kw * cg;
    for (int t = 0; t < rows; t++) {
        const patch_t pt = patch_of(p, q0 + t);
        const float *image = x + pt.image_offset + g * cg;
        // Kernel rows [i_lo, i_hi) lie inside the image. With all channels taken, the part
        // of each such row inside the image is one run in x (NHWC): one loop copies them
        // all, after zeros for the padding (one 1-channel row is only kernel_w floats).
        const int i_lo = min_int(p->kernel_h, max_int(0, -pt.ih0));
        const int i_hi = max_int(i_lo, min_int(p->kernel_h, p->in_h - pt.ih0));
        if (cg == in_c && i_lo < i_hi && pt.kw_lo < pt.kw_hi) {
            if (pt.kw_lo > 0 || pt.kw_hi < kw) {
                zero_floats(col, p->kernel_h * row_len);
            } else {
                zero_floats(col, i_lo * row_len);
                zero_floats(col + i_hi * row_len, (p->kernel_h - i_hi) * row_len);
            }
            copy_rows(i_hi - i_lo, (pt.kw_hi - pt.kw_lo) * cg,
                image + ((pt.ih0 + i_lo) * p->in_w + pt.iw0 + pt.kw_lo) * in_c, p->in_w * in_c,
                col + i_lo * row_len + pt.kw_lo * cg, row_len);
            col += p->kernel_h * row_len;
            continue;
        }
        for (int i = 0; i < p->kernel_h; i++, col += row_len) {
            const int ih = pt.ih0 + i;
            if (ih < 0 || ih >= p->in_h || pt.kw_lo >= pt.kw_hi) {
                zero_floats(col, row_len);
                continue;
            }
            const float *src = image + (ih * p->in_w + pt.iw0 + pt.kw_lo) * in_c;
            zero_floats(col, pt.kw_lo * cg);
            if (cg == in_c) {
                // One run: neighbouring pixels' channels are contiguous in NHWC.
                copy_floats(col + pt.kw_lo * cg, src, (pt.kw_hi - pt.kw_lo) * cg);
            } else {
                for (int j = pt.kw_lo; j < pt.kw_hi; j++, src += in_c) {
                    copy_floats(col + j * cg, src, cg);
                }
            }
            zero_floats(col + pt.kw_hi * cg, (kw - pt.kw_hi) * cg);
        }
    }
}

// The transpose of im2col_tile: adds each patch row of col back onto the pixels it came from.
static void col2im_tile(const mt_conv2d_params_t *p, const float *col, int q0, int rows, int g,
    float *dx) {
    const int in_c = p->in_c, cg = in_c / p->groups, kw = p->kernel_w;
    const int row_len = kw * cg;
    for (int t = 0; t < rows; t++) {
        const patch_t pt = patch_of(p, q0 + t);
        float *image = dx + pt.image_offset + g * cg;
        for (int i = 0; i < p->kernel_h; i++, col += row_len) {
            const int ih = pt.ih0 + i;
            if (ih < 0 || ih >= p->in_h || pt.kw_lo >= pt.kw_hi) {
                continue;
            }
            float *dst = image + (ih * p->in_w + pt.iw0 + pt.kw_lo) * in_c;
            if (cg == in_c) {
                add_floats(dst, col + pt.kw_lo * cg, (pt.kw_hi - pt.kw_lo) * cg);
            } else {
                for (int j = pt.kw_lo; j < pt.kw_hi; j++, dst += in_c) {
                    add_floats(dst, col + j * cg, cg);
                }
            }
        }
    }
}

// ---- depthwise: one filter per channel ------------------------------------------------------
//
// Loops run tap by tap: for kernel tap (i, j) the output pixels that read inside the image
// form a rectangle, so the inner loops have no bounds checks, and the tap's weights for a
// block of 8 channels stay in registers while a row of pixels streams through.

// A rectangle of pixels walked in two images at once: `rows` x `cols` pixels, with the
// steps (in floats) between neighbouring pixels and rows in each.
typedef struct {
    int rows, cols;
    int a_step, a_row;
    int b_step, b_row;
} rect_t;

// b[pixel][c] += a[pixel][c] * w<c> over the rectangle, for 8 channels c.
static inline void madd8_rect(const rect_t *r, const float *a, float *b,
    float w0, float w1, float w2, float w3, float w4, float w5, float w6, float w7) {
#if MT_CONV_ASM
    // One asm loop over the rows and the pixels of each (the rectangle has both): a row
    // of a KWS-sized map is only 4-5 pixels, so a call per row cost 15% more. The
    // weights stay in whatever s registers GCC gives them; s8..s23 hold a and b. cols is
    // read from memory: one core register fewer (GCC finds none with -Os -fno-omit-frame-pointer).
    int rows = r->rows, n;
    __asm__ volatile (
        "1:\n\t"
        "ldr %[n], %[cols]\n\t"
        "2:\n\t"
        "vldmia %[a], {s8-s15}\n\t" "add %[a], %[a], %[a_step]\n\t"
        "vldmia %[b], {s16-s23}\n\t"
        "vfma.f32 s16, s8, %[w0]\n\t" "vfma.f32 s17, s9, %[w1]\n\t"
        "vfma.f32 s18, s10, %[w2]\n\t" "vfma.f32 s19, s11, %[w3]\n\t"
        "vfma.f32 s20, s12, %[w4]\n\t" "vfma.f32 s21, s13, %[w5]\n\t"
        "vfma.f32 s22, s14, %[w6]\n\t" "vfma.f32 s23, s15, %[w7]\n\t"
        "vstmia %[b], {s16-s23}\n\t" "add %[b], %[b], %[b_step]\n\t"
        "subs %[n], %[n], #1\n\t" "bne 2b\n\t"
        "add %[a], %[a], %[a_skip]\n\t" "add %[b], %[b], %[b_skip]\n\t"
        "subs %[rows], %[rows], #1\n\t" "bne 1b\n\t"
        : [a] "+r" (a), [b] "+r" (b), [rows] "+r" (rows), [n] "=&r" (n)
        : [cols] "m" (r->cols), [a_step] "r" (r->a_step * 4), [b_step] "r" (r->b_step * 4),
          [a_skip] "r" ((r->a_row - r->cols * r->a_step) * 4),
          [b_skip] "r" ((r->b_row - r->cols * r->b_step) * 4),
          [w0] "t" (w0), [w1] "t" (w1), [w2] "t" (w2), [w3] "t" (w3),
          [w4] "t" (w4), [w5] "t" (w5), [w6] "t" (w6), [w7] "t" (w7)
        : "s8", "s9", "s10", "s11", "s12", "s13", "s14", "s15",
          "s16", "s17", "s18", "s19", "s20", "s21", "s22", "s23", "cc", "memory");
#else
    for (int row = 0; row < r->rows; row++, a += r->a_row, b += r->b_row) {
        const float *ap = a;
        float *bp = b;
        for (int t = 0; t < r->cols; t++, ap += r->a_step, bp += r->b_step) {
            bp[0] += ap[0] * w0; bp[1] += ap[1] * w1; bp[2] += ap[2] * w2; bp[3] += ap[3] * w3;
            bp[4] += ap[4] * w4; bp[5] += ap[5] * w5; bp[6] += ap[6] * w6; bp[7] += ap[7] * w7;
        }
    }
#endif
}

// s[c] = sum over the rectangle, in `images` images (image_a / image_b floats apart), of
// a[pixel][c] * b[pixel][c] for 8 channels c.
static void dot8_rect(const rect_t *r, int images, int image_a, int image_b, const float *a,
    const float *b, float *s) {
#if MT_CONV_ASM
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f, s4 = 0.0f, s5 = 0.0f, s6 = 0.0f, s7 = 0.0f;
    for (int n = 0; n < images; n++) {
        const float *ap = a + n * image_a, *bp = b + n * image_b;
        int rows = r->rows, cols;
        __asm__ volatile (
            "1:\n\t"
            "ldr %[n], %[cols]\n\t"
            "2:\n\t"
            "vldmia %[a], {s8-s15}\n\t" "add %[a], %[a], %[a_step]\n\t"
            "vldmia %[b], {s16-s23}\n\t" "add %[b], %[b], %[b_step]\n\t"
            "vfma.f32 %[s0], s8, s16\n\t" "vfma.f32 %[s1], s9, s17\n\t"
            "vfma.f32 %[s2], s10, s18\n\t" "vfma.f32 %[s3], s11, s19\n\t"
            "vfma.f32 %[s4], s12, s20\n\t" "vfma.f32 %[s5], s13, s21\n\t"
            "vfma.f32 %[s6], s14, s22\n\t" "vfma.f32 %[s7], s15, s23\n\t"
            "subs %[n], %[n], #1\n\t" "bne 2b\n\t"
            "add %[a], %[a], %[a_skip]\n\t" "add %[b], %[b], %[b_skip]\n\t"
            "subs %[rows], %[rows], #1\n\t" "bne 1b\n\t"
            : [a] "+r" (ap), [b] "+r" (bp), [rows] "+r" (rows), [n] "=&r" (cols),
              [s0] "+t" (s0), [s1] "+t" (s1), [s2] "+t" (s2), [s3] "+t" (s3),
              [s4] "+t" (s4), [s5] "+t" (s5), [s6] "+t" (s6), [s7] "+t" (s7)
            : [cols] "m" (r->cols), [a_step] "r" (r->a_step * 4), [b_step] "r" (r->b_step * 4),
              [a_skip] "r" ((r->a_row - r->cols * r->a_step) * 4),
              [b_skip] "r" ((r->b_row - r->cols * r->b_step) * 4)
            : "s8", "s9", "s10", "s11", "s12", "s13", "s14", "s15",
              "s16", "s17", "s18", "s19", "s20", "s21", "s22", "s23", "cc", "memory");
    }
    s[0] = s0; s[1] = s1; s[2] = s2; s[3] = s3; s[4] = s4; s[5] = s5; s[6] = s6; s[7] = s7;
#else
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f, s4 = 0.0f, s5 = 0.0f, s6 = 0.0f, s7 = 0.0f;
    for (int n = 0; n < images; n++) {
        const float *ar = a + n * image_a, *br = b + n * image_b;
        for (int row = 0; row < r->rows; row++, ar += r->a_row, br += r->b_row) {
            const float *ap = ar, *bp = br;
            for (int t = 0; t < r->cols; t++, ap += r->a_step, bp += r->b_step) {
                s0 += ap[0] * bp[0]; s1 += ap[1] * bp[1]; s2 += ap[2] * bp[2];
                s3 += ap[3] * bp[3]; s4 += ap[4] * bp[4]; s5 += ap[5] * bp[5];
                s6 += ap[6] * bp[6]; s7 += ap[7] * bp[7];
            }
        }
    }
    s[0] = s0; s[1] = s1; s[2] = s2; s[3] = s3; s[4] = s4; s[5] = s5; s[6] = s6; s[7] = s7;
#endif
}

// b[pixel][c] += a[pixel][c] * w[c * taps] over the rectangle, for c < C.
static void dw_madd_rect(const rect_t *r, int C, const float *a, float *b, const float *w,
    int taps) {
    int c = 0;
    for (; c + 8 <= C; c += 8, a += 8, b += 8, w += 8 * taps) {
        const float w0 = w[0], w1 = w[taps], w2 = w[2 * taps], w3 = w[3 * taps];
        const float w4 = w[4 * taps], w5 = w[5 * taps], w6 = w[6 * taps], w7 = w[7 * taps];
        madd8_rect(r, a, b, w0, w1, w2, w3, w4, w5, w6, w7);
    }
    for (; c < C; c++, a++, b++, w += taps) {
        const float wc = *w;
        const float *ar = a;
        float *br = b;
        for (int row = 0; row < r->rows; row++, ar += r->a_row, br += r->b_row) {
            const float *ap = ar;
            float *bp = br;
            for (int t = 0; t < r->cols; t++, ap += r->a_step, bp += r->b_step) {
                *bp += *ap * wc;
            }
        }
    }
}

// w[c * taps] += alpha * sum over the rectangle and `images` images (image_a / image_b
// floats apart) of a[pixel][c] * b[pixel][c], for c < C.
static void dw_dot_rect(const rect_t *r, int images, int image_a, int image_b, int C,
    const float *a, const float *b, float alpha, float *w, int taps) {
    int c = 0;
    for (; c + 8 <= C; c += 8) {
        float s[8];
        dot8_rect(r, images, image_a, image_b, a + c, b + c, s);
        for (int i = 0; i < 8; i++) {
            w[(c + i) * taps] += alpha * s[i];
        }
    }
    for (; c < C; c++) {
        float s = 0.0f;
        for (int n = 0; n < images; n++) {
            const float *ar = a + n * image_a + c, *br = b + n * image_b + c;
            for (int row = 0; row < r->rows; row++, ar += r->a_row, br += r->b_row) {
                const float *ap = ar, *bp = br;
                for (int t = 0; t < r->cols; t++, ap += r->a_step, bp += r->b_step) {
                    s += *ap * *bp;
                }
            }
        }
        w[c * taps] += alpha * s;
    }
}

// Outputs o < out with 0 <= o * stride - pad + tap < in: the range [*lo, *hi).
static void tap_range(int out, int stride, int pad, int in, int tap, int *lo, int *hi) {
    const int first = pad - tap;        // o * stride must reach this
    const int end = in + pad - tap;     // and stay below this
    *lo = first <= 0 ? 0 : (first + stride - 1) / stride;
    *hi = end <= 0 ? 0 : min_int(out, (end + stride - 1) / stride);
}

// For kernel tap (i, j): the rectangle of output pixels that read inside the image (a: the
// output, b: the input image), and the offsets of its first pixel in each. False if empty.
static int tap_rect(const mt_conv2d_params_t *p, int i, int j, rect_t *r, int *out_offset,
    int *in_offset) {
    const int C = p->in_c;
    int oh_lo, oh_hi, ow_lo, ow_hi;
    tap_range(p->out_h, p->stride_h, p->pad_h, p->in_h, i, &oh_lo, &oh_hi);
    tap_range(p->out_w, p->stride_w, p->pad_w, p->in_w, j, &ow_lo, &ow_hi);
    r->rows = oh_hi - oh_lo;
    r->cols = ow_hi - ow_lo;
    r->a_step = C;
    r->a_row = p->out_w * C;
    r->b_step = p->stride_w * C;
    r->b_row = p->stride_h * p->in_w * C;
    *out_offset = (oh_lo * p->out_w + ow_lo) * C;
    *in_offset = ((oh_lo * p->stride_h - p->pad_h + i) * p->in_w
                  + ow_lo * p->stride_w - p->pad_w + j) * C;
    return r->rows > 0 && r->cols > 0;
}

// The same rectangle walked from the input side (a: the input image, b: the output).
static rect_t swap_sides(rect_t r) {
    const rect_t s = { r.rows, r.cols, r.b_step, r.b_row, r.a_step, r.a_row };
    return s;
}

static void depthwise_forward(const mt_conv2d_params_t *p, const float *x, const float *weight,
    const float *bias, float *y) {
    const int C = p->in_c, taps = p->kernel_h * p->kernel_w;
    const int x_image = p->in_h * p->in_w * C, y_image = p->out_h * p->out_w * C;
    fill_bias(p, bias, y);
    for (int i = 0; i < p->kernel_h; i++) {
        for (int j = 0; j < p->kernel_w; j++) {
            rect_t r;
            int y_offset, x_offset;
            if (!tap_rect(p, i, j, &r, &y_offset, &x_offset)) {
                continue;
            }
            const rect_t from_x = swap_sides(r);
            for (int n = 0; n < p->batch; n++) {
                dw_madd_rect(&from_x, C, x + n * x_image + x_offset, y + n * y_image + y_offset,
                    weight + i * p->kernel_w + j, taps);
            }
        }
    }
}

static void depthwise_grad_input(const mt_conv2d_params_t *p, const float *dy, const float *weight,
    float *dx) {
    const int C = p->in_c, taps = p->kernel_h * p->kernel_w;
    const int x_image = p->in_h * p->in_w * C, y_image = p->out_h * p->out_w * C;
    zero_floats(dx, p->batch * x_image);
    for (int i = 0; i < p->kernel_h; i++) {
        for (int j = 0; j < p->kernel_w; j++) {
            rect_t r;
            int y_offset, x_offset;
            if (!tap_rect(p, i, j, &r, &y_offset, &x_offset)) {
                continue;
            }
            for (int n = 0; n < p->batch; n++) {
                dw_madd_rect(&r, C, dy + n * y_image + y_offset, dx + n * x_image + x_offset,
                    weight + i * p->kernel_w + j, taps);
            }
        }
    }
}

static void depthwise_grad_weight(const mt_conv2d_params_t *p, const float *x, const float *dy,
    float alpha, float *dweight) {
    const int C = p->in_c, taps = p->kernel_h * p->kernel_w;
    const int x_image = p->in_h * p->in_w * C, y_image = p->out_h * p->out_w * C;
    for (int i = 0; i < p->kernel_h; i++) {
        for (int j = 0; j < p->kernel_w; j++) {
            rect_t r;
            int y_offset, x_offset;
            if (!tap_rect(p, i, j, &r, &y_offset, &x_offset)) {
                continue;
            }
            dw_dot_rect(&r, p->batch, y_image, x_image, C, dy + y_offset, x + x_offset, alpha,
                dweight + i * p->kernel_w + j, taps);
        }
    }
}

// ---- pointwise: the image is already the im2col matrix ------------------------------------

// Runs of output pixels whose input pixels are contiguous too: the whole batch when the
// output covers the input, else one output row at a time.
typedef struct {
    int count;      // runs
    int len;        // output pixels per run
} pointwise_runs_t;

static pointwise_runs_t pointwise_runs(const mt_conv2d_params_t *p) {
    pointwise_runs_t r;
    if (p->out_w == p->in_w && p->out_h == p->in_h) {
        r.count = 1;
        r.len = out_pixels(p);
    } else {
        r.count = p->batch * p->out_h;
        r.len = p->out_w;
    }
    return r;
}

// Offset of run r's first input pixel (in floats).
static int pointwise_x_offset(const mt_conv2d_params_t *p, pointwise_runs_t runs, int r) {
    if (runs.count == 1) {
        return 0;
    }
    const int n = r / p->out_h, oh = r % p->out_h;
    return ((n * p->in_h + oh) * p->in_w) * p->in_c;
}

// ---- public API ---------------------------------------------------------------------------

void mt_conv2d_f32_forward(const mt_conv2d_params_t *p, const float *x, const float *weight,
    const float *bias, float *y, float *scratch) {
    if (is_depthwise(p)) {
        depthwise_forward(p, x, weight, bias, y);
        return;
    }
    fill_bias(p, bias, y);
    const int in_c = p->in_c, out_c = p->out_c;
    if (is_pointwise(p)) {
        const pointwise_runs_t runs = pointwise_runs(p);
        const size_t pack = scratch ? pack_floats(p) : 0;   // scratch is the GEMMs' workspace
        const mt_gemm_shape_t s = { runs.len, out_c, in_c, in_c, in_c, out_c };
        for (int r = 0; r < runs.count; r++) {
            mt_gemm_f32_nt_packed(&s, 1.0f, x + pointwise_x_offset(p, runs, r), weight,
                y + r * runs.len * out_c, scratch, pack);
        }
        return;
    }
    const int K = patch_len(p), og = out_c / p->groups, pixels = out_pixels(p), tile = tile_rows(p);
    for (int q0 = 0; q0 < pixels; q0 += tile) {
        const int rows = min_int(tile, pixels - q0);
        const mt_gemm_shape_t s = { rows, og, K, K, K, out_c };
        for (int g = 0; g < p->groups; g++) {
            im2col_tile(p, x, q0, rows, g, scratch);
            mt_gemm_f32_nt(&s, 1.0f, scratch, weight + g * og * K, y + q0 * out_c + g * og);
        }
    }
}

void mt_conv2d_f32_grad_input(const mt_conv2d_params_t *p, const float *dy, const float *weight,
    float *dx, float *scratch) {
    if (is_depthwise(p)) {
        depthwise_grad_input(p, dy, weight, dx);
        return;
    }
    const int in_c = p->in_c, out_c = p->out_c;
    zero_floats(dx, p->batch * p->in_h * p->in_w * in_c);
    if (is_pointwise(p)) {
        const pointwise_runs_t runs = pointwise_runs(p);
        const size_t pack = scratch ? pack_floats(p) : 0;   // scratch is the GEMMs' workspace
        const mt_gemm_shape_t s = { runs.len, in_c, out_c, out_c, in_c, in_c };
        for (int r = 0; r < runs.count; r++) {
            mt_gemm_f32_nn_packed(&s, 1.0f, dy + r * runs.len * out_c, weight,
                dx + pointwise_x_offset(p, runs, r), scratch, pack);
        }
        return;
    }
    const int K = patch_len(p), og = out_c / p->groups, pixels = out_pixels(p), tile = tile_rows(p);
    for (int q0 = 0; q0 < pixels; q0 += tile) {
        const int rows = min_int(tile, pixels - q0);
        const mt_gemm_shape_t s = { rows, K, og, out_c, K, K };
        for (int g = 0; g < p->groups; g++) {
            zero_floats(scratch, rows * K);
            mt_gemm_f32_nn(&s, 1.0f, dy + q0 * out_c + g * og, weight + g * og * K, scratch);
            col2im_tile(p, scratch, q0, rows, g, dx);
        }
    }
}

void mt_conv2d_f32_grad_weight(const mt_conv2d_params_t *p, const float *x, const float *dy,
    float alpha, float *dweight, float *dbias, float *scratch) {
    if (dbias) {
        bias_grad(p, dy, alpha, dbias);
    }
    if (is_depthwise(p)) {
        depthwise_grad_weight(p, x, dy, alpha, dweight);
        return;
    }
    const int in_c = p->in_c, out_c = p->out_c;
    if (is_pointwise(p)) {
        const pointwise_runs_t runs = pointwise_runs(p);
        const size_t pack = scratch ? pack_floats(p) : 0;   // scratch is the GEMMs' workspace
        const mt_gemm_shape_t s = { out_c, in_c, runs.len, out_c, in_c, in_c };
        for (int r = 0; r < runs.count; r++) {
            mt_gemm_f32_tn_packed(&s, alpha, dy + r * runs.len * out_c,
                x + pointwise_x_offset(p, runs, r), dweight, scratch, pack);
        }
        return;
    }
    const int K = patch_len(p), og = out_c / p->groups, pixels = out_pixels(p), tile = tile_rows(p);
    for (int q0 = 0; q0 < pixels; q0 += tile) {
        const int rows = min_int(tile, pixels - q0);
        const mt_gemm_shape_t s = { og, K, rows, out_c, K, K };
        for (int g = 0; g < p->groups; g++) {
            im2col_tile(p, x, q0, rows, g, scratch);
            mt_gemm_f32_tn(&s, alpha, dy + q0 * out_c + g * og, scratch, dweight + g * og * K);
        }
    }
}
