// int8 GEMM on packed int16 panels: the 3x2 SMLAD kernel and the packers (see gemm_s8.h).
#include <string.h>
#include "gemm_s8.h"
#include "s8_common.h"
#include "checked_size.h"

// ---- the 3x2 kernel -----------------------------------------------------------------------
//
// Cortex-M4: the k loop of gemm_s8_loop.h, 8 instructions per pair of k (12 multiply-adds).
// The loop counter, both panel pointers, 6 sums and 5 operands take r0-r12 and lr, so the
// acc pointer waits on the stack. Written as whole functions because they need every
// register.

#if MT_S8_DSP
#include "gemm_s8_loop.h"
// (The asm reads the arguments from r0-r3 and the stack.)
#define MT_ARG __attribute__((unused))
#define MT_K_LOOP MT_GEMM_S8_K_LOOP

__attribute__((naked, noinline))
void mt_gemm_s16_3x2(int kp MT_ARG, const int32_t *a MT_ARG, const int32_t *b MT_ARG,
    int32_t acc[6] MT_ARG) {
    __asm__ volatile (
        "push {r3-r11, lr}\n\t"
        "ldm r3, {r4-r9}\n\t"
        MT_K_LOOP
        "ldr r3, [sp]\n\t"
        "stm r3, {r4-r9}\n\t"
        "pop {r3-r11, pc}\n\t");
}

__attribute__((naked, noinline))
void mt_gemm_s16_3x2_rows(int kp MT_ARG, const int32_t *a MT_ARG, const int32_t *b MT_ARG,
    int32_t *acc MT_ARG, int ld MT_ARG) {
    __asm__ volatile (
        "push {r3-r11, lr}\n\t"
        "ldr r12, [sp, #40]\n\t"           // ld (the 5th argument)
        "lsl r12, r12, #2\n\t"
        "ldrd r4, r5, [r3]\n\t"
        "add r3, r3, r12\n\t"
        "ldrd r6, r7, [r3]\n\t"
        "add r3, r3, r12\n\t"
        "ldrd r8, r9, [r3]\n\t"
        MT_K_LOOP
        "ldr r3, [sp]\n\t"
        "ldr r12, [sp, #40]\n\t"
        "lsl r12, r12, #2\n\t"
        "strd r4, r5, [r3]\n\t"
        "add r3, r3, r12\n\t"
        "strd r6, r7, [r3]\n\t"
        "add r3, r3, r12\n\t"
        "strd r8, r9, [r3]\n\t"
        "pop {r3-r11, pc}\n\t");
}

// r0 = kp, r1 = A, r2 = B, r3 = acc; ld and np on the stack. A's panels follow each other,
// so r1 runs on while B restarts.
__attribute__((naked, noinline))
void mt_gemm_s16_3x2_rows_multi(int kp MT_ARG, const int32_t *a MT_ARG, const int32_t *b MT_ARG,
    int32_t *acc MT_ARG, int ld MT_ARG, int np MT_ARG) {
    __asm__ volatile (
        "push {r4-r11, lr}\n\t"
        "sub sp, sp, #24\n\t"            // kp, B, panels left, acc, 4 * ld (and padding)
        "str r0, [sp, #0]\n\t"
        "str r2, [sp, #4]\n\t"
        "str r3, [sp, #12]\n\t"
        "ldr r12, [sp, #64]\n\t"         // np (36 bytes pushed + 24 of locals + ld)
        "str r12, [sp, #8]\n\t"
        "ldr r12, [sp, #60]\n\t"         // ld
        "lsl r12, r12, #2\n\t"
        "str r12, [sp, #16]\n\t"
        "5:\n\t"
        "ldr r3, [sp, #12]\n\t"
        "ldr r12, [sp, #16]\n\t"
        "ldrd r4, r5, [r3]\n\t"
        "add r3, r3, r12\n\t"
        "ldrd r6, r7, [r3]\n\t"
        "add r3, r3, r12\n\t"
        "ldrd r8, r9, [r3]\n\t"
        "ldr r0, [sp, #0]\n\t"
        "ldr r2, [sp, #4]\n\t"
        MT_K_LOOP
        "ldr r3, [sp, #12]\n\t"
        "ldr r12, [sp, #16]\n\t"
        "strd r4, r5, [r3]\n\t"
        "add r3, r3, r12\n\t"
        "strd r6, r7, [r3]\n\t"
        "add r3, r3, r12\n\t"
        "strd r8, r9, [r3]\n\t"
        "add r3, r3, r12\n\t"
        "str r3, [sp, #12]\n\t"
        "ldr r3, [sp, #8]\n\t"
        "subs r3, r3, #1\n\t"
        "str r3, [sp, #8]\n\t"
        "bne 5b\n\t"
        "add sp, sp, #24\n\t"
        "pop {r4-r11, pc}\n\t");
}

