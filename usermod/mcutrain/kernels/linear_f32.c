// Linear layer as GEMM calls; batch 1 lands on the GEMM's matrix-vector kernels.
#include "gemm_f32.h"
#include "linear_f32.h"

void mt_linear_f32_forward(const mt_linear_params_t *p, const float *x, const float *weight,
    const float *bias, float *y) {
    const int out = p->out_features;
    float *row = y;
    for (int b = 0; b < p->batch; b++, row += out) {
        for (int o = 0; o < out; o++) {
            row[o] = bias ? bias[o] : 0.0f;
        }
    }
    const mt_gemm_shape_t s = { p->batch, out, p->in_features, p->in_features, p->in_features, out };
    mt_gemm_f32_nt(&s, 1.0f, x, weight, y);
}

void mt_linear_f32_grad_input(const mt_linear_params_t *p, const float *dy, const float *weight,
    float *dx) {
    const int in = p->in_features;
    for (int i = 0; i < p->batch * in; i++) {
        dx[i] = 0.0f;
    }
    const mt_gemm_shape_t s = { p->batch, in, p->out_features, p->out_features, in, in };
    mt_gemm_f32_nn(&s, 1.0f, dy, weight, dx);
}

void mt_linear_f32_grad_weight(const mt_linear_params_t *p, const float *x, const float *dy,
    float alpha, float *dweight, float *dbias) {
    const int out = p->out_features, in = p->in_features;
    const mt_gemm_shape_t s = { out, in, p->batch, out, in, in };
    mt_gemm_f32_tn(&s, alpha, dy, x, dweight);
    if (dbias) {
        for (int o = 0; o < out; o++) {
            float sum = 0.0f;
            for (int b = 0; b < p->batch; b++) {
                sum += dy[b * out + o];
            }
            dbias[o] += alpha * sum;
        }
    }
}
