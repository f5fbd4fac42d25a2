// fp32 fully connected layer. Layouts: x is (batch, in), y is (batch, out),
// weight is (out, in) as in PyTorch, bias is (out).
#ifndef MCUTRAIN_KERNELS_LINEAR_F32_H
#define MCUTRAIN_KERNELS_LINEAR_F32_H

typedef struct {
    int batch;
    int in_features;
    int out_features;
} mt_linear_params_t;

// y = x * weight^T + bias (bias may be NULL). y is overwritten.
void mt_linear_f32_forward(const mt_linear_params_t *p, const float *x, const float *weight,
    const float *bias, float *y);

// dx = dy * weight. dx is overwritten.
void mt_linear_f32_grad_input(const mt_linear_params_t *p, const float *dy, const float *weight,
    float *dx);

// dweight += alpha * dy^T * x and dbias += alpha * sum over the batch of dy (dbias may be NULL).
// With dweight = weight and alpha = -lr this is a fused plain-SGD update.
void mt_linear_f32_grad_weight(const mt_linear_params_t *p, const float *x, const float *dy,
    float alpha, float *dweight, float *dbias);

#endif
