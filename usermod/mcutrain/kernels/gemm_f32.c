// fp32 GEMM for MCUs. C is computed in 4x4 blocks whose 16 sums stay in registers while
// k runs; matrix-vector shapes (batch 1) get 1x4 / 1x8 kernels and rank-1 updates;
// leftover rows and columns a strided dot product.
//
// On Thumb-2 with a single-precision FPU (Cortex-M4F/M7/M33) the hot kernels are inline
// asm, because one vldmia loads up to 8 consecutive floats where compiled C spends one
// load per float: a 2x4 nt block (two of them make a 4x4) takes 6 loads + 64 vfma + 2 loop
// instructions per eight k, a 1x4 matrix-vector block 5 loads + 32 vfma + 2 per eight k (C: 88). The
// portable C computes the same sums and is what host tests and other targets run.
#include "gemm_f32.h"

// (At -O0 GCC cannot find registers for the asm operands, so that builds the C path.)
#if defined(__thumb2__) && defined(__ARM_FP) && (__ARM_FP & 4) && defined(__ARM_FEATURE_FMA) \
    && defined(__OPTIMIZE__) && !defined(MCUTRAIN_PORTABLE_KERNELS)
#define MT_GEMM_ASM 1
// Rank-1 updates beat a 4x4 block with its C load/store up to this k (from instruction
// counts of both kernels).
#define TN_RANK1_MAX_K 8

// "s<c0..c3> (op)= s<a> * s<b0..b3>": one row of a 4x4 outer product.
#define MT_ROW4(op, c0, c1, c2, c3, a, b0, b1, b2, b3) \
    op " s" #c0 ", s" #a ", s" #b0 "\n\t" \
    op " s" #c1 ", s" #a ", s" #b1 "\n\t" \
    op " s" #c2 ", s" #a ", s" #b2 "\n\t" \
    op " s" #c3 ", s" #a ", s" #b3 "\n\t"
// acc s0..s15 (row-major 4x4) (op)= column s<a0..a3> times row s<b0..b3>.
#define MT_OUTER16(op, a0, a1, a2, a3, b0, b1, b2, b3) \
    MT_ROW4(op, 0, 1, 2, 3, a0, b0, b1, b2, b3) \
    MT_ROW4(op, 4, 5, 6, 7, a1, b0, b1, b2, b3) \
    MT_ROW4(op, 8, 9, 10, 11, a2, b0, b1, b2, b3) \
    MT_ROW4(op, 12, 13, 14, 15, a3, b0, b1, b2, b3)
// acc column j (s<c0..c3>) += A rows (s16..s27, three k each) times three k of B row j
// (s28..s30).
#define MT_FMA3(c, a0, a1, a2) \
    "vfma.f32 s" #c ", s" #a0 ", s28\n\t" \
    "vfma.f32 s" #c ", s" #a1 ", s29\n\t" \
    "vfma.f32 s" #c ", s" #a2 ", s30\n\t"
#define MT_COLUMN3(c0, c1, c2, c3) \
    MT_FMA3(c0, 16, 17, 18) MT_FMA3(c1, 19, 20, 21) MT_FMA3(c2, 22, 23, 24) MT_FMA3(c3, 25, 26, 27)
// C row at [p] += s16 (alpha) * s<c0..c3>, then p += ldc bytes in [step].
#define MT_UPDATE_ROW4(p, step, c0, c1, c2, c3) \
    "vldmia " p ", {s20-s23}\n\t" \
    "vfma.f32 s20, s" #c0 ", s16\n\t" \
    "vfma.f32 s21, s" #c1 ", s16\n\t" \
    "vfma.f32 s22, s" #c2 ", s16\n\t" \
    "vfma.f32 s23, s" #c3 ", s16\n\t" \
    "vstmia " p ", {s20-s23}\n\t" \
    "add " p ", " p ", " step "\n\t"
// Adds the 4x4 sums into C. The C pointer, ldc (bytes) and alpha come from memory
// operands (no register while the k loop runs) into two freed pointer registers and s16.
#define MT_UPDATE_4X4(p, step) \
    "ldr " p ", %[c]\n\t" \
    "ldr " step ", %[ldc]\n\t" \
    "vldr s16, %[alpha]\n\t" \
    MT_UPDATE_ROW4(p, step, 0, 1, 2, 3) \
    MT_UPDATE_ROW4(p, step, 4, 5, 6, 7) \
    MT_UPDATE_ROW4(p, step, 8, 9, 10, 11) \
    MT_UPDATE_ROW4(p, step, 12, 13, 14, 15)
#define MT_UPDATE_4X4_OPERANDS [c] "m" (c), [ldc] "m" (ldc_bytes), [alpha] "Uv" (alpha)
#define MT_CLOBBER_S0_15 "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", \
    "s11", "s12", "s13", "s14", "s15"
#define MT_CLOBBER_S16_31 "s16", "s17", "s18", "s19", "s20", "s21", "s22", "s23", "s24", \
    "s25", "s26", "s27", "s28", "s29", "s30", "s31"

// Block kernels are inlined into small non-inlined panel functions: the asm's up to 10
// pointer operands then find registers whatever the drivers keep live (e.g. with
// -fno-omit-frame-pointer), and the s16..s31 it clobbers are saved once per panel.
#define MT_BLOCK static inline __attribute__((always_inline))
#define MT_PANEL static __attribute__((noinline))

#else
#define MT_GEMM_ASM 0
#define MT_BLOCK static
#if (defined(__riscv_flen) || defined(MCUTRAIN_GEMM_WIDE)) && !defined(MCUTRAIN_PORTABLE_KERNELS)
// Panels of 4x6 blocks (gemm_f32_wide.h, inlined) are built without the first scheduling
// pass: its reordering of a loop turn's loads made GCC 12 spill 12 of the 24 sums (3 without).
#define MT_PANEL static __attribute__((noinline, optimize("no-schedule-insns")))
#else
#define MT_PANEL static
#endif
#define TN_RANK1_MAX_K 2
#endif

#if !MT_GEMM_ASM
// The portable 4x4 blocks: 16 sums in registers, four k per loop turn read at constant
// offsets from the operands' row pointers, so each pointer steps once per four k. (A RISC-V
// core has no register-offset loads: stepping every pointer every k cost 9 of the 34
// instructions per 16 multiply-adds; the sums and their order are the same either way.)
#define MT_C_SUMS4X4 \
    float c00 = 0.0f, c01 = 0.0f, c02 = 0.0f, c03 = 0.0f, c10 = 0.0f, c11 = 0.0f, c12 = 0.0f; \
    float c13 = 0.0f, c20 = 0.0f, c21 = 0.0f, c22 = 0.0f, c23 = 0.0f, c30 = 0.0f, c31 = 0.0f; \
    float c32 = 0.0f, c33 = 0.0f
// One k: column (x0..x3) of A times row (y0..y3) of B into the sums.
#define MT_C_OUTER16(x0, x1, x2, x3, y0, y1, y2, y3) { \
    const float x0_ = (x0), x1_ = (x1), x2_ = (x2), x3_ = (x3); \
    const float y0_ = (y0), y1_ = (y1), y2_ = (y2), y3_ = (y3); \
    c00 += x0_ * y0_; c01 += x0_ * y1_; c02 += x0_ * y2_; c03 += x0_ * y3_; \
    c10 += x1_ * y0_; c11 += x1_ * y1_; c12 += x1_ * y2_; c13 += x1_ * y3_; \
    c20 += x2_ * y0_; c21 += x2_ * y1_; c22 += x2_ * y2_; c23 += x2_ * y3_; \
    c30 += x3_ * y0_; c31 += x3_ * y1_; c32 += x3_ * y2_; c33 += x3_ * y3_; }
