#include <math.h>

#include "batchnorm_s8.h"

// Bit-exact float32 sequences (the reference repeats them): no fused multiply-adds.
#pragma GCC optimize("fp-contract=off")

// Per-channel temporaries live on the stack in blocks of this many channels.
#define CHANNEL_BLOCK 16

static inline int block_of(int c_n, int c0) {
    return c_n - c0 < CHANNEL_BLOCK ? c_n - c0 : CHANNEL_BLOCK;
}

void mt_batchnorm_s8_prepare(const mt_batchnorm_params_t *p, const int8_t *x, mt_qparams_t xq,
    const float *gamma, const float *beta, bool training, float *running_mean, float *running_var,
    float *mean_q, float *inv_std, mt_range_t *y_range) {
    const int rows = p->rows, c_n = p->channels;
    const int32_t zp = xq.zero_point;
    const float n = (float)rows, m = p->momentum;
    y_range->min = y_range->max = 0.0f;
    if (rows <= 0) {
        return;
    }
    bool first = true;
    int32_t s1[CHANNEL_BLOCK], vmin[CHANNEL_BLOCK], vmax[CHANNEL_BLOCK];
    int64_t s2[CHANNEL_BLOCK];
    for (int c0 = 0; c0 < c_n; c0 += CHANNEL_BLOCK) {
        const int block = block_of(c_n, c0);
        for (int j = 0; j < block; j++) {
            s1[j] = 0;
            s2[j] = 0;
            vmin[j] = 255;
            vmax[j] = -255;
        }
        const int8_t *xr = x + c0;
        for (int r = 0; r < rows; r++, xr += c_n) {
            for (int j = 0; j < block; j++) {
                const int32_t v = xr[j] - zp;
                s1[j] += v;
                s2[j] += v * v;
                vmin[j] = v < vmin[j] ? v : vmin[j];
                vmax[j] = v > vmax[j] ? v : vmax[j];
            }
        }
        for (int j = 0; j < block; j++) {
            const int c = c0 + j;
            if (training) {
                mean_q[c] = (float)s1[j] / n;
                const float var = ((float)((int64_t)rows * s2[j] - (int64_t)s1[j] * s1[j]) / (n * n))
                    * (xq.scale * xq.scale);
                running_mean[c] = (1.0f - m) * running_mean[c] + m * (mean_q[c] * xq.scale);
                if (rows > 1) {
                    // Bessel's correction for the running estimate, as PyTorch does.
                    running_var[c] = (1.0f - m) * running_var[c] + m * (var * (n / (float)(rows - 1)));
                }
                inv_std[c] = 1.0f / sqrtf(var + p->eps);
            } else {
                mean_q[c] = running_mean[c] / xq.scale;
                inv_std[c] = 1.0f / sqrtf(running_var[c] + p->eps);
            }
            const float a = (gamma[c] * inv_std[c]) * xq.scale;
            float lo = a * ((float)vmin[j] - mean_q[c]) + beta[c];
            float hi = a * ((float)vmax[j] - mean_q[c]) + beta[c];
            if (lo > hi) {
                const float t = lo;
                lo = hi;
                hi = t;
            }
            if (first || lo < y_range->min) {
                y_range->min = lo;
            }
            if (first || hi > y_range->max) {
                y_range->max = hi;
            }
            first = false;
        }
    }
}

void mt_batchnorm_s8_forward(const mt_batchnorm_params_t *p, const int8_t *x, mt_qparams_t xq,
    const float *gamma, const float *beta, const float *mean_q, const float *inv_std, int8_t *y,
    mt_qparams_t yq) {
    const int rows = p->rows, c_n = p->channels;
    float ka[CHANNEL_BLOCK], kb[CHANNEL_BLOCK], mu[CHANNEL_BLOCK];
    for (int c0 = 0; c0 < c_n; c0 += CHANNEL_BLOCK) {
        const int block = block_of(c_n, c0);
        for (int j = 0; j < block; j++) {
            const int c = c0 + j;
            ka[j] = ((gamma[c] * inv_std[c]) * xq.scale) / yq.scale;
            kb[j] = beta[c] / yq.scale;
            mu[j] = mean_q[c];
        }
        const int8_t *xr = x + c0;
        int8_t *yr = y + c0;
        for (int r = 0; r < rows; r++, xr += c_n, yr += c_n) {
            for (int j = 0; j < block; j++) {
                float t = ka[j] * ((float)(xr[j] - xq.zero_point) - mu[j]) + kb[j];
                // Saturate first (an extreme scale makes t huge): the zero point then adds
                // without overflow, and the int8 clamp below gives the same result.
                t = t < -65536.0f ? -65536.0f : t > 65536.0f ? 65536.0f : t;
                const int32_t v = mt_round_half_even(t) + yq.zero_point;
                yr[j] = (int8_t)(v < MT_S8_ACT_MIN ? MT_S8_ACT_MIN : v > MT_S8_ACT_MAX ? MT_S8_ACT_MAX : v);
            }
        }
    }
}

