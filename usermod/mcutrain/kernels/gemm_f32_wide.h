// 4x6 blocks of the portable fp32 GEMM, for cores with 32 FP registers and no load-multiple
// (RISC-V F): the 24 sums of a block, one k of A's four rows and one B value at a time fit
// in 29 registers. A k then costs 10 loads and 24 multiply-adds (0.71 MAC per instruction
// before the loop's pointer steps) where a 4x4 block costs 8 loads per 16 (0.67). The k loops
// are the 4x4 blocks' (MT_*_KLOOP in gemm_f32.c), so each sum runs over k in the same order
// and results are the same bit for bit.
// Included by gemm_f32.c only (after its k loops and add_4x4); MCUTRAIN_GEMM_WIDE selects it
// on other hosts for the tests.
#ifndef MCUTRAIN_KERNELS_GEMM_F32_WIDE_H
#define MCUTRAIN_KERNELS_GEMM_F32_WIDE_H

#define MT_W_SUMS \
    float c00 = 0.0f, c01 = 0.0f, c02 = 0.0f, c03 = 0.0f, c04 = 0.0f, c05 = 0.0f; \
    float c10 = 0.0f, c11 = 0.0f, c12 = 0.0f, c13 = 0.0f, c14 = 0.0f, c15 = 0.0f; \
    float c20 = 0.0f, c21 = 0.0f, c22 = 0.0f, c23 = 0.0f, c24 = 0.0f, c25 = 0.0f; \
    float c30 = 0.0f, c31 = 0.0f, c32 = 0.0f, c33 = 0.0f, c34 = 0.0f, c35 = 0.0f
// Column j of the block += (x0_..x3_) * y.
#define MT_W_COL(j, y) { \
    const float y_ = (y); \
    c0##j += x0_ * y_; c1##j += x1_ * y_; c2##j += x2_ * y_; c3##j += x3_ * y_; }
// One k: column (x0..x3) of A times row (y0..y5) of B into the sums.
#define MT_W_OUTER24(x0, x1, x2, x3, y0, y1, y2, y3, y4, y5) { \
    const float x0_ = (x0), x1_ = (x1), x2_ = (x2), x3_ = (x3); \
    MT_W_COL(0, y0) MT_W_COL(1, y1) MT_W_COL(2, y2) MT_W_COL(3, y3) MT_W_COL(4, y4) \
    MT_W_COL(5, y5) }

// C's rows += alpha * the sums, straight from their registers.
#define MT_W_ADD_ROW(r, i) { \
    r[0] += alpha * c##i##0; r[1] += alpha * c##i##1; r[2] += alpha * c##i##2; \
    r[3] += alpha * c##i##3; r[4] += alpha * c##i##4; r[5] += alpha * c##i##5; }
#define MT_W_ADD(c, ldc, alpha) { \
    float *r0_ = (c), *r1_ = r0_ + (ldc), *r2_ = r1_ + (ldc), *r3_ = r2_ + (ldc); \
    MT_W_ADD_ROW(r0_, 0) MT_W_ADD_ROW(r1_, 1) MT_W_ADD_ROW(r2_, 2) MT_W_ADD_ROW(r3_, 3) }

// The blocks are inlined into the panel loops (MT_PANEL in gemm_f32.c), so the callee-saved
// FP registers they need are saved once a panel.
#define MT_W_BLOCK static inline __attribute__((always_inline))

// C[i][j] += alpha * sum_k A[i][k] * B[j][k] for a 4x6 block; k >= 1.
MT_W_BLOCK void nt_4x6(int k, const float *a, int lda, const float *b, int ldb, float alpha,
    float *c, int ldc) {
    const float *a0 = a, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
    const float *b0 = b, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb, *b4 = b3 + ldb;
    const float *b5 = b4 + ldb;
    MT_W_SUMS;
#define MT_NT_K(t) MT_W_OUTER24(a0[t], a1[t], a2[t], a3[t], b0[t], b1[t], b2[t], b3[t], b4[t], \
    b5[t])
#define MT_NT_STEP(n) a0 += n; a1 += n; a2 += n; a3 += n; \
    b0 += n; b1 += n; b2 += n; b3 += n; b4 += n; b5 += n;
    MT_NT_KLOOP(MT_NT_K, MT_NT_STEP)
#undef MT_NT_STEP
#undef MT_NT_K
    MT_W_ADD(c, ldc, alpha)
}

// C[i][j] += alpha * sum_k A[i][k] * B[k][j] for a 4x6 block; k >= 1.
MT_W_BLOCK void nn_4x6(int k, const float *a, int lda, const float *b, int ldb, float alpha,
    float *c, int ldc) {
    const float *a0 = a, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
    MT_W_SUMS;
#define MT_NN_K(t, r) MT_W_OUTER24(a0[t], a1[t], a2[t], a3[t], r[0], r[1], r[2], r[3], r[4], r[5])
    MT_NN_KLOOP(MT_NN_K)
#undef MT_NN_K
    MT_W_ADD(c, ldc, alpha)
}

// C[i][j] += alpha * sum_k A[k][i] * B[k][j] for a 4x6 block; k >= 1.
MT_W_BLOCK void tn_4x6(int k, const float *a, int lda, const float *b, int ldb, float alpha,
    float *c, int ldc) {
    MT_W_SUMS;
#define MT_TN_K(ra, rb) MT_W_OUTER24(ra[0], ra[1], ra[2], ra[3], rb[0], rb[1], rb[2], rb[3], \
    rb[4], rb[5])
    MT_TN_KLOOP(MT_TN_K)
#undef MT_TN_K
    MT_W_ADD(c, ldc, alpha)
}

// Columns [0, wide_cols(n4)) of a panel go in 4x6 blocks, the rest (a multiple of 4) in 4x4.
static inline int wide_cols(int n4) {
    return n4 / 12 * 12;
}

#undef MT_W_BLOCK
#undef MT_W_ADD
#undef MT_W_ADD_ROW
#undef MT_W_OUTER24
#undef MT_W_COL
#undef MT_W_SUMS

#endif
