// fp32 GEMM for MCUs. The work is done in 4x4 blocks of C whose 16 sums stay in
// registers while k runs (8 loads feed 16 multiply-adds); matrix-vector shapes (batch 1)
// get 1x4 kernels, and the few leftover rows and columns a strided dot product.
#include "gemm_f32.h"

// Micro-kernels: acc = the block of op(A) * op(B), row-major 4x4 (or 1x4). alpha and C
// are applied by the drivers, once per block.

// acc[i][j] = sum_k a[i*lda + k] * b[j*ldb + k]
static void nt_4x4(int k, const float *a, int lda, const float *b, int ldb, float *acc) {
    const float *a0 = a, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
    const float *b0 = b, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
    float c00 = 0.0f, c01 = 0.0f, c02 = 0.0f, c03 = 0.0f, c10 = 0.0f, c11 = 0.0f, c12 = 0.0f, c13 = 0.0f;
    float c20 = 0.0f, c21 = 0.0f, c22 = 0.0f, c23 = 0.0f, c30 = 0.0f, c31 = 0.0f, c32 = 0.0f, c33 = 0.0f;
    for (const float *a0_end = a0 + k; a0 != a0_end;) {
        float x0 = *a0++, x1 = *a1++, x2 = *a2++, x3 = *a3++;
        float y0 = *b0++, y1 = *b1++, y2 = *b2++, y3 = *b3++;
        c00 += x0 * y0; c01 += x0 * y1; c02 += x0 * y2; c03 += x0 * y3;
        c10 += x1 * y0; c11 += x1 * y1; c12 += x1 * y2; c13 += x1 * y3;
        c20 += x2 * y0; c21 += x2 * y1; c22 += x2 * y2; c23 += x2 * y3;
        c30 += x3 * y0; c31 += x3 * y1; c32 += x3 * y2; c33 += x3 * y3;
    }
    acc[0] = c00; acc[1] = c01; acc[2] = c02; acc[3] = c03;
    acc[4] = c10; acc[5] = c11; acc[6] = c12; acc[7] = c13;
    acc[8] = c20; acc[9] = c21; acc[10] = c22; acc[11] = c23;
    acc[12] = c30; acc[13] = c31; acc[14] = c32; acc[15] = c33;
}

// acc[i][j] = sum_k a[i*lda + k] * b[k*ldb + j]
static void nn_4x4(int k, const float *a, int lda, const float *b, int ldb, float *acc) {
    const float *a0 = a, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
    float c00 = 0.0f, c01 = 0.0f, c02 = 0.0f, c03 = 0.0f, c10 = 0.0f, c11 = 0.0f, c12 = 0.0f, c13 = 0.0f;
    float c20 = 0.0f, c21 = 0.0f, c22 = 0.0f, c23 = 0.0f, c30 = 0.0f, c31 = 0.0f, c32 = 0.0f, c33 = 0.0f;
    for (const float *a0_end = a0 + k; a0 != a0_end; b += ldb) {
        float x0 = *a0++, x1 = *a1++, x2 = *a2++, x3 = *a3++;
        float y0 = b[0], y1 = b[1], y2 = b[2], y3 = b[3];
        c00 += x0 * y0; c01 += x0 * y1; c02 += x0 * y2; c03 += x0 * y3;
        c10 += x1 * y0; c11 += x1 * y1; c12 += x1 * y2; c13 += x1 * y3;
        c20 += x2 * y0; c21 += x2 * y1; c22 += x2 * y2; c23 += x2 * y3;
        c30 += x3 * y0; c31 += x3 * y1; c32 += x3 * y2; c33 += x3 * y3;
    }
    acc[0] = c00; acc[1] = c01; acc[2] = c02; acc[3] = c03;
    acc[4] = c10; acc[5] = c11; acc[6] = c12; acc[7] = c13;
    acc[8] = c20; acc[9] = c21; acc[10] = c22; acc[11] = c23;
    acc[12] = c30; acc[13] = c31; acc[14] = c32; acc[15] = c33;
}

// acc[i][j] = sum_k a[k*lda + i] * b[k*ldb + j]: a sum of outer products.
static void tn_4x4(int k, const float *a, int lda, const float *b, int ldb, float *acc) {
    float c00 = 0.0f, c01 = 0.0f, c02 = 0.0f, c03 = 0.0f, c10 = 0.0f, c11 = 0.0f, c12 = 0.0f, c13 = 0.0f;
    float c20 = 0.0f, c21 = 0.0f, c22 = 0.0f, c23 = 0.0f, c30 = 0.0f, c31 = 0.0f, c32 = 0.0f, c33 = 0.0f;
    for (int kk = 0; kk < k; kk++, a += lda, b += ldb) {
        float x0 = a[0], x1 = a[1], x2 = a[2], x3 = a[3];
        float y0 = b[0], y1 = b[1], y2 = b[2], y3 = b[3];
        c00 += x0 * y0; c01 += x0 * y1; c02 += x0 * y2; c03 += x0 * y3;
        c10 += x1 * y0; c11 += x1 * y1; c12 += x1 * y2; c13 += x1 * y3;
        c20 += x2 * y0; c21 += x2 * y1; c22 += x2 * y2; c23 += x2 * y3;
        c30 += x3 * y0; c31 += x3 * y1; c32 += x3 * y2; c33 += x3 * y3;
    }
    acc[0] = c00; acc[1] = c01; acc[2] = c02; acc[3] = c03;
    acc[4] = c10; acc[5] = c11; acc[6] = c12; acc[7] = c13;
    acc[8] = c20; acc[9] = c21; acc[10] = c22; acc[11] = c23;
    acc[12] = c30; acc[13] = c31; acc[14] = c32; acc[15] = c33;
}