// The portable blocks' k loops, shared by the 4x4, 4x6 and matrix-vector blocks (so every sum
// runs over k in one order): four k per loop turn, then the tail. K(t) (nt) is one k at
// offset t of the rows, which STEP(n) advances; K(t, row) (nn) one k of A at offset t against
// B's row `row`; K(ra, rb) (tn) one k from rows ra of A and rb of B.
#define MT_NT_KLOOP(K, STEP) { \
    int kk_ = 0; \
    for (; kk_ + 4 <= k; kk_ += 4) { \
        K(0) K(1) K(2) K(3) \
        STEP(4) \
    } \
    for (; kk_ < k; kk_++) { \
        K(0) \
        STEP(1) \
    } }
#define MT_NN_KLOOP(K) { \
    int kk_ = 0; \
    for (; kk_ + 4 <= k; kk_ += 4) { \
        const float *b1_ = b + ldb, *b2_ = b1_ + ldb, *b3_ = b2_ + ldb; \
        K(0, b) K(1, b1_) K(2, b2_) K(3, b3_) \
        a0 += 4; a1 += 4; a2 += 4; a3 += 4; b = b3_ + ldb; \
    } \
    for (; kk_ < k; kk_++) { \
        K(0, b) \
        a0++; a1++; a2++; a3++; b += ldb; \
    } }
#define MT_TN_KLOOP(K) { \
    int kk_ = 0; \
    for (; kk_ + 4 <= k; kk_ += 4) { \
        const float *a1_ = a + lda, *a2_ = a1_ + lda, *a3_ = a2_ + lda; \
        const float *b1_ = b + ldb, *b2_ = b1_ + ldb, *b3_ = b2_ + ldb; \
        K(a, b) K(a1_, b1_) K(a2_, b2_) K(a3_, b3_) \
        a = a3_ + lda; b = b3_ + ldb; \
    } \
    for (; kk_ < k; kk_++) { \
        K(a, b) \
        a += lda; b += ldb; \
    } }
#define MT_C_ADD4X4(c, ldc, alpha) { \
    const float acc_[16] = { c00, c01, c02, c03, c10, c11, c12, c13, \
                             c20, c21, c22, c23, c30, c31, c32, c33 }; \
    add_4x4(c, ldc, alpha, acc_); }

static void add_4x4(float *c, int ldc, float alpha, const float *acc) {
    for (int i = 0; i < 4; i++, c += ldc, acc += 4) {
        c[0] += alpha * acc[0];
        c[1] += alpha * acc[1];
        c[2] += alpha * acc[2];
        c[3] += alpha * acc[3];
    }
}

// Cores with 32 FP registers take most of a panel in 4x6 blocks (gemm_f32_wide.h).
#if (defined(__riscv_flen) || defined(MCUTRAIN_GEMM_WIDE)) && !defined(MCUTRAIN_PORTABLE_KERNELS)
#define MT_GEMM_WIDE 1
#include "gemm_f32_wide.h"
#endif
#endif
#ifndef MT_GEMM_WIDE
#define MT_GEMM_WIDE 0
#endif

#if MT_GEMM_ASM
// C[i][j] += alpha * sum_k A[i][k] * B[j][k] for a 2x4 block; k >= 1. Both A rows hold
// eight k in registers while the four B rows stream past: 2 + 4 vldmia + 64 vfma + 2 loop
// instructions per eight k (0.889 MAC/instruction; a 4x4 block has registers for only
// three k, 0.828).
MT_BLOCK void nt_2x4(int k, const float *a, int lda, const float *b, int ldb, float alpha,
    float *c, int ldc) {
    const float *a0 = a, *a1 = a0 + lda;
    const float *b0 = b, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
    const int ldc_bytes = ldc * 4;
    int singles = k & 7, octets = k >> 3, tmp;
    // s0..s3 / s4..s7: the two C rows' sums; s8..s15 / s16..s23: eight k of A row 0 / 1;
    // s24..s31: eight k of one B row.
#define MT_NT2_DOT8(c0, c1) \
        "vfma.f32 s" #c0 ", s8, s24\n\t" "vfma.f32 s" #c1 ", s16, s24\n\t" \
        "vfma.f32 s" #c0 ", s9, s25\n\t" "vfma.f32 s" #c1 ", s17, s25\n\t" \
        "vfma.f32 s" #c0 ", s10, s26\n\t" "vfma.f32 s" #c1 ", s18, s26\n\t" \
        "vfma.f32 s" #c0 ", s11, s27\n\t" "vfma.f32 s" #c1 ", s19, s27\n\t" \
        "vfma.f32 s" #c0 ", s12, s28\n\t" "vfma.f32 s" #c1 ", s20, s28\n\t" \
        "vfma.f32 s" #c0 ", s13, s29\n\t" "vfma.f32 s" #c1 ", s21, s29\n\t" \
        "vfma.f32 s" #c0 ", s14, s30\n\t" "vfma.f32 s" #c1 ", s22, s30\n\t" \
        "vfma.f32 s" #c0 ", s15, s31\n\t" "vfma.f32 s" #c1 ", s23, s31\n\t"
#define MT_NT2_UPDATE_ROW(c0, c1, c2, c3) \
        "vldmia %[a0], {s8-s11}\n\t" \
        "vfma.f32 s8, s" #c0 ", s16\n\t" "vfma.f32 s9, s" #c1 ", s16\n\t" \
        "vfma.f32 s10, s" #c2 ", s16\n\t" "vfma.f32 s11, s" #c3 ", s16\n\t" \
        "vstmia %[a0], {s8-s11}\n\t"
    __asm__ volatile (
        "movs %[tmp], #0\n\t"
        "vmov s0, s1, %[tmp], %[tmp]\n\t" "vmov s2, s3, %[tmp], %[tmp]\n\t"
        "vmov s4, s5, %[tmp], %[tmp]\n\t" "vmov s6, s7, %[tmp], %[tmp]\n\t"
        "cmp %[singles], #0\n\t" "beq 2f\n\t"
        "1:\n\t"
        "vldmia %[a0]!, {s8}\n\t" "vldmia %[a1]!, {s16}\n\t"
        "vldmia %[b0]!, {s24}\n\t" "vldmia %[b1]!, {s25}\n\t"
        "vldmia %[b2]!, {s26}\n\t" "vldmia %[b3]!, {s27}\n\t"
        MT_ROW4("vfma.f32", 0, 1, 2, 3, 8, 24, 25, 26, 27)
        MT_ROW4("vfma.f32", 4, 5, 6, 7, 16, 24, 25, 26, 27)
        "subs %[singles], %[singles], #1\n\t" "bne 1b\n\t"
        "2:\n\t"
        "cmp %[octets], #0\n\t" "beq 4f\n\t"
        "3:\n\t"
        "vldmia %[a0]!, {s8-s15}\n\t" "vldmia %[a1]!, {s16-s23}\n\t"
        "vldmia %[b0]!, {s24-s31}\n\t" MT_NT2_DOT8(0, 4)
        "vldmia %[b1]!, {s24-s31}\n\t" MT_NT2_DOT8(1, 5)
        "vldmia %[b2]!, {s24-s31}\n\t" MT_NT2_DOT8(2, 6)
        "vldmia %[b3]!, {s24-s31}\n\t" MT_NT2_DOT8(3, 7)
        "subs %[octets], %[octets], #1\n\t" "bne 3b\n\t"
        "4:\n\t"
        "ldr %[a0], %[c]\n\t"
        "ldr %[a1], %[ldc]\n\t"
        "vldr s16, %[alpha]\n\t"
        MT_NT2_UPDATE_ROW(0, 1, 2, 3)
        "add %[a0], %[a0], %[a1]\n\t"
        MT_NT2_UPDATE_ROW(4, 5, 6, 7)
        : [a0] "+r" (a0), [a1] "+r" (a1), [b0] "+r" (b0), [b1] "+r" (b1), [b2] "+r" (b2),
          [b3] "+r" (b3), [singles] "+r" (singles), [octets] "+r" (octets), [tmp] "=&r" (tmp)
        : MT_UPDATE_4X4_OPERANDS
        : MT_CLOBBER_S0_15, MT_CLOBBER_S16_31, "cc", "memory");
#undef MT_NT2_DOT8
#undef MT_NT2_UPDATE_ROW
}
#endif