void mt_batchnorm_s8_backward(const mt_batchnorm_params_t *p, const int8_t *x, mt_qparams_t xq,
    const int8_t *dy, float dy_scale, const float *gamma, const float *mean_q, const float *inv_std,
    int8_t *dx, float dx_scale, float *dx_absmax, float keep, float alpha, float *dgamma, float *dbeta) {
    const int rows = p->rows, c_n = p->channels;
    const float n = (float)rows;
    float absmax = 0.0f;
    int32_t sd[CHANNEL_BLOCK];
    int64_t sdv[CHANNEL_BLOCK];
    float k[CHANNEL_BLOCK], mg[CHANNEL_BLOCK], mdy[CHANNEL_BLOCK], pk[CHANNEL_BLOCK];
    for (int c0 = 0; c0 < c_n && rows > 0; c0 += CHANNEL_BLOCK) {
        const int block = block_of(c_n, c0);
        for (int j = 0; j < block; j++) {
            sd[j] = 0;
            sdv[j] = 0;
        }
        const int8_t *xr = x + c0, *dyr = dy + c0;
        for (int r = 0; r < rows; r++, xr += c_n, dyr += c_n) {
            for (int j = 0; j < block; j++) {
                sd[j] += dyr[j];
                sdv[j] += dyr[j] * (xr[j] - xq.zero_point);
            }
        }
        for (int j = 0; j < block; j++) {
            const int c = c0 + j;
            k[j] = xq.scale * inv_std[c];
            const float g = k[j] * ((float)sdv[j] - mean_q[c] * (float)sd[j]);
            mg[j] = g / n;
            mdy[j] = (float)sd[j] / n;
            // gamma is read before dgamma is written.
            pk[j] = (gamma[c] * inv_std[c]) * dy_scale;
            if (dgamma) {
                dgamma[c] = dgamma[c] * keep + alpha * (dy_scale * g);
            }
            if (dbeta) {
                dbeta[c] = dbeta[c] * keep + alpha * (dy_scale * (float)sd[j]);
            }
        }
        if (dx == NULL && dx_absmax == NULL) {
            continue;
        }
        xr = x + c0;
        dyr = dy + c0;
        int8_t *dxr = dx ? dx + c0 : NULL;
        float inner_max[CHANNEL_BLOCK] = { 0 };
        for (int j = 0; j < block; j++) {
            pk[j] = dx ? pk[j] / dx_scale : pk[j];
        }
        // dy[i] is read before dx[i] is written, so dx may alias dy.
        for (int r = 0; r < rows; r++, xr += c_n, dyr += c_n) {
            for (int j = 0; j < block; j++) {
                const float inner = ((float)dyr[j] - mdy[j])
                    - (k[j] * ((float)(xr[j] - xq.zero_point) - mean_q[c0 + j])) * mg[j];
                const float a = fabsf(inner);
                inner_max[j] = a > inner_max[j] ? a : inner_max[j];
                if (dxr) {
                    const int32_t v = mt_round_half_even(pk[j] * inner);
                    dxr[j] = (int8_t)(v < -MT_S8_SYM_MAX ? -MT_S8_SYM_MAX : v > MT_S8_SYM_MAX ? MT_S8_SYM_MAX : v);
                }
            }
            if (dxr) {
                dxr += c_n;
            }
        }
        for (int j = 0; j < block; j++) {
            const float a = fabsf((gamma[c0 + j] * inv_std[c0 + j]) * dy_scale) * inner_max[j];
            absmax = a > absmax ? a : absmax;
        }
    }
    if (dx_absmax) {
        *dx_absmax = absmax;
    }
}
