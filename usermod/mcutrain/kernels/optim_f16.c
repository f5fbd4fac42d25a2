#include <math.h>

#include "optim_f16.h"

// The rounding of one new weight (or fp16 velocity) value: nearest even, or stochastic
// with the generator state s advanced once.
static inline uint16_t round16(float v, int stochastic, uint32_t *s) {
    if (!stochastic) {
        return mt_f32_to_f16(v);
    }
    *s = mt_xorshift32(*s);
    return mt_f32_to_f16_sr(v, *s);
}

// One generator state per call, kept in a local and stored back at the end.
typedef struct {
    int on;
    uint32_t s;
} rounding_t;

static rounding_t rounding_begin(const mt_f16_rng_t *rng) {
    rounding_t r = { rng != NULL, rng ? mt_f16_rng_seed(rng) : 0u };
    return r;
}

static void rounding_end(const rounding_t *r, mt_f16_rng_t *rng) {
    if (rng) {
        rng->state = r->s;
    }
}

void mt_sgd_f16_fused_begin_v16(const mt_sgd_params_t *p, uint16_t *w, uint16_t *velocity,
    size_t n, mt_f16_rng_t *rng) {
    const float momentum = p->momentum, wd = p->weight_decay;
    rounding_t r = rounding_begin(rng);
    if (momentum != 0.0f && velocity) {
        for (size_t i = 0; i < n; i++) {
            velocity[i] = round16(momentum * mt_f16_to_f32(velocity[i]) + wd * mt_f16_to_f32(w[i]),
                r.on, &r.s);
        }
    } else if (wd != 0.0f) {
        const float shrink = 1.0f - p->lr * wd;
        for (size_t i = 0; i < n; i++) {
            w[i] = round16(mt_f16_to_f32(w[i]) * shrink, r.on, &r.s);
        }
    }
    rounding_end(&r, rng);
}

void mt_sgd_f16_fused_end_v16(const mt_sgd_params_t *p, uint16_t *w, const uint16_t *velocity,
    size_t n, mt_f16_rng_t *rng) {
    if (p->momentum == 0.0f || !velocity) {
        return;   // the gradient pass already updated w
    }
    const float lr = p->lr;
    rounding_t r = rounding_begin(rng);
    for (size_t i = 0; i < n; i++) {
        w[i] = round16(mt_f16_to_f32(w[i]) - lr * mt_f16_to_f32(velocity[i]), r.on, &r.s);
    }
    rounding_end(&r, rng);
}

void mt_sgd_f16_fused_begin_v32(const mt_sgd_params_t *p, uint16_t *w, float *velocity,
    size_t n, mt_f16_rng_t *rng) {
    const float momentum = p->momentum, wd = p->weight_decay;
    rounding_t r = rounding_begin(rng);
    if (momentum != 0.0f && velocity) {
        for (size_t i = 0; i < n; i++) {
            velocity[i] = momentum * velocity[i] + wd * mt_f16_to_f32(w[i]);
        }
    } else if (wd != 0.0f) {
        const float shrink = 1.0f - p->lr * wd;
        for (size_t i = 0; i < n; i++) {
            w[i] = round16(mt_f16_to_f32(w[i]) * shrink, r.on, &r.s);
        }
    }
    rounding_end(&r, rng);
}

void mt_sgd_f16_fused_end_v32(const mt_sgd_params_t *p, uint16_t *w, const float *velocity,
    size_t n, mt_f16_rng_t *rng) {
    if (p->momentum == 0.0f || !velocity) {
        return;
    }
    const float lr = p->lr;
    rounding_t r = rounding_begin(rng);
    for (size_t i = 0; i < n; i++) {
        w[i] = round16(mt_f16_to_f32(w[i]) - lr * velocity[i], r.on, &r.s);
    }
    rounding_end(&r, rng);
}

void mt_sgd_f16_step_v16(const mt_sgd_params_t *p, uint16_t *w, const float *g,
    uint16_t *velocity, size_t n, mt_f16_rng_t *rng) {
    const float lr = p->lr, momentum = p->momentum, wd = p->weight_decay;
    rounding_t r = rounding_begin(rng);
    if (momentum != 0.0f && velocity) {
        for (size_t i = 0; i < n; i++) {
            const float wi = mt_f16_to_f32(w[i]);
            const uint16_t v = round16(momentum * mt_f16_to_f32(velocity[i]) + (g[i] + wd * wi),
                r.on, &r.s);
            velocity[i] = v;
            w[i] = round16(wi - lr * mt_f16_to_f32(v), r.on, &r.s);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            const float wi = mt_f16_to_f32(w[i]);
            w[i] = round16(wi - lr * (g[i] + wd * wi), r.on, &r.s);
        }
    }
    rounding_end(&r, rng);
}

void mt_sgd_f16_step_v32(const mt_sgd_params_t *p, uint16_t *w, const float *g,
    float *velocity, size_t n, mt_f16_rng_t *rng) {
    const float lr = p->lr, momentum = p->momentum, wd = p->weight_decay;
    rounding_t r = rounding_begin(rng);
    if (momentum != 0.0f && velocity) {
        for (size_t i = 0; i < n; i++) {
            const float wi = mt_f16_to_f32(w[i]);
            const float v = momentum * velocity[i] + (g[i] + wd * wi);
            velocity[i] = v;
            w[i] = round16(wi - lr * v, r.on, &r.s);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            const float wi = mt_f16_to_f32(w[i]);
            w[i] = round16(wi - lr * (g[i] + wd * wi), r.on, &r.s);
        }
    }
    rounding_end(&r, rng);
}

// 1 - beta^step without cancellation (as optim_f32.c).
static float bias_correction(float beta, int step) {
    return -expm1f((float)step * log1pf(beta - 1.0f));
}

void mt_adam_f16_step(const mt_adam_params_t *p, uint16_t *w, const float *g, float *m,
    float *v, size_t n, mt_f16_rng_t *rng) {
    const int step = p->step < 1 ? 1 : p->step;
    const float beta1 = p->beta1, beta2 = p->beta2, eps = p->eps, wd = p->weight_decay;
    const float step_size = p->lr / bias_correction(beta1, step);
    const float inv_sqrt_bc2 = 1.0f / sqrtf(bias_correction(beta2, step));
    const float one_minus_beta1 = 1.0f - beta1, one_minus_beta2 = 1.0f - beta2;
    rounding_t r = rounding_begin(rng);
    for (size_t i = 0; i < n; i++) {
        const float wi = mt_f16_to_f32(w[i]);
        const float gi = g[i] + wd * wi;
        const float mi = beta1 * m[i] + one_minus_beta1 * gi;
        const float vi = beta2 * v[i] + one_minus_beta2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        w[i] = round16(wi - step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps), r.on, &r.s);
    }
    rounding_end(&r, rng);
}