// C[i][j] += alpha * sum_k A[i][k] * B[j][k] for a 4x4 block; k >= 1.
MT_BLOCK void nt_4x4(int k, const float *a, int lda, const float *b, int ldb, float alpha,
    float *c, int ldc) {
#if MT_GEMM_ASM
    nt_2x4(k, a, lda, b, ldb, alpha, c, ldc);
    nt_2x4(k, a + 2 * lda, lda, b, ldb, alpha, c + 2 * ldc, ldc);
#else
    const float *a0 = a, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
    const float *b0 = b, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
    MT_C_SUMS4X4;
#define MT_NT_K(t) MT_C_OUTER16(a0[t], a1[t], a2[t], a3[t], b0[t], b1[t], b2[t], b3[t])
#define MT_NT_STEP(n) a0 += n; a1 += n; a2 += n; a3 += n; b0 += n; b1 += n; b2 += n; b3 += n;
    MT_NT_KLOOP(MT_NT_K, MT_NT_STEP)
#undef MT_NT_STEP
#undef MT_NT_K
    MT_C_ADD4X4(c, ldc, alpha)
#endif
}

// C[i][j] += alpha * sum_k A[i][k] * B[k][j] for a 4x4 block; k >= 1.
MT_BLOCK void nn_4x4(int k, const float *a, int lda, const float *b, int ldb, float alpha,
    float *c, int ldc) {
    const float *a0 = a, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
#if MT_GEMM_ASM
    // s16..s27: A rows, three k each (row i from s16 + 3i). s28..s31: one row of B.
    const int ldc_bytes = ldc * 4;
    int singles = (k - 1) % 3, triples = (k - 1) / 3;
#define MT_NN_B_ROW "vldmia %[b], {s28-s31}\n\t" "add %[b], %[b], %[ldb]\n\t"
#define MT_NN_STEP1(op) \
        "vldmia %[a0]!, {s16}\n\t" "vldmia %[a1]!, {s19}\n\t" \
        "vldmia %[a2]!, {s22}\n\t" "vldmia %[a3]!, {s25}\n\t" \
        MT_NN_B_ROW MT_OUTER16(op, 16, 19, 22, 25, 28, 29, 30, 31)
    __asm__ volatile (
        MT_NN_STEP1("vmul.f32")
        "cmp %[singles], #0\n\t" "beq 2f\n\t"
        "1:\n\t"
        MT_NN_STEP1("vfma.f32")
        "subs %[singles], %[singles], #1\n\t" "bne 1b\n\t"
        "2:\n\t"
        "cmp %[triples], #0\n\t" "beq 4f\n\t"
        "3:\n\t"
        "vldmia %[a0]!, {s16-s18}\n\t" "vldmia %[a1]!, {s19-s21}\n\t"
        "vldmia %[a2]!, {s22-s24}\n\t" "vldmia %[a3]!, {s25-s27}\n\t"
        MT_NN_B_ROW MT_OUTER16("vfma.f32", 16, 19, 22, 25, 28, 29, 30, 31)
        MT_NN_B_ROW MT_OUTER16("vfma.f32", 17, 20, 23, 26, 28, 29, 30, 31)
        MT_NN_B_ROW MT_OUTER16("vfma.f32", 18, 21, 24, 27, 28, 29, 30, 31)
        "subs %[triples], %[triples], #1\n\t" "bne 3b\n\t"
        "4:\n\t"
        MT_UPDATE_4X4("%[a0]", "%[a1]")
        : [a0] "+r" (a0), [a1] "+r" (a1), [a2] "+r" (a2), [a3] "+r" (a3), [b] "+r" (b),
          [singles] "+r" (singles), [triples] "+r" (triples)
        : [ldb] "r" (ldb * 4), MT_UPDATE_4X4_OPERANDS
        : MT_CLOBBER_S0_15, MT_CLOBBER_S16_31, "cc", "memory");
#undef MT_NN_STEP1
#undef MT_NN_B_ROW
#else
    MT_C_SUMS4X4;
#define MT_NN_K(t, row) MT_C_OUTER16(a0[t], a1[t], a2[t], a3[t], row[0], row[1], row[2], row[3])
    MT_NN_KLOOP(MT_NN_K)
#undef MT_NN_K
    MT_C_ADD4X4(c, ldc, alpha)
#endif
}