// r0 = kp, r1 = A, r2 = B, r3 = nb; init and out on the stack. Per block: the sums start
// from its init pair, the k loop runs, the six sums go out; B's blocks follow each other,
// so r2 runs on while A restarts.
__attribute__((naked, noinline))
void mt_gemm_s16_3x2_multi(int kp MT_ARG, const int32_t *a MT_ARG, const int32_t *b MT_ARG,
    int nb MT_ARG, const int32_t *init MT_ARG, int32_t *out MT_ARG) {
    __asm__ volatile (
        "push {r4-r11, lr}\n\t"
        "sub sp, sp, #12\n\t"
        "str r0, [sp, #0]\n\t"
        "str r1, [sp, #4]\n\t"
        "str r3, [sp, #8]\n\t"
        "5:\n\t"
        "ldr r0, [sp, #0]\n\t"
        "ldr r1, [sp, #4]\n\t"
        "ldr r3, [sp, #48]\n\t"          // init (36 bytes pushed + 12 of locals)
        "ldm r3!, {r4, r5}\n\t"
        "str r3, [sp, #48]\n\t"
        "mov r6, r4\n\t"
        "mov r7, r5\n\t"
        "mov r8, r4\n\t"
        "mov r9, r5\n\t"
        MT_K_LOOP
        "ldr r3, [sp, #52]\n\t"          // out
        "stm r3!, {r4-r9}\n\t"
        "str r3, [sp, #52]\n\t"
        "ldr r3, [sp, #8]\n\t"
        "subs r3, r3, #1\n\t"
        "str r3, [sp, #8]\n\t"
        "bne 5b\n\t"
        "add sp, sp, #12\n\t"
        "pop {r4-r11, pc}\n\t");
}
#undef MT_K_LOOP
#undef MT_ARG
#else
// The portable kernels, shaped for 32-bit cores without SIMD (RISC-V RV32IM): each int16 of a
// panel word comes by one sign-extending halfword load (LH), which beats a word load and two
// shifts per word, and each product is one MUL. The sums are unsigned: they wrap modulo 2^32
// exactly as SMLAD's do. (Blocks of 3x4 or 6x2 sums, and unrolling the k loop, ran slower
// on RV32: their sums and operands do not fit the registers.)

// Half h (0: low, 1: high) of the panel word at p (memcpy: panels are written as int32 words).
// Panels are word aligned; saying so lets GCC use one LH on a core without unaligned access
// (RISC-V), not byte loads.
static inline uint32_t panel_half(const int32_t *p, int h) {
    int16_t v;
    memcpy(&v, (const char *)__builtin_assume_aligned(p, 4) + 2 * h, sizeof v);
    return (uint32_t)(int32_t)v;
}

