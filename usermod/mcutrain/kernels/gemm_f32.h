// fp32 matrix products, the core of Linear and Conv2d (im2col) forward and backward.
// Plain C: no MicroPython headers, so they build and are tested as a host library too.
//
// Matrices are row-major with explicit row strides (lda, ldb, ldc, in elements), so a
// kernel can work on a tile of a larger matrix. Every product accumulates into C
// scaled by alpha: C += alpha * op(A) * op(B). Accumulating lets the backward pass add
// a weight gradient straight into the weights (alpha = -lr) or a momentum buffer.
#ifndef MCUTRAIN_KERNELS_GEMM_F32_H
#define MCUTRAIN_KERNELS_GEMM_F32_H

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

#endif