#if MT_GEMM_ASM
// C[i][j] += alpha * sum_k A[i][k] * B[k][j] for a 2x8 block; k >= 1. Four k of both A
// rows in registers, each B row (8 floats) loaded once for both: 2 + 4 x (vldmia + add) +
// 64 vfma + 2 loop instructions per four k (0.842 MAC/instruction; 4x4 blocks 0.800).
MT_BLOCK void nn_2x8(int k, const float *a, int lda, const float *b, int ldb, float alpha,
    float *c, int ldc) {
    const float *a0 = a, *a1 = a0 + lda;
    const int ldc_bytes = ldc * 4;
    int singles = k & 3, quads = k >> 2, tmp;
    // s0..s7 / s8..s15: the two C rows' sums; s16..s19 / s20..s23: four k of A row 0 / 1;
    // s24..s31: one B row.
#define MT_NN2_B_ROW "vldmia %[b], {s24-s31}\n\t" "add %[b], %[b], %[ldb]\n\t"
#define MT_NN2_ROWS(x0, x1) \
        "vfma.f32 s0, s" #x0 ", s24\n\t" "vfma.f32 s8, s" #x1 ", s24\n\t" \
        "vfma.f32 s1, s" #x0 ", s25\n\t" "vfma.f32 s9, s" #x1 ", s25\n\t" \
        "vfma.f32 s2, s" #x0 ", s26\n\t" "vfma.f32 s10, s" #x1 ", s26\n\t" \
        "vfma.f32 s3, s" #x0 ", s27\n\t" "vfma.f32 s11, s" #x1 ", s27\n\t" \
        "vfma.f32 s4, s" #x0 ", s28\n\t" "vfma.f32 s12, s" #x1 ", s28\n\t" \
        "vfma.f32 s5, s" #x0 ", s29\n\t" "vfma.f32 s13, s" #x1 ", s29\n\t" \
        "vfma.f32 s6, s" #x0 ", s30\n\t" "vfma.f32 s14, s" #x1 ", s30\n\t" \
        "vfma.f32 s7, s" #x0 ", s31\n\t" "vfma.f32 s15, s" #x1 ", s31\n\t"
#define MT_NN2_UPDATE_ROW(c0, c1, c2, c3, c4, c5, c6, c7) \
        "vldmia %[a0], {s16-s23}\n\t" \
        "vfma.f32 s16, s" #c0 ", s24\n\t" "vfma.f32 s17, s" #c1 ", s24\n\t" \
        "vfma.f32 s18, s" #c2 ", s24\n\t" "vfma.f32 s19, s" #c3 ", s24\n\t" \
        "vfma.f32 s20, s" #c4 ", s24\n\t" "vfma.f32 s21, s" #c5 ", s24\n\t" \
        "vfma.f32 s22, s" #c6 ", s24\n\t" "vfma.f32 s23, s" #c7 ", s24\n\t" \
        "vstmia %[a0], {s16-s23}\n\t"
    __asm__ volatile (
        "movs %[tmp], #0\n\t"
        "vmov s0, s1, %[tmp], %[tmp]\n\t" "vmov s2, s3, %[tmp], %[tmp]\n\t"
        "vmov s4, s5, %[tmp], %[tmp]\n\t" "vmov s6, s7, %[tmp], %[tmp]\n\t"
        "vmov s8, s9, %[tmp], %[tmp]\n\t" "vmov s10, s11, %[tmp], %[tmp]\n\t"
        "vmov s12, s13, %[tmp], %[tmp]\n\t" "vmov s14, s15, %[tmp], %[tmp]\n\t"
        "cmp %[singles], #0\n\t" "beq 2f\n\t"
        "1:\n\t"
        "vldmia %[a0]!, {s16}\n\t" "vldmia %[a1]!, {s20}\n\t"
        MT_NN2_B_ROW MT_NN2_ROWS(16, 20)
        "subs %[singles], %[singles], #1\n\t" "bne 1b\n\t"
        "2:\n\t"
        "cmp %[quads], #0\n\t" "beq 4f\n\t"
        "3:\n\t"
        "vldmia %[a0]!, {s16-s19}\n\t" "vldmia %[a1]!, {s20-s23}\n\t"
        MT_NN2_B_ROW MT_NN2_ROWS(16, 20)
        MT_NN2_B_ROW MT_NN2_ROWS(17, 21)
        MT_NN2_B_ROW MT_NN2_ROWS(18, 22)
        MT_NN2_B_ROW MT_NN2_ROWS(19, 23)
        "subs %[quads], %[quads], #1\n\t" "bne 3b\n\t"
        "4:\n\t"
        "ldr %[a0], %[c]\n\t"
        "ldr %[a1], %[ldc]\n\t"
        "vldr s24, %[alpha]\n\t"
        MT_NN2_UPDATE_ROW(0, 1, 2, 3, 4, 5, 6, 7)
        "add %[a0], %[a0], %[a1]\n\t"
        MT_NN2_UPDATE_ROW(8, 9, 10, 11, 12, 13, 14, 15)
        : [a0] "+r" (a0), [a1] "+r" (a1), [b] "+r" (b), [singles] "+r" (singles),
          [quads] "+r" (quads), [tmp] "=&r" (tmp)
        : [ldb] "r" (ldb * 4), MT_UPDATE_4X4_OPERANDS
        : MT_CLOBBER_S0_15, MT_CLOBBER_S16_31, "cc", "memory");
#undef MT_NN2_B_ROW
#undef MT_NN2_ROWS
#undef MT_NN2_UPDATE_ROW
}
#endif

// C[i][j] += alpha * sum_k A[k][i] * B[k][j] for a 4x4 block (a sum of outer products);
// k >= 1.
MT_BLOCK void tn_4x4(int k, const float *a, int lda, const float *b, int ldb, float alpha,
    float *c, int ldc) {
#if MT_GEMM_ASM
    // s16..s19 / s20..s23: A rows, s24..s27 / s28..s31: B rows, for two k.
    const int ldc_bytes = ldc * 4;
    int pairs = k - 1;
    __asm__ volatile (
        "vldmia %[a], {s16-s19}\n\t" "add %[a], %[a], %[lda]\n\t"
        "vldmia %[b], {s24-s27}\n\t" "add %[b], %[b], %[ldb]\n\t"
        MT_OUTER16("vmul.f32", 16, 17, 18, 19, 24, 25, 26, 27)
        "tst %[pairs], #1\n\t"
        "beq 1f\n\t"
        "vldmia %[a], {s16-s19}\n\t" "add %[a], %[a], %[lda]\n\t"
        "vldmia %[b], {s24-s27}\n\t" "add %[b], %[b], %[ldb]\n\t"
        MT_OUTER16("vfma.f32", 16, 17, 18, 19, 24, 25, 26, 27)
        "1:\n\t"
        "lsrs %[pairs], %[pairs], #1\n\t"
        "beq 3f\n\t"
        "2:\n\t"
        "vldmia %[a], {s16-s19}\n\t" "add %[a], %[a], %[lda]\n\t"
        "vldmia %[b], {s24-s27}\n\t" "add %[b], %[b], %[ldb]\n\t"
        "vldmia %[a], {s20-s23}\n\t" "add %[a], %[a], %[lda]\n\t"
        "vldmia %[b], {s28-s31}\n\t" "add %[b], %[b], %[ldb]\n\t"
        MT_OUTER16("vfma.f32", 16, 17, 18, 19, 24, 25, 26, 27)
        MT_OUTER16("vfma.f32", 20, 21, 22, 23, 28, 29, 30, 31)
        "subs %[pairs], %[pairs], #1\n\t"
        "bne 2b\n\t"
        "3:\n\t"
        MT_UPDATE_4X4("%[a]", "%[b]")
        : [a] "+r" (a), [b] "+r" (b), [pairs] "+r" (pairs)
        : [lda] "r" (lda * 4), [ldb] "r" (ldb * 4), MT_UPDATE_4X4_OPERANDS
        : MT_CLOBBER_S0_15, MT_CLOBBER_S16_31, "cc", "memory");
#else
    MT_C_SUMS4X4;
#define MT_TN_K(ra, rb) MT_C_OUTER16(ra[0], ra[1], ra[2], ra[3], rb[0], rb[1], rb[2], rb[3])
    MT_TN_KLOOP(MT_TN_K)
#undef MT_TN_K
    MT_C_ADD4X4(c, ldc, alpha)
#endif
}