// acc[j] = sum_k a[k] * b[j*ldb + k]: four dot products sharing a (matrix-vector).
static void nt_1x4(int k, const float *a, const float *b, int ldb, float *acc) {
    const float *b0 = b, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
    float c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f;
    for (const float *a_end = a + k; a != a_end;) {
        float x = *a++;
        c0 += x * *b0++; c1 += x * *b1++; c2 += x * *b2++; c3 += x * *b3++;
    }
    acc[0] = c0; acc[1] = c1; acc[2] = c2; acc[3] = c3;
}

// acc[j] = sum_k a[k*a_step] * b[k*ldb + j]: four columns of B against a vector.
static void xn_1x4(int k, const float *a, int a_step, const float *b, int ldb, float *acc) {
    float c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f;
    for (int kk = 0; kk < k; kk++, a += a_step, b += ldb) {
        float x = *a;
        c0 += x * b[0]; c1 += x * b[1]; c2 += x * b[2]; c3 += x * b[3];
    }
    acc[0] = c0; acc[1] = c1; acc[2] = c2; acc[3] = c3;
}

static float dot_strided(int k, const float *a, int a_step, const float *b, int b_step) {
    float s = 0.0f;
    for (int kk = 0; kk < k; kk++, a += a_step, b += b_step) {
        s += *a * *b;
    }
    return s;
}

static void add_4x4(float *c, int ldc, float alpha, const float *acc) {
    for (int i = 0; i < 4; i++, c += ldc, acc += 4) {
        c[0] += alpha * acc[0];
        c[1] += alpha * acc[1];
        c[2] += alpha * acc[2];
        c[3] += alpha * acc[3];
    }
}

static void add_1x4(float *c, float alpha, const float *acc) {
    c[0] += alpha * acc[0];
    c[1] += alpha * acc[1];
    c[2] += alpha * acc[2];
    c[3] += alpha * acc[3];
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
    float acc[16];
    int i = 0;
    for (; i + 4 <= m; i += 4) {
        const float *ai = a + i * lda;
        float *ci = c + i * ldc;
        for (int j = 0; j < n4; j += 4) {
            nt_4x4(k, ai, lda, b + j * ldb, ldb, acc);
            add_4x4(ci + j, ldc, alpha, acc);
        }
        edge(4, n - n4, k, ai, lda, 1, b + n4 * ldb, ldb, 1, alpha, ci + n4, ldc);
    }
    for (; i < m; i++) {
        const float *ai = a + i * lda;
        float *ci = c + i * ldc;
        for (int j = 0; j < n4; j += 4) {
            nt_1x4(k, ai, b + j * ldb, ldb, acc);
            add_1x4(ci + j, alpha, acc);
        }
        edge(1, n - n4, k, ai, lda, 1, b + n4 * ldb, ldb, 1, alpha, ci + n4, ldc);
    }
}

void mt_gemm_f32_nn(const mt_gemm_shape_t *s, float alpha, const float *a, const float *b, float *c) {
    const int m = s->m, n = s->n, k = s->k, lda = s->lda, ldb = s->ldb, ldc = s->ldc;
    const int n4 = n & ~3;
    float acc[16];
    int i = 0;
    for (; i + 4 <= m; i += 4) {
        const float *ai = a + i * lda;
        float *ci = c + i * ldc;
        for (int j = 0; j < n4; j += 4) {
            nn_4x4(k, ai, lda, b + j, ldb, acc);
            add_4x4(ci + j, ldc, alpha, acc);
        }
        edge(4, n - n4, k, ai, lda, 1, b + n4, 1, ldb, alpha, ci + n4, ldc);
    }
    for (; i < m; i++) {
        const float *ai = a + i * lda;
        float *ci = c + i * ldc;
        for (int j = 0; j < n4; j += 4) {
            xn_1x4(k, ai, 1, b + j, ldb, acc);
            add_1x4(ci + j, alpha, acc);
        }
        edge(1, n - n4, k, ai, lda, 1, b + n4, 1, ldb, alpha, ci + n4, ldc);
    }
}

void mt_gemm_f32_tn(const mt_gemm_shape_t *s, float alpha, const float *a, const float *b, float *c) {
    const int m = s->m, n = s->n, k = s->k, lda = s->lda, ldb = s->ldb, ldc = s->ldc;
    const int n4 = n & ~3;
    float acc[16];
    int i = 0;
    for (; i + 4 <= m; i += 4) {
        float *ci = c + i * ldc;
        for (int j = 0; j < n4; j += 4) {
            tn_4x4(k, a + i, lda, b + j, ldb, acc);
            add_4x4(ci + j, ldc, alpha, acc);
        }
        edge(4, n - n4, k, a + i, 1, lda, b + n4, 1, ldb, alpha, ci + n4, ldc);
    }
    for (; i < m; i++) {
        float *ci = c + i * ldc;
        for (int j = 0; j < n4; j += 4) {
            xn_1x4(k, a + i, lda, b + j, ldb, acc);
            add_1x4(ci + j, alpha, acc);
        }
        edge(1, n - n4, k, a + i, 1, lda, b + n4, 1, ldb, alpha, ci + n4, ldc);
    }
}
