// fp32 pooling, channels-last: x (batch, in_h, in_w, c), y (batch, out_h, out_w, c).
// Max pooling treats padding as -infinity and, on ties, picks the first maximum in
// row-major window order; its backward recomputes that choice from x (no index
// buffer). Average pooling divides by kernel_h * kernel_w, padding counted as zeros
// (PyTorch's count_include_pad=True).
#ifndef MCUTRAIN_KERNELS_POOL_F32_H
#define MCUTRAIN_KERNELS_POOL_F32_H

typedef struct {
    int batch;
    int in_h, in_w, channels;
    int out_h, out_w;
    int kernel_h, kernel_w;
    int stride_h, stride_w;
    int pad_h, pad_w;
} mt_pool2d_params_t;

void mt_maxpool2d_f32_forward(const mt_pool2d_params_t *p, const float *x, float *y);
// dx is overwritten.
void mt_maxpool2d_f32_grad_input(const mt_pool2d_params_t *p, const float *x, const float *dy,
    float *dx);

void mt_avgpool2d_f32_forward(const mt_pool2d_params_t *p, const float *x, float *y);
void mt_avgpool2d_f32_grad_input(const mt_pool2d_params_t *p, const float *dy, float *dx);

// Mean over all pixels: x (batch, pixels, channels) -> y (batch, channels).
void mt_global_avgpool_f32_forward(const float *x, float *y, int batch, int pixels, int channels);
void mt_global_avgpool_f32_grad_input(const float *dy, float *dx, int batch, int pixels,
    int channels);

#endif