// c[j] += alpha * sum_k a[k] * B[j][k] for j < 4: four dot products sharing a
// (matrix-vector, e.g. a Linear layer's forward pass at batch 1).
MT_BLOCK void nt_1x4(int k, const float *a, const float *b, int ldb, float alpha, float *c) {
    const float *b0 = b, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
#if MT_GEMM_ASM
    // s0..s3: sums, s8..s15: 8 floats of a, s16..s23: 8 floats of one B row.
    int singles = k & 7, octets = k >> 3, tmp;
#define MT_DOT8(acc, row) \
    "vldmia " row "!, {s16-s23}\n\t" \
    "vfma.f32 " acc ", s8, s16\n\t" "vfma.f32 " acc ", s9, s17\n\t" \
    "vfma.f32 " acc ", s10, s18\n\t" "vfma.f32 " acc ", s11, s19\n\t" \
    "vfma.f32 " acc ", s12, s20\n\t" "vfma.f32 " acc ", s13, s21\n\t" \
    "vfma.f32 " acc ", s14, s22\n\t" "vfma.f32 " acc ", s15, s23\n\t"
    __asm__ volatile (
        "movs %[tmp], #0\n\t"
        "vmov s0, s1, %[tmp], %[tmp]\n\t"
        "vmov s2, s3, %[tmp], %[tmp]\n\t"
        "cmp %[singles], #0\n\t" "beq 2f\n\t"
        "1:\n\t"
        "vldmia %[a]!, {s8}\n\t"
        "vldmia %[b0]!, {s16}\n\t" "vldmia %[b1]!, {s17}\n\t"
        "vldmia %[b2]!, {s18}\n\t" "vldmia %[b3]!, {s19}\n\t"
        "vfma.f32 s0, s8, s16\n\t" "vfma.f32 s1, s8, s17\n\t"
        "vfma.f32 s2, s8, s18\n\t" "vfma.f32 s3, s8, s19\n\t"
        "subs %[singles], %[singles], #1\n\t"
        "bne 1b\n\t"
        "2:\n\t"
        "cmp %[octets], #0\n\t" "beq 4f\n\t"
        "3:\n\t"
        "vldmia %[a]!, {s8-s15}\n\t"
        MT_DOT8("s0", "%[b0]") MT_DOT8("s1", "%[b1]") MT_DOT8("s2", "%[b2]") MT_DOT8("s3", "%[b3]")
        "subs %[octets], %[octets], #1\n\t"
        "bne 3b\n\t"
        "4:\n\t"
        "vmov s16, %[alpha]\n\t"
        "vldmia %[c], {s8-s11}\n\t"
        "vfma.f32 s8, s0, s16\n\t" "vfma.f32 s9, s1, s16\n\t"
        "vfma.f32 s10, s2, s16\n\t" "vfma.f32 s11, s3, s16\n\t"
        "vstmia %[c], {s8-s11}\n\t"
        : [a] "+r" (a), [b0] "+r" (b0), [b1] "+r" (b1), [b2] "+r" (b2), [b3] "+r" (b3),
          [singles] "+r" (singles), [octets] "+r" (octets), [tmp] "=&r" (tmp)
        : [c] "r" (c), [alpha] "r" (alpha)
        : "s0", "s1", "s2", "s3", "s8", "s9", "s10", "s11", "s12", "s13", "s14", "s15",
          "s16", "s17", "s18", "s19", "s20", "s21", "s22", "s23", "cc", "memory");
#undef MT_DOT8
#else
    float c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f;
#define MT_DOT4_K(t) { \
        const float x = a[t]; \
        c0 += x * b0[t]; c1 += x * b1[t]; c2 += x * b2[t]; c3 += x * b3[t]; }
#define MT_DOT4_STEP(n) a += n; b0 += n; b1 += n; b2 += n; b3 += n;
    MT_NT_KLOOP(MT_DOT4_K, MT_DOT4_STEP)
#undef MT_DOT4_STEP
#undef MT_DOT4_K
    c[0] += alpha * c0;
    c[1] += alpha * c1;
    c[2] += alpha * c2;
    c[3] += alpha * c3;
#endif
}

// c[j] += alpha * sum_k a[k * a_step] * B[k][j] for j < 4: a vector times four columns.
static void xn_1x4(int k, const float *a, int a_step, const float *b, int ldb, float alpha,
    float *c) {
    float c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f;
#define MT_XN_K(x, r) { \
        const float x_ = (x); \
        c0 += x_ * r[0]; c1 += x_ * r[1]; c2 += x_ * r[2]; c3 += x_ * r[3]; }
    int kk = 0;
    if (a_step == 1) {
        // Four k per loop turn at constant offsets (see MT_C_SUMS4X4).
        for (; kk + 4 <= k; kk += 4) {
            const float *b1 = b + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
            MT_XN_K(a[0], b) MT_XN_K(a[1], b1) MT_XN_K(a[2], b2) MT_XN_K(a[3], b3)
            a += 4; b = b3 + ldb;
        }
    }
    for (; kk < k; kk++, a += a_step, b += ldb) {
        MT_XN_K(*a, b)
    }
#undef MT_XN_K
    c[0] += alpha * c0;
    c[1] += alpha * c1;
    c[2] += alpha * c2;
    c[3] += alpha * c3;
}

// c[j] += alpha * sum_k a[k] * B[k][j] for j < 8: a vector times eight columns (a Linear
// layer's grad_input at batch 1).
MT_BLOCK void nn_1x8(int k, const float *a, const float *b, int ldb, float alpha, float *c) {
#if MT_GEMM_ASM
    // s0..s7: sums, s8..s11: 4 floats of a, s16..s23: 8 floats of one B row.
    int singles = k & 3, quads = k >> 2, tmp;
#define MT_AXPY8(x) \
    "vldmia %[b], {s16-s23}\n\t" "add %[b], %[b], %[ldb]\n\t" \
    "vfma.f32 s0, " x ", s16\n\t" "vfma.f32 s1, " x ", s17\n\t" \
    "vfma.f32 s2, " x ", s18\n\t" "vfma.f32 s3, " x ", s19\n\t" \
    "vfma.f32 s4, " x ", s20\n\t" "vfma.f32 s5, " x ", s21\n\t" \
    "vfma.f32 s6, " x ", s22\n\t" "vfma.f32 s7, " x ", s23\n\t"
    __asm__ volatile (
        "movs %[tmp], #0\n\t"
        "vmov s0, s1, %[tmp], %[tmp]\n\t" "vmov s2, s3, %[tmp], %[tmp]\n\t"
        "vmov s4, s5, %[tmp], %[tmp]\n\t" "vmov s6, s7, %[tmp], %[tmp]\n\t"
        "cmp %[singles], #0\n\t" "beq 2f\n\t"
        "1:\n\t"
        "vldmia %[a]!, {s8}\n\t"
        MT_AXPY8("s8")
        "subs %[singles], %[singles], #1\n\t"
        "bne 1b\n\t"
        "2:\n\t"
        "cmp %[quads], #0\n\t" "beq 4f\n\t"
        "3:\n\t"
        "vldmia %[a]!, {s8-s11}\n\t"
        MT_AXPY8("s8") MT_AXPY8("s9") MT_AXPY8("s10") MT_AXPY8("s11")
        "subs %[quads], %[quads], #1\n\t"
        "bne 3b\n\t"
        "4:\n\t"
        "vmov s8, %[alpha]\n\t"
        "vldmia %[c], {s16-s23}\n\t"
        "vfma.f32 s16, s0, s8\n\t" "vfma.f32 s17, s1, s8\n\t"
        "vfma.f32 s18, s2, s8\n\t" "vfma.f32 s19, s3, s8\n\t"
        "vfma.f32 s20, s4, s8\n\t" "vfma.f32 s21, s5, s8\n\t"
        "vfma.f32 s22, s6, s8\n\t" "vfma.f32 s23, s7, s8\n\t"
        "vstmia %[c], {s16-s23}\n\t"
        : [a] "+r" (a), [b] "+r" (b), [singles] "+r" (singles), [quads] "+r" (quads),
          [tmp] "=&r" (tmp)
        : [ldb] "r" (ldb * 4), [c] "r" (c), [alpha] "r" (alpha)
        : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11",
          "s16", "s17", "s18", "s19", "s20", "s21", "s22", "s23", "cc", "memory");
#undef MT_AXPY8
#else
    xn_1x4(k, a, 1, b, ldb, alpha, c);
    xn_1x4(k, a, 1, b + 4, ldb, alpha, c + 4);
#endif
}

// y[j] += s * x[j] for j < n.
static void axpy(int n, float s, const float *x, float *y) {
    int j = 0;
    for (; j + 4 <= n; j += 4, x += 4, y += 4) {
        y[0] += s * x[0]; y[1] += s * x[1]; y[2] += s * x[2]; y[3] += s * x[3];
    }
    for (; j < n; j++) {
        *y++ += s * *x++;
    }
}

