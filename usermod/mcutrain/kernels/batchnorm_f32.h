// fp32 batch normalization over the channels of a channels-last tensor:
// x, y (rows, channels) where rows = batch * height * width. Conventions follow
// PyTorch's BatchNorm2d: biased variance to normalize, unbiased variance in the
// running estimate, running = (1 - momentum) * running + momentum * batch value.
#ifndef MCUTRAIN_KERNELS_BATCHNORM_F32_H
#define MCUTRAIN_KERNELS_BATCHNORM_F32_H

typedef struct {
    int rows;
    int channels;
    float eps;
    float momentum;
} mt_batchnorm_params_t;

// Training forward with batch statistics. Writes y, the per-channel batch mean and
// 1/sqrt(var + eps) (saved for backward), and updates the running mean and variance
// (rows > 1 for the unbiased estimate; with rows == 1 the running variance is kept).
void mt_batchnorm_f32_forward_train(const mt_batchnorm_params_t *p, const float *x,
    const float *gamma, const float *beta, float *y, float *mean, float *inv_std,
    float *running_mean, float *running_var);

// Inference forward with the running statistics.
void mt_batchnorm_f32_forward_eval(const mt_batchnorm_params_t *p, const float *x,
    const float *gamma, const float *beta, const float *running_mean, const float *running_var,
    float *y);

// Backward of the training forward. dx is overwritten (may be NULL to skip);
// dgamma += alpha * dL/dgamma and dbeta += alpha * dL/dbeta (either may be NULL).
void mt_batchnorm_f32_backward(const mt_batchnorm_params_t *p, const float *x, const float *dy,
    const float *gamma, const float *mean, const float *inv_std, float *dx, float alpha,
    float *dgamma, float *dbeta);

// Backward of the inference forward (running statistics, held fixed): mean and inv_std
// are the running mean and 1/sqrt(running_var + eps). dx, dgamma, dbeta as above.
void mt_batchnorm_f32_backward_eval(const mt_batchnorm_params_t *p, const float *x, const float *dy,
    const float *gamma, const float *mean, const float *inv_std, float *dx, float alpha,
    float *dgamma, float *dbeta);

// Folds inference batch norm into the preceding convolution or linear layer:
// weight rows (out_c of row_len floats each) are scaled and bias rewritten in place.
void mt_batchnorm_f32_fold(const mt_batchnorm_params_t *p, const float *gamma, const float *beta,
    const float *running_mean, const float *running_var, float *weight, int row_len, float *bias);

#endif
