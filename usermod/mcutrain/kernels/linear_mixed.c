// Mixed Linear backward on int8 weights (linear_mixed.h).
#include "linear_mixed.h"

void mt_linear_mixed_grad_input(const mt_linear_params_t *p, const float *dy, const int8_t *w,
    const float *w_scale, float *dx) {
    const int in = p->in_features, out = p->out_features;
    for (int n = 0; n < p->batch; n++) {
        float *dxn = dx + (size_t)n * in;
        for (int i = 0; i < in; i++) {
            dxn[i] = 0.0f;
        }
        for (int o = 0; o < out; o++) {
            // The scale folds into the error: one multiply per output, not per weight.
            const float e = dy[(size_t)n * out + o] * w_scale[o];
            const int8_t *wo = w + (size_t)o * in;
            for (int i = 0; i < in; i++) {
                dxn[i] += e * (float)wo[i];
            }
        }
    }
}

void mt_linear_mixed_update(const mt_linear_params_t *p, const float *x, const float *dy, int8_t *w,
    float *w_scale, float *bias, float lr, float weight_decay, float rescale_below, mt_rng_t *rng, float *row) {
    const int in = p->in_features, out = p->out_features;
    const float decay = 1.0f - lr * weight_decay;
    for (int o = 0; o < out; o++) {
        int8_t *wo = w + (size_t)o * in;
        const float a = decay * w_scale[o];
        for (int i = 0; i < in; i++) {
            row[i] = a * (float)wo[i];
        }
        float db = 0.0f;
        for (int n = 0; n < p->batch; n++) {
            const float e = lr * dy[(size_t)n * out + o];
            const float *xn = x + (size_t)n * in;
            for (int i = 0; i < in; i++) {
                row[i] -= e * xn[i];
            }
            db += dy[(size_t)n * out + o];
        }
        mt_s8_requantize_rows(row, wo, &w_scale[o], 1, in, rescale_below, rng);
        if (bias) {
            bias[o] -= lr * db;
        }
    }
}