// Row r of C (c + r * ldc) += s[r] * x for r < 4: four rank-1 updates sharing x.
MT_PANEL void ger_4(int n, const float *s, const float *x, float *c, int ldc) {
    float *c0 = c, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
    const float s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
#if MT_GEMM_ASM
    // s8..s15: 8 floats of x, s16..s23: 8 floats of one C row.
    int singles = n & 7, octets = n >> 3;
#define MT_ROW_UPDATE8(row, scale) \
    "vldmia " row ", {s16-s23}\n\t" \
    "vfma.f32 s16, s8, " scale "\n\t" "vfma.f32 s17, s9, " scale "\n\t" \
    "vfma.f32 s18, s10, " scale "\n\t" "vfma.f32 s19, s11, " scale "\n\t" \
    "vfma.f32 s20, s12, " scale "\n\t" "vfma.f32 s21, s13, " scale "\n\t" \
    "vfma.f32 s22, s14, " scale "\n\t" "vfma.f32 s23, s15, " scale "\n\t" \
    "vstmia " row "!, {s16-s23}\n\t"
#define MT_ROW_UPDATE1(row, scale) \
    "vldr s16, [" row "]\n\t" "vfma.f32 s16, s8, " scale "\n\t" "vstmia " row "!, {s16}\n\t"
    __asm__ volatile (
        "cmp %[octets], #0\n\t" "beq 2f\n\t"
        "1:\n\t"
        "vldmia %[x]!, {s8-s15}\n\t"
        MT_ROW_UPDATE8("%[c0]", "%[s0]") MT_ROW_UPDATE8("%[c1]", "%[s1]")
        MT_ROW_UPDATE8("%[c2]", "%[s2]") MT_ROW_UPDATE8("%[c3]", "%[s3]")
        "subs %[octets], %[octets], #1\n\t" "bne 1b\n\t"
        "2:\n\t"
        "cmp %[singles], #0\n\t" "beq 4f\n\t"
        "3:\n\t"
        "vldmia %[x]!, {s8}\n\t"
        MT_ROW_UPDATE1("%[c0]", "%[s0]") MT_ROW_UPDATE1("%[c1]", "%[s1]")
        MT_ROW_UPDATE1("%[c2]", "%[s2]") MT_ROW_UPDATE1("%[c3]", "%[s3]")
        "subs %[singles], %[singles], #1\n\t" "bne 3b\n\t"
        "4:\n\t"
        : [x] "+r" (x), [c0] "+r" (c0), [c1] "+r" (c1), [c2] "+r" (c2), [c3] "+r" (c3),
          [singles] "+r" (singles), [octets] "+r" (octets)
        : [s0] "t" (s0), [s1] "t" (s1), [s2] "t" (s2), [s3] "t" (s3)
        : "s8", "s9", "s10", "s11", "s12", "s13", "s14", "s15",
          "s16", "s17", "s18", "s19", "s20", "s21", "s22", "s23", "cc", "memory");
#undef MT_ROW_UPDATE8
#undef MT_ROW_UPDATE1
#else
    // Four columns per loop turn at constant offsets (see MT_C_SUMS4X4).
#define MT_GER_COL(t) { \
        const float v = x[t]; \
        c0[t] += s0 * v; c1[t] += s1 * v; c2[t] += s2 * v; c3[t] += s3 * v; }
    int j = 0;
    for (; j + 4 <= n; j += 4, x += 4, c0 += 4, c1 += 4, c2 += 4, c3 += 4) {
        MT_GER_COL(0) MT_GER_COL(1) MT_GER_COL(2) MT_GER_COL(3)
    }
    for (; j < n; j++, x++, c0++, c1++, c2++, c3++) {
        MT_GER_COL(0)
    }
#undef MT_GER_COL
#endif
}

// Panels: the blocks of one row of blocks of C (4 rows, or 1 for matrix-vector shapes),
// j < n4 (a multiple of 4).

MT_PANEL void nt_panel_4(int n4, int k, const float *a, int lda, const float *b, int ldb,
    float alpha, float *c, int ldc) {
    int j = 0;
#if MT_GEMM_WIDE
    for (; j < wide_cols(n4); j += 6) {
        nt_4x6(k, a, lda, b + j * ldb, ldb, alpha, c + j, ldc);
    }
#endif
    for (; j < n4; j += 4) {
        nt_4x4(k, a, lda, b + j * ldb, ldb, alpha, c + j, ldc);
    }
}

MT_PANEL void nn_panel_4(int n4, int k, const float *a, int lda, const float *b, int ldb,
    float alpha, float *c, int ldc) {
    int j = 0;
#if MT_GEMM_ASM
    for (; j + 8 <= n4; j += 8) {
        nn_2x8(k, a, lda, b + j, ldb, alpha, c + j, ldc);
        nn_2x8(k, a + 2 * lda, lda, b + j, ldb, alpha, c + 2 * ldc + j, ldc);
    }
#elif MT_GEMM_WIDE
    for (; j < wide_cols(n4); j += 6) {
        nn_4x6(k, a, lda, b + j, ldb, alpha, c + j, ldc);
    }
#endif
    for (; j < n4; j += 4) {
        nn_4x4(k, a, lda, b + j, ldb, alpha, c + j, ldc);
    }
}

MT_PANEL void tn_panel_4(int n4, int k, const float *a, int lda, const float *b, int ldb,
    float alpha, float *c, int ldc) {
    int j = 0;
#if MT_GEMM_WIDE
    for (; j < wide_cols(n4); j += 6) {
        tn_4x6(k, a, lda, b + j, ldb, alpha, c + j, ldc);
    }
#endif
    for (; j < n4; j += 4) {
        tn_4x4(k, a, lda, b + j, ldb, alpha, c + j, ldc);
    }
}

MT_PANEL void nt_panel_1(int n4, int k, const float *a, const float *b, int ldb, float alpha,
    float *c) {
    for (int j = 0; j < n4; j += 4) {
        nt_1x4(k, a, b + j * ldb, ldb, alpha, c + j);
    }
}

MT_PANEL void nn_panel_1(int n4, int k, const float *a, const float *b, int ldb, float alpha,
    float *c) {
    int j = 0;
    for (; j + 8 <= n4; j += 8) {
        nn_1x8(k, a, b + j, ldb, alpha, c + j);
    }
    if (j < n4) {
        xn_1x4(k, a, 1, b + j, ldb, alpha, c + j);
    }
}

static float dot_strided(int k, const float *a, int a_step, const float *b, int b_step) {
    float s = 0.0f;
    for (int kk = 0; kk < k; kk++, a += a_step, b += b_step) {
        s += *a * *b;
    }
    return s;
}

// Leftover rows i < m, columns j < n of C through strides: op(A)[i][kk] is
// a[i*a_row + kk*a_k], op(B)[kk][j] is b[j*b_col + kk*b_k].
static void edge(int m, int n, int k, const float *a, int a_row, int a_k, const float *b,
    int b_col, int b_k, float alpha, float *c, int ldc) {
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            c[i * ldc + j] += alpha * dot_strided(k, a + i * a_row, a_k, b + j * b_col, b_k);
        }
    }
}

