// fp32 matrix products, the core of Linear and Conv2d (im2col) forward and backward.
// Plain C: no MicroPython headers, so they build and are tested as a host library too.
//
// Matrices are row-major with explicit row strides (lda, ldb, ldc, in elements), so a
// kernel can work on a tile of a larger matrix. Every product accumulates into C
// scaled by alpha: C += alpha * op(A) * op(B). Accumulating lets the backward pass add
// a weight gradient straight into the weights (alpha = -lr) or a momentum buffer.
#ifndef MCUTRAIN_KERNELS_GEMM_F32_H
#define MCUTRAIN_KERNELS_GEMM_F32_H

#include <stddef.h>

typedef struct {
    int m;    // rows of C
    int n;    // columns of C
    int k;    // the dimension summed over
    int lda, ldb, ldc;
} mt_gemm_shape_t;

// C[m][n] += alpha * sum_k A[m][k] * B[n][k]    (A: m x k, B: n x k; "A times B transposed")
void mt_gemm_f32_nt(const mt_gemm_shape_t *s, float alpha, const float *a, const float *b, float *c);

// C[m][n] += alpha * sum_k A[m][k] * B[k][n]    (A: m x k, B: k x n)
void mt_gemm_f32_nn(const mt_gemm_shape_t *s, float alpha, const float *a, const float *b, float *c);

// C[m][n] += alpha * sum_k A[k][m] * B[k][n]    (A: k x m, B: k x n; "A transposed times B")
void mt_gemm_f32_tn(const mt_gemm_shape_t *s, float alpha, const float *a, const float *b, float *c);

// The same products with a caller's workspace `pack` of pack_floats floats (may be NULL /
// 0), where the single-precision-FPU asm copies both operands into k-major 4-wide panels:
// its inner loop then loads two k-steps of A and B in two vldmia per 32 vfma. Results
// equal the functions above up to rounding (long k is summed in chunks). Elsewhere, or
// with too little workspace, these are the functions above.
void mt_gemm_f32_nt_packed(const mt_gemm_shape_t *s, float alpha, const float *a, const float *b,
    float *c, float *pack, size_t pack_floats);
void mt_gemm_f32_nn_packed(const mt_gemm_shape_t *s, float alpha, const float *a, const float *b,
    float *c, float *pack, size_t pack_floats);
void mt_gemm_f32_tn_packed(const mt_gemm_shape_t *s, float alpha, const float *a, const float *b,
    float *c, float *pack, size_t pack_floats);

// Workspace floats the packed functions use for an m x n x k product: 0 where they never
// pack (no such FPU, m, n or k under 16, or n over 127), at most 2048 (8 KB); never more
// for a smaller m or k.
size_t mt_gemm_f32_pack_floats(int m, int n, int k);

#endif
