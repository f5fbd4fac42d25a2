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

// The momentum passes around the gradient pass: on Thumb-2 with a single-precision FPU
// they move 8 floats per vldmia/vstmia (1.5 to 2.5 instructions a parameter, against 7
// and 8 in compiled C), with the same fused multiply-adds GCC emits for the C below, so
// every target rounds as before.
#if defined(__thumb2__) && defined(__ARM_FP) && (__ARM_FP & 4) && defined(__ARM_FEATURE_FMA) \
    && defined(__OPTIMIZE__) && !defined(MCUTRAIN_PORTABLE_KERNELS)
#define MT_OPTIM_ASM 1
#else
#define MT_OPTIM_ASM 0
#endif

#if MT_OPTIM_ASM
#define MT_OCTET(op, d, x, s) \
    op " s" #d ", s" #x ", %[" s "]\n\t"
#define MT_OCTET8(op, s) \
    MT_OCTET(op, 0, 8, s) MT_OCTET(op, 1, 9, s) MT_OCTET(op, 2, 10, s) MT_OCTET(op, 3, 11, s) \
    MT_OCTET(op, 4, 12, s) MT_OCTET(op, 5, 13, s) MT_OCTET(op, 6, 14, s) MT_OCTET(op, 7, 15, s)
#define MT_CLOBBER_S0_15 "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", \
    "s11", "s12", "s13", "s14", "s15", "cc", "memory"
#endif

// v = momentum * v (no weight decay): v is already in s8.. and the product goes to s0...
static size_t scale_octets(float momentum, float *v, size_t n) {
#if MT_OPTIM_ASM
    size_t octets = n >> 3;
    if (octets) {
        __asm__ volatile (
            "1:\n\t"
            "vldmia %[v], {s8-s15}\n\t"
            MT_OCTET8("vmul.f32", "m")
            "vstmia %[v]!, {s0-s7}\n\t"
            "subs %[octets], %[octets], #1\n\t" "bne 1b\n\t"
            : [v] "+r" (v), [octets] "+r" (octets)
            : [m] "t" (momentum)
            : MT_CLOBBER_S0_15);
    }
    return n & ~(size_t)7;
#else
    (void)momentum; (void)v; (void)n;
    return 0;
#endif
}

// v = momentum * v + wd * w, as GCC contracts the C: fma(momentum, v, wd * w).
static size_t decay_octets(float momentum, float wd, float *v, const float *w, size_t n) {
#if MT_OPTIM_ASM
    size_t octets = n >> 3;
    if (octets) {
        __asm__ volatile (
            "1:\n\t"
            "vldmia %[w]!, {s8-s15}\n\t"
            MT_OCTET8("vmul.f32", "wd")
            "vldmia %[v], {s8-s15}\n\t"
            MT_OCTET8("vfma.f32", "m")
            "vstmia %[v]!, {s0-s7}\n\t"
            "subs %[octets], %[octets], #1\n\t" "bne 1b\n\t"
            : [v] "+r" (v), [w] "+r" (w), [octets] "+r" (octets)
            : [m] "t" (momentum), [wd] "t" (wd)
            : MT_CLOBBER_S0_15);
    }
    return n & ~(size_t)7;
#else
    (void)momentum; (void)wd; (void)v; (void)w; (void)n;
    return 0;
#endif
}

// w -= lr * v, as GCC contracts it: one vfms.
static size_t descend_octets(float lr, float *w, const float *v, size_t n) {
#if MT_OPTIM_ASM
    size_t octets = n >> 3;
    if (octets) {
        __asm__ volatile (
            "1:\n\t"
            "vldmia %[w], {s0-s7}\n\t"
            "vldmia %[v]!, {s8-s15}\n\t"
            MT_OCTET8("vfms.f32", "lr")
            "vstmia %[w]!, {s0-s7}\n\t"
            "subs %[octets], %[octets], #1\n\t" "bne 1b\n\t"
            : [w] "+r" (w), [v] "+r" (v), [octets] "+r" (octets)
            : [lr] "t" (lr)
            : MT_CLOBBER_S0_15);
    }
    return n & ~(size_t)7;
#else
    (void)lr; (void)w; (void)v; (void)n;
    return 0;
#endif
}

void mt_sgd_f32_fused_begin(const mt_sgd_params_t *p, float *w, float *velocity, size_t n) {
    const float lr = p->lr, momentum = p->momentum, wd = p->weight_decay;
    if (momentum != 0.0f && velocity) {
        // Without weight decay, wd * w adds only a zero (for finite w): skip its load.
        if (wd == 0.0f) {
            for (size_t i = scale_octets(momentum, velocity, n); i < n; i++) {
                velocity[i] = momentum * velocity[i];
            }
        } else {
            for (size_t i = decay_octets(momentum, wd, velocity, w, n); i < n; i++) {
                velocity[i] = momentum * velocity[i] + wd * w[i];
            }
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
        for (size_t i = descend_octets(lr, w, velocity, n); i < n; i++) {
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