void mt_gemm_f32_nt(const mt_gemm_shape_t *s, float alpha, const float *a, const float *b, float *c) {
    const int m = s->m, n = s->n, k = s->k, lda = s->lda, ldb = s->ldb, ldc = s->ldc;
    const int n4 = n & ~3;
    if (k <= 0) {
        return;
    }
    int i = 0;
    for (; i + 4 <= m; i += 4) {
        const float *ai = a + i * lda;
        float *ci = c + i * ldc;
        nt_panel_4(n4, k, ai, lda, b, ldb, alpha, ci, ldc);
        edge(4, n - n4, k, ai, lda, 1, b + n4 * ldb, ldb, 1, alpha, ci + n4, ldc);
    }
    for (; i < m; i++) {
        const float *ai = a + i * lda;
        float *ci = c + i * ldc;
        nt_panel_1(n4, k, ai, b, ldb, alpha, ci);
        edge(1, n - n4, k, ai, lda, 1, b + n4 * ldb, ldb, 1, alpha, ci + n4, ldc);
    }
}

void mt_gemm_f32_nn(const mt_gemm_shape_t *s, float alpha, const float *a, const float *b, float *c) {
    const int m = s->m, n = s->n, k = s->k, lda = s->lda, ldb = s->ldb, ldc = s->ldc;
    const int n4 = n & ~3;
    if (k <= 0) {
        return;
    }
    int i = 0;
    for (; i + 4 <= m; i += 4) {
        const float *ai = a + i * lda;
        float *ci = c + i * ldc;
        nn_panel_4(n4, k, ai, lda, b, ldb, alpha, ci, ldc);
        edge(4, n - n4, k, ai, lda, 1, b + n4, 1, ldb, alpha, ci + n4, ldc);
    }
    for (; i < m; i++) {
        const float *ai = a + i * lda;
        float *ci = c + i * ldc;
        nn_panel_1(n4, k, ai, b, ldb, alpha, ci);
        edge(1, n - n4, k, ai, lda, 1, b + n4, 1, ldb, alpha, ci + n4, ldc);
    }
}

void mt_gemm_f32_tn(const mt_gemm_shape_t *s, float alpha, const float *a, const float *b, float *c) {
    const int m = s->m, n = s->n, k = s->k, lda = s->lda, ldb = s->ldb, ldc = s->ldc;
    const int n4 = n & ~3;
    if (k <= 0) {
        return;
    }
    if (k <= TN_RANK1_MAX_K) {
        // A few rank-1 updates (e.g. a Linear layer's weight gradient at batch 1).
        for (int kk = 0; kk < k; kk++) {
            const float *ak = a + kk * lda, *bk = b + kk * ldb;
            int i = 0;
            for (; i + 4 <= m; i += 4) {
                const float scale[4] = { alpha * ak[i], alpha * ak[i + 1], alpha * ak[i + 2],
                                         alpha * ak[i + 3] };
                ger_4(n, scale, bk, c + i * ldc, ldc);
            }
            for (; i < m; i++) {
                axpy(n, alpha * ak[i], bk, c + i * ldc);
            }
        }
        return;
    }
    int i = 0;
    for (; i + 4 <= m; i += 4) {
        float *ci = c + i * ldc;
        tn_panel_4(n4, k, a + i, lda, b, ldb, alpha, ci, ldc);
        edge(4, n - n4, k, a + i, 1, lda, b + n4, 1, ldb, alpha, ci + n4, ldc);
    }
    for (; i < m; i++) {
        float *ci = c + i * ldc;
        for (int j = 0; j < n4; j += 4) {
            xn_1x4(k, a + i, lda, b + j, ldb, alpha, ci + j);
        }
        edge(1, n - n4, k, a + i, 1, lda, b + n4, 1, ldb, alpha, ci + n4, ldc);
    }
}

// ---- packed operands ------------------------------------------------------------------------
//
// A 4x4 block's inner loop on unpacked operands spends 8 loads (and for nn/tn 3-4 pointer
// steps) per 48 or 32 vfma: 0.76-0.83 MAC/instruction. With A's 4 rows and B's 4 columns
// copied k-major (panel[kk][0..3]), two k-steps of each are one 8-register vldmia, and four
// k-steps take 4 vldmia + 64 vfma + 2 loop instructions (0.914). B is packed once per k
// chunk for all column blocks, A once per row block, so the copies cost about
// 1/m + 1/n instructions per MAC.

// Workspace ceiling (floats) and the smallest m, n and k chunk that repay the copies.
#define PACK_BUDGET 2048
#define PACK_MIN 16

size_t mt_gemm_f32_pack_floats(int m, int n, int k) {
#if MT_GEMM_ASM
    if (m < PACK_MIN || n < PACK_MIN || k < PACK_MIN) {
        return 0;
    }
    // min(need, budget), never more for a smaller m or k (a layer sizes its scratch for
    // its largest products); 0 for n whose panels leave chunks under PACK_MIN deep.
    const size_t width = (size_t)(n & ~3) + 4, budget = PACK_BUDGET;
    if (budget / width < PACK_MIN) {
        return 0;
    }
    return (size_t)k <= budget / width ? width * (size_t)k : budget;
#else
    (void)m; (void)n; (void)k;
    return 0;
#endif
}

#if MT_GEMM_ASM
// C[i][j] += alpha * sum_kk ap[kk][i] * bp[kk][j] for a 4x4 block; k >= 1.
MT_BLOCK void packed_4x4(int k, const float *ap, const float *bp, float alpha, float *c,
    int ldc) {
    const int ldc_bytes = ldc * 4;
    int rest = k - 1;
#define MT_PK_STEP1(op) \
        "vldmia %[ap]!, {s16-s19}\n\t" "vldmia %[bp]!, {s24-s27}\n\t" \
        MT_OUTER16(op, 16, 17, 18, 19, 24, 25, 26, 27)
#define MT_PK_STEP2 \
        "vldmia %[ap]!, {s16-s23}\n\t" "vldmia %[bp]!, {s24-s31}\n\t" \
        MT_OUTER16("vfma.f32", 16, 17, 18, 19, 24, 25, 26, 27) \
        MT_OUTER16("vfma.f32", 20, 21, 22, 23, 28, 29, 30, 31)
    __asm__ volatile (
        MT_PK_STEP1("vmul.f32")
        "tst %[rest], #1\n\t" "beq 1f\n\t"
        MT_PK_STEP1("vfma.f32")
        "1:\n\t"
        "tst %[rest], #2\n\t" "beq 2f\n\t"
        MT_PK_STEP2
        "2:\n\t"
        "lsrs %[rest], %[rest], #2\n\t" "beq 4f\n\t"
        "3:\n\t"
        MT_PK_STEP2 MT_PK_STEP2
        "subs %[rest], %[rest], #1\n\t" "bne 3b\n\t"
        "4:\n\t"
        MT_UPDATE_4X4("%[ap]", "%[bp]")
        : [ap] "+r" (ap), [bp] "+r" (bp), [rest] "+r" (rest)
        : MT_UPDATE_4X4_OPERANDS
        : MT_CLOBBER_S0_15, MT_CLOBBER_S16_31, "cc", "memory");
#undef MT_PK_STEP1
#undef MT_PK_STEP2
}

MT_PANEL void packed_panel_4(int n4, int k, const float *ap, const float *bp, float alpha,
    float *c, int ldc) {
    for (int j = 0; j < n4; j += 4) {
        packed_4x4(k, ap, bp + j * k, alpha, c + j, ldc);
    }
}

