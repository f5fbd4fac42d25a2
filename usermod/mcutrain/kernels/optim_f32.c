#include <math.h>

#include "optim_f32.h"

void mt_sgd_f32_step(const mt_sgd_params_t *p, float *w, const float *g, float *velocity,
    size_t n) {
    const float lr = p->lr, momentum = p->momentum, wd = p->weight_decay;
    if (momentum != 0.0f && velocity) {
        // torch.optim.SGD with dampening 0: its first step sets v = g, the same as
        // momentum * 0 + g from a zeroed buffer.
        for (size_t i = 0; i < n; i++) {
            float v = momentum * velocity[i] + (g[i] + wd * w[i]);
            velocity[i] = v;
            w[i] -= lr * v;
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            w[i] -= lr * (g[i] + wd * w[i]);
        }
    }
}

void mt_sgd_f32_fused_begin(const mt_sgd_params_t *p, float *w, float *velocity, size_t n) {
    const float lr = p->lr, momentum = p->momentum, wd = p->weight_decay;
    if (momentum != 0.0f && velocity) {
        for (size_t i = 0; i < n; i++) {
            velocity[i] = momentum * velocity[i] + wd * w[i];
        }
    } else if (wd != 0.0f) {
        const float shrink = 1.0f - lr * wd;
        for (size_t i = 0; i < n; i++) {
            w[i] *= shrink;
        }
    }
}

void mt_sgd_f32_fused_end(const mt_sgd_params_t *p, float *w, const float *velocity, size_t n) {
    const float lr = p->lr;
    // Without momentum the gradient pass already updated w.
    if (p->momentum != 0.0f && velocity) {
        for (size_t i = 0; i < n; i++) {
            w[i] -= lr * velocity[i];
        }
    }
}

// 1 - beta^step without cancellation: beta2 = 0.999 makes beta^step close to 1 for the
// first steps, where 1 - powf() would keep only a few correct bits.
static float bias_correction(float beta, int step) {
    return -expm1f((float)step * log1pf(beta - 1.0f));
}

void mt_adam_f32_step(const mt_adam_params_t *p, float *w, const float *g, float *m, float *v,
    size_t n) {
    // Step 0 would divide by a zero bias correction; treat it as the first step.
    const int step = p->step < 1 ? 1 : p->step;
    const float beta1 = p->beta1, beta2 = p->beta2, eps = p->eps, wd = p->weight_decay;
    // PyTorch's arrangement: w -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps).
    const float step_size = p->lr / bias_correction(beta1, step);
    const float inv_sqrt_bc2 = 1.0f / sqrtf(bias_correction(beta2, step));
    const float one_minus_beta1 = 1.0f - beta1, one_minus_beta2 = 1.0f - beta2;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] + wd * w[i];
        float mi = beta1 * m[i] + one_minus_beta1 * gi;
        float vi = beta2 * v[i] + one_minus_beta2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        w[i] -= step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    }
}