void mt_gemm_s16_3x2(int kp, const int32_t *a, const int32_t *b, int32_t acc[6]) {
    uint32_t c0 = (uint32_t)acc[0], c1 = (uint32_t)acc[1], c2 = (uint32_t)acc[2];
    uint32_t c3 = (uint32_t)acc[3], c4 = (uint32_t)acc[4], c5 = (uint32_t)acc[5];
    for (int j = 0; j < kp / 2; j++, a += 3, b += 2) {
        const uint32_t b0l = panel_half(b, 0), b0h = panel_half(b, 1);
        const uint32_t b1l = panel_half(b + 1, 0), b1h = panel_half(b + 1, 1);
        uint32_t al = panel_half(a, 0), ah = panel_half(a, 1);
        c0 += al * b0l + ah * b0h;
        c1 += al * b1l + ah * b1h;
        al = panel_half(a + 1, 0), ah = panel_half(a + 1, 1);
        c2 += al * b0l + ah * b0h;
        c3 += al * b1l + ah * b1h;
        al = panel_half(a + 2, 0), ah = panel_half(a + 2, 1);
        c4 += al * b0l + ah * b0h;
        c5 += al * b1l + ah * b1h;
    }
    acc[0] = (int32_t)c0; acc[1] = (int32_t)c1; acc[2] = (int32_t)c2;
    acc[3] = (int32_t)c3; acc[4] = (int32_t)c4; acc[5] = (int32_t)c5;
}

void mt_gemm_s16_3x2_multi(int kp, const int32_t *a, const int32_t *b, int nb,
    const int32_t *init, int32_t *out) {
    for (int j = 0; j < nb; j++, b += kp, init += 2, out += 6) {
        out[0] = out[2] = out[4] = init[0];
        out[1] = out[3] = out[5] = init[1];
        mt_gemm_s16_3x2(kp, a, b, out);
    }
}

void mt_gemm_s16_3x2_rows(int kp, const int32_t *a, const int32_t *b, int32_t *acc, int ld) {
    int32_t t[6] = { acc[0], acc[1], acc[ld], acc[ld + 1], acc[2 * ld], acc[2 * ld + 1] };
    mt_gemm_s16_3x2(kp, a, b, t);
    acc[0] = t[0]; acc[1] = t[1];
    acc[ld] = t[2]; acc[ld + 1] = t[3];
    acc[2 * ld] = t[4]; acc[2 * ld + 1] = t[5];
}

void mt_gemm_s16_3x2_rows_multi(int kp, const int32_t *a, const int32_t *b, int32_t *acc,
    int ld, int np) {
    for (int j = 0; j < np; j++, a += 3 * kp / 2, acc += 3 * ld) {
        mt_gemm_s16_3x2_rows(kp, a, b, acc, ld);
    }
}
#endif

// ---- packers ----------------------------------------------------------------------------

void mt_pack_s8_run(const int8_t *src, int n, int32_t offset, int32_t *dst, int stride) {
    mt_s8_pack_run(src, n, offset, dst, stride);
}

void mt_pack_zero_run(int n, int32_t *dst, int stride) {
    for (int i = 0; i < n; i += 2, dst += stride) {
        *dst = 0;
    }
}

// One row of k int8 values minus offset into words dst[0], dst[stride], ... (kp / 2 words),
// zeros past k.
static void pack_row(const int8_t *src, int k, int32_t offset, int kp, int32_t *dst, int stride) {
    int i = k & ~3;
    mt_pack_s8_run(src, i, offset, dst, stride);
    dst += i / 2 * stride;
    for (; i < kp; i += 4, dst += 2 * stride) {
        int16_t v[4];
        for (int t = 0; t < 4; t++) {
            const int kk = i + mt_gemm_s8_pos(t);
            v[t] = (int16_t)(kk < k ? src[kk] - offset : 0);
        }
        dst[0] = mt_s8_words(v[0], v[1]);
        dst[stride] = mt_s8_words(v[2], v[3]);
    }
}

void mt_pack_s8_rows(const int8_t *src, int ld, int rows, int k, int32_t offset, int R, int kp,
    int16_t *panel) {
    int32_t *out = (int32_t *)panel;
    const int blocks = (rows + R - 1) / R;
    for (int b = 0; b < blocks; b++, out += R * kp / 2) {
        for (int r = 0; r < R; r++) {
            const int i = b * R + r;
            if (i < rows) {
                pack_row(src + (size_t)i * ld, k, offset, kp, out + r, R);
            } else {
                for (int j = 0; j < kp / 2; j++) {
                    out[j * R + r] = 0;
                }
            }
        }
    }
}

