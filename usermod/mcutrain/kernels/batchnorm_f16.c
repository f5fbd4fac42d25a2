#include <math.h>
#include <stddef.h>

#include "batchnorm_f16.h"
#include "half.h"

// Per-channel values for eval and backward live on the stack in blocks of this many
// channels (as in batchnorm_f32.c).
#define CHANNEL_BLOCK 16

void mt_batchnorm_f16_forward_train(const mt_batchnorm_params_t *p, const uint16_t *x,
    const float *gamma, const float *beta, uint16_t *y, float *mean, float *inv_std,
    float *running_mean, float *running_var) {
    const int rows = p->rows, c_n = p->channels;
    if (rows <= 0) {
        return;
    }
    const float inv_rows = 1.0f / (float)rows;
    // Two passes (mean, then squared deviations), mean and inv_std as the accumulators.
    for (int c = 0; c < c_n; c++) {
        mean[c] = 0.0f;
        inv_std[c] = 0.0f;
    }
    const uint16_t *xr = x;
    for (int r = 0; r < rows; r++, xr += c_n) {
        for (int c = 0; c < c_n; c++) {
            mean[c] += mt_f16_to_f32(xr[c]);
        }
    }
    for (int c = 0; c < c_n; c++) {
        mean[c] *= inv_rows;
    }
    xr = x;
    for (int r = 0; r < rows; r++, xr += c_n) {
        for (int c = 0; c < c_n; c++) {
            const float d = mt_f16_to_f32(xr[c]) - mean[c];
            inv_std[c] += d * d;
        }
    }
    const float m = p->momentum;
    const float unbias = rows > 1 ? (float)rows / (float)(rows - 1) : 0.0f;
    for (int c = 0; c < c_n; c++) {
        const float var = inv_std[c] * inv_rows;
        // A batch with inf or NaN must not poison the running statistics for good.
        if (isfinite(mean[c]) && isfinite(var)) {
            running_mean[c] = (1.0f - m) * running_mean[c] + m * mean[c];
        }
        if (rows > 1 && isfinite(var)) {
            running_var[c] = (1.0f - m) * running_var[c] + m * (var * unbias);
        }
        inv_std[c] = 1.0f / sqrtf(var + p->eps);
    }
    const uint16_t *xi = x;
    for (int r = 0; r < rows; r++, xi += c_n, y += c_n) {
        for (int c = 0; c < c_n; c++) {
            y[c] = mt_f32_to_f16((mt_f16_to_f32(xi[c]) - mean[c]) * (inv_std[c] * gamma[c]) + beta[c]);
        }
    }
}

void mt_batchnorm_f16_forward_eval(const mt_batchnorm_params_t *p, const uint16_t *x,
    const float *gamma, const float *beta, const float *running_mean, const float *running_var,
    uint16_t *y) {
    const int rows = p->rows, c_n = p->channels;
    float scale[CHANNEL_BLOCK], shift[CHANNEL_BLOCK];
    for (int c0 = 0; c0 < c_n; c0 += CHANNEL_BLOCK) {
        const int block = c_n - c0 < CHANNEL_BLOCK ? c_n - c0 : CHANNEL_BLOCK;
        for (int j = 0; j < block; j++) {
            const int c = c0 + j;
            scale[j] = gamma[c] / sqrtf(running_var[c] + p->eps);
            shift[j] = beta[c] - running_mean[c] * scale[j];
        }
        const uint16_t *xr = x + c0;
        uint16_t *yr = y + c0;
        for (int r = 0; r < rows; r++, xr += c_n, yr += c_n) {
            for (int j = 0; j < block; j++) {
                yr[j] = mt_f32_to_f16(mt_f16_to_f32(xr[j]) * scale[j] + shift[j]);
            }
        }
    }
}

// dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)), dgamma = sum(dy * xhat),
// dbeta = sum(dy) (Ioffe & Szegedy 2015, section 3, simplified; as batchnorm_f32.c).
void mt_batchnorm_f16_backward(const mt_batchnorm_params_t *p, const uint16_t *x,
    const uint16_t *dy, const float *gamma, const float *mean, const float *inv_std,
    uint16_t *dx, float alpha, float *dgamma, float *dbeta) {
    const int rows = p->rows, c_n = p->channels;
    if (rows <= 0) {
        return;
    }
    const float inv_rows = 1.0f / (float)rows;
    float sum_dy[CHANNEL_BLOCK], sum_dy_xhat[CHANNEL_BLOCK], dx_scale[CHANNEL_BLOCK];
    for (int c0 = 0; c0 < c_n; c0 += CHANNEL_BLOCK) {
        const int block = c_n - c0 < CHANNEL_BLOCK ? c_n - c0 : CHANNEL_BLOCK;
        const float *mu = mean + c0, *is = inv_std + c0;
        for (int j = 0; j < block; j++) {
            sum_dy[j] = 0.0f;
            sum_dy_xhat[j] = 0.0f;
            // Read gamma before dgamma is written: a fused optimizer passes dgamma == gamma.
            dx_scale[j] = gamma[c0 + j] * is[j];
        }
        const uint16_t *xr = x + c0, *dyr = dy + c0;
        for (int r = 0; r < rows; r++, xr += c_n, dyr += c_n) {
            for (int j = 0; j < block; j++) {
                const float d = mt_f16_to_f32(dyr[j]);
                sum_dy[j] += d;
                sum_dy_xhat[j] += d * ((mt_f16_to_f32(xr[j]) - mu[j]) * is[j]);
            }
        }
        for (int j = 0; j < block; j++) {
            if (dgamma) {
                dgamma[c0 + j] += alpha * sum_dy_xhat[j];
            }
            if (dbeta) {
                dbeta[c0 + j] += alpha * sum_dy[j];
            }
        }
        if (!dx) {
            continue;
        }
        for (int j = 0; j < block; j++) {
            sum_dy[j] *= inv_rows;
            sum_dy_xhat[j] *= inv_rows;
        }
        xr = x + c0;
        dyr = dy + c0;
        uint16_t *dxr = dx + c0;
        for (int r = 0; r < rows; r++, xr += c_n, dyr += c_n, dxr += c_n) {
            for (int j = 0; j < block; j++) {
                const float xhat = (mt_f16_to_f32(xr[j]) - mu[j]) * is[j];
                dxr[j] = mt_f32_to_f16(
                    dx_scale[j] * (mt_f16_to_f32(dyr[j]) - sum_dy[j] - xhat * sum_dy_xhat[j]));
            }
        }
    }
}

// Backward of the inference forward: the statistics are constants, so (as PyTorch's
// BatchNorm2d in eval mode) dx = dy * gamma * inv_std, dgamma = sum(dy * xhat), dbeta =
// sum(dy), with mean and inv_std from the running statistics.
void mt_batchnorm_f16_backward_eval(const mt_batchnorm_params_t *p, const uint16_t *x, const uint16_t *dy,
    const float *gamma, const float *mean, const float *inv_std, uint16_t *dx, float alpha,
    float *dgamma, float *dbeta) {
    const int rows = p->rows, c_n = p->channels;
    float sum_dy[CHANNEL_BLOCK], sum_dy_xhat[CHANNEL_BLOCK], dx_scale[CHANNEL_BLOCK];
    for (int c0 = 0; c0 < c_n; c0 += CHANNEL_BLOCK) {
        const int block = c_n - c0 < CHANNEL_BLOCK ? c_n - c0 : CHANNEL_BLOCK;
        const float *mu = mean + c0, *is = inv_std + c0;
        for (int j = 0; j < block; j++) {
            sum_dy[j] = 0.0f;
            sum_dy_xhat[j] = 0.0f;
            dx_scale[j] = gamma[c0 + j] * is[j];  // before a fused update writes gamma
        }
        const uint16_t *xr = x + c0, *dyr = dy + c0;
        uint16_t *dxr = dx ? dx + c0 : NULL;
        for (int r = 0; r < rows; r++, xr += c_n, dyr += c_n) {
            for (int j = 0; j < block; j++) {
                const float d = mt_f16_to_f32(dyr[j]);
                sum_dy[j] += d;
                sum_dy_xhat[j] += d * ((mt_f16_to_f32(xr[j]) - mu[j]) * is[j]);
            }
            if (dxr) {
                // dy[i] is read before dx[i] is written, so dx may alias dy.
                for (int j = 0; j < block; j++) {
                    dxr[j] = mt_f32_to_f16(dx_scale[j] * mt_f16_to_f32(dyr[j]));
                }
                dxr += c_n;
            }
        }
        for (int j = 0; j < block; j++) {
            if (dgamma) {
                dgamma[c0 + j] += alpha * sum_dy_xhat[j];
            }
            if (dbeta) {
                dbeta[c0 + j] += alpha * sum_dy[j];
            }
        }
    }
}

void mt_batchnorm_f16_fold(const mt_batchnorm_params_t *p, const float *gamma,
    const float *beta, const float *running_mean, const float *running_var, uint16_t *weight,
    int row_len, uint16_t *bias) {
    for (int c = 0; c < p->channels; c++) {
        const float scale = gamma[c] / sqrtf(running_var[c] + p->eps);
        uint16_t *w = weight + (size_t)c * (size_t)row_len;
        for (int i = 0; i < row_len; i++) {
            w[i] = mt_f32_to_f16(mt_f16_to_f32(w[i]) * scale);
        }
        bias[c] = mt_f32_to_f16((mt_f16_to_f32(bias[c]) - running_mean[c]) * scale + beta[c]);
    }
}