// dst[kk][r] = src[r * ld + kk] for r < 4, kk < k: four rows of k contiguous floats.
static void pack_rows4(int k, const float *src, int ld, float *dst) {
    const float *r0 = src, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;
    int quads = k >> 2, singles = k & 3;
#define MT_PACK_K(s0, s1, s2, s3) \
        "vldmia %[r0]!, {s" #s0 "}\n\t" "vldmia %[r1]!, {s" #s1 "}\n\t" \
        "vldmia %[r2]!, {s" #s2 "}\n\t" "vldmia %[r3]!, {s" #s3 "}\n\t"
    __asm__ volatile (
        "cmp %[quads], #0\n\t" "beq 2f\n\t"
        "1:\n\t"
        MT_PACK_K(0, 1, 2, 3) MT_PACK_K(4, 5, 6, 7) MT_PACK_K(8, 9, 10, 11)
        MT_PACK_K(12, 13, 14, 15)
        "vstmia %[dst]!, {s0-s15}\n\t"
        "subs %[quads], %[quads], #1\n\t" "bne 1b\n\t"
        "2:\n\t"
        "cmp %[singles], #0\n\t" "beq 4f\n\t"
        "3:\n\t"
        MT_PACK_K(0, 1, 2, 3)
        "vstmia %[dst]!, {s0-s3}\n\t"
        "subs %[singles], %[singles], #1\n\t" "bne 3b\n\t"
        "4:\n\t"
        : [r0] "+r" (r0), [r1] "+r" (r1), [r2] "+r" (r2), [r3] "+r" (r3), [dst] "+r" (dst),
          [quads] "+r" (quads), [singles] "+r" (singles)
        :
        : MT_CLOBBER_S0_15, "cc", "memory");
#undef MT_PACK_K
}

// dst[kk][0..3] = src[kk * ld + 0..3] for kk < k: 4 contiguous floats per k-step.
static void pack_cols4(int k, const float *src, int ld, float *dst) {
    int pairs = k >> 1;
    __asm__ volatile (
        "cmp %[pairs], #0\n\t" "beq 2f\n\t"
        "1:\n\t"
        "vldmia %[src], {s0-s3}\n\t" "add %[src], %[src], %[ld]\n\t"
        "vldmia %[src], {s4-s7}\n\t" "add %[src], %[src], %[ld]\n\t"
        "vstmia %[dst]!, {s0-s7}\n\t"
        "subs %[pairs], %[pairs], #1\n\t" "bne 1b\n\t"
        "2:\n\t"
        "tst %[k], #1\n\t" "beq 3f\n\t"
        "vldmia %[src], {s0-s3}\n\t" "vstmia %[dst]!, {s0-s3}\n\t"
        "3:\n\t"
        : [src] "+r" (src), [dst] "+r" (dst), [pairs] "+r" (pairs)
        : [ld] "r" (ld * 4), [k] "r" (k)
        : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "cc", "memory");
}

// Four lines of an operand, k-major: line r, step kk at src[r * line + kk * step] (one of
// the two strides is 1).
static void pack_lines4(int k, const float *src, int line, int step, float *dst) {
    if (step == 1) {
        pack_rows4(k, src, line, dst);
    } else {
        pack_cols4(k, src, step, dst);
    }
}

// C[i][j] += alpha * sum_kk op(A)[i][kk] * op(B)[kk][j] for i < m4, j < n4 (multiples of 4),
// op(A)[i][kk] = a[i * a_row + kk * a_k], op(B)[kk][j] = b[j * b_col + kk * b_k]; the
// workspace holds kc x n4 floats of B and kc x 4 of A.
static void gemm_packed(int m4, int n4, int k, int kc, const float *a, int a_row, int a_k,
    const float *b, int b_col, int b_k, float alpha, float *c, int ldc, float *pack) {
    float *bp = pack, *ap = pack + n4 * kc;
    for (int k0 = 0; k0 < k; k0 += kc) {
        const int kk = k - k0 < kc ? k - k0 : kc;
        for (int j = 0; j < n4; j += 4) {
            pack_lines4(kk, b + j * b_col + k0 * b_k, b_col, b_k, bp + j * kk);
        }
        for (int i = 0; i < m4; i += 4) {
            pack_lines4(kk, a + i * a_row + k0 * a_k, a_row, a_k, ap);
            packed_panel_4(n4, kk, ap, bp, alpha, c + i * ldc, ldc);
        }
    }
}

// The packed part of an m x n x k product, or false to leave it all to the caller: k is
// cut into even chunks whose panels fit the workspace.
static int packed_part(const mt_gemm_shape_t *s, float alpha, const float *a, int a_row,
    int a_k, const float *b, int b_col, int b_k, float *c, float *pack, size_t pack_floats) {
    const size_t need = mt_gemm_f32_pack_floats(s->m, s->n, s->k);
    if (!pack || need == 0 || pack_floats < need) {
        return 0;
    }
    const int n4 = s->n & ~3, m4 = s->m & ~3, kc_max = (int)(need / (size_t)(n4 + 4));
    const int chunks = (s->k + kc_max - 1) / kc_max, kc = (s->k + chunks - 1) / chunks;
    gemm_packed(m4, n4, s->k, kc, a, a_row, a_k, b, b_col, b_k, alpha, c, s->ldc, pack);
    return 1;
}

// The rows and columns a packed part left: rows m4.. (all columns), columns n4.. of rows
// below m4, through the unpacked kernels.
typedef void gemm_fn(const mt_gemm_shape_t *, float, const float *, const float *, float *);

static void unpacked_rest(gemm_fn *fn, const mt_gemm_shape_t *s, float alpha, const float *a,
    int a_row, const float *b, int b_col, float *c) {
    const int m4 = s->m & ~3, n4 = s->n & ~3;
    const mt_gemm_shape_t rows = { s->m - m4, s->n, s->k, s->lda, s->ldb, s->ldc };
    const mt_gemm_shape_t cols = { m4, s->n - n4, s->k, s->lda, s->ldb, s->ldc };
    if (rows.m > 0) {
        fn(&rows, alpha, a + m4 * a_row, b, c + m4 * s->ldc);
    }
    if (cols.n > 0) {
        fn(&cols, alpha, a, b + n4 * b_col, c + n4);
    }
}
#endif

void mt_gemm_f32_nt_packed(const mt_gemm_shape_t *s, float alpha, const float *a, const float *b,
    float *c, float *pack, size_t pack_floats) {
#if MT_GEMM_ASM
    if (packed_part(s, alpha, a, s->lda, 1, b, s->ldb, 1, c, pack, pack_floats)) {
        unpacked_rest(mt_gemm_f32_nt, s, alpha, a, s->lda, b, s->ldb, c);
        return;
    }
#endif
    (void)pack; (void)pack_floats;
    mt_gemm_f32_nt(s, alpha, a, b, c);
}

void mt_gemm_f32_nn_packed(const mt_gemm_shape_t *s, float alpha, const float *a, const float *b,
    float *c, float *pack, size_t pack_floats) {
#if MT_GEMM_ASM
    if (packed_part(s, alpha, a, s->lda, 1, b, 1, s->ldb, c, pack, pack_floats)) {
        unpacked_rest(mt_gemm_f32_nn, s, alpha, a, s->lda, b, 1, c);
        return;
    }
#endif
    (void)pack; (void)pack_floats;
    mt_gemm_f32_nn(s, alpha, a, b, c);
}

void mt_gemm_f32_tn_packed(const mt_gemm_shape_t *s, float alpha, const float *a, const float *b,
    float *c, float *pack, size_t pack_floats) {
#if MT_GEMM_ASM
    if (packed_part(s, alpha, a, 1, s->lda, b, 1, s->ldb, c, pack, pack_floats)) {
        unpacked_rest(mt_gemm_f32_tn, s, alpha, a, 1, b, 1, c);
        return;
    }
#endif
    (void)pack; (void)pack_floats;
    mt_gemm_f32_tn(s, alpha, a, b, c);
}