void mt_pack_s8_cols(const int8_t *src, int ld, int n, int k, int32_t offset, int np,
    int16_t *panel) {
    int32_t *out = (int32_t *)panel;
    const int blocks = (k + 1) / 2;
    for (int cb = 0; cb < blocks; cb++, out += np) {
        const int c = 2 * cb;
        const int8_t *col = src + c;
        int32_t *dst = out;
        int i = 0;
#if MT_S8_DSP
        if (c + 2 <= k) {
            // Rows i..i+3, columns c, c+1: halfwords h0..h3; (h0, h2) and (h1, h3) hold the
            // two columns' values for positions {0, 1} and {2, 3} of the group.
            const uint32_t neg = mt_s8_pair(-offset);
            for (; i + 4 <= n; i += 4, col += 4 * ld, dst += 4) {
                const uint32_t h0 = mt_s8_load16(col), h1 = mt_s8_load16(col + ld);
                const uint32_t h2 = mt_s8_load16(col + 2 * ld), h3 = mt_s8_load16(col + 3 * ld);
                const uint32_t v02 = mt_s8_pkhbt(h0, h2), v13 = mt_s8_pkhbt(h1, h3);
                dst[0] = (int32_t)__sxtab16(neg, v02);
                dst[1] = (int32_t)mt_s8_sxtab16_ror8(neg, v02);
                dst[2] = (int32_t)__sxtab16(neg, v13);
                dst[3] = (int32_t)mt_s8_sxtab16_ror8(neg, v13);
            }
        }
#endif
        for (; i < np; i += 4, col += 4 * ld, dst += 4) {
            int16_t v[2][4];
            for (int t = 0; t < 4; t++) {
                const int row = i + mt_gemm_s8_pos(t);
                for (int h = 0; h < 2; h++) {
                    const int8_t *p = col + (size_t)(mt_gemm_s8_pos(t) * ld) + h;
                    v[h][t] = (int16_t)(row < n && c + h < k ? *p - offset : 0);
                }
            }
            dst[0] = mt_s8_words(v[0][0], v[0][1]);
            dst[1] = mt_s8_words(v[1][0], v[1][1]);
            dst[2] = mt_s8_words(v[0][2], v[0][3]);
            dst[3] = mt_s8_words(v[1][2], v[1][3]);
        }
    }
}

// ---- a plain int8 GEMM from the pieces ------------------------------------------------------

size_t mt_gemm_s8_nt_scratch_bytes(int m, int n, int k) {
    (void)n;
    const size_t kp = (size_t)mt_gemm_s8_kpad(k);
    const size_t mp = (size_t)((m + 2) / 3 * 3);
    bool overflow = false;  // saturates for sizes too large to plan (checked_size.h)
    return mt_mul_size(mt_mul_size(mp + MT_GEMM_S8_COLS, kp, &overflow), sizeof(int16_t), &overflow);
}

void mt_gemm_s8_nt(int m, int n, int k, const int8_t *a, int lda, int32_t a_offset,
    const int8_t *b, int ldb, int32_t b_offset, int32_t *c, int ldc, void *scratch) {
    const int kp = mt_gemm_s8_kpad(k), row_blocks = (m + 2) / 3;
    int16_t *pa = (int16_t *)scratch;
    int16_t *pb = pa + (size_t)row_blocks * 3 * kp;
    if (m <= 0 || n <= 0) {
        return;
    }
    mt_pack_s8_rows(a, lda, m, k, a_offset, 3, kp, pa);
    for (int j = 0; j < n; j += 2) {
        const int cols = n - j < 2 ? n - j : 2;
        mt_pack_s8_rows(b + (size_t)j * ldb, ldb, cols, k, b_offset, 2, kp, pb);
        for (int rb = 0; rb < row_blocks; rb++) {
            int32_t acc[6] = { 0, 0, 0, 0, 0, 0 };
            if (kp > 0) {
                mt_gemm_s16_3x2(kp, (const int32_t *)(pa + (size_t)rb * 3 * kp),
                    (const int32_t *)pb, acc);
            }
            for (int r = 0; r < 3 && rb * 3 + r < m; r++) {
                int32_t *ci = c + (size_t)(rb * 3 + r) * ldc + j;
                for (int t = 0; t < cols; t++) {
                    ci[t] = acc[r * 2 + t];
                }
            }
        }
    }
}
