#include "vector_f32.h"

#include <math.h>

// Thumb-2 with a single-precision FPU: 8 floats per vldmia, one multiply-add each.
#if defined(__thumb2__) && defined(__ARM_FP) && (__ARM_FP & 4) && defined(__OPTIMIZE__) \
    && !defined(MCUTRAIN_PORTABLE_KERNELS)
#define MT_VECTOR_ASM 1
#else
#define MT_VECTOR_ASM 0
#endif

void mt_minmax_f32(const float *x, size_t n, float *lo, float *hi) {
    float a = 0.0f, b = 0.0f;
    int seen = 0;
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        if (v != v) {
            continue;   // NaN
        }
        if (!seen) {
            a = b = v;
            seen = 1;
        } else if (v < a) {
            a = v;
        } else if (v > b) {
            b = v;
        }
    }
    *lo = a;
    *hi = b;
}

float mt_absmax_f32(const float *x, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float v = x[i] < 0.0f ? -x[i] : x[i];
        if (v > m) {   // false for NaN
            m = v;
        }
    }
    return m;
}

void mt_scale_f32(float *x, size_t n, float a) {
    for (size_t i = 0; i < n; i++) {
        x[i] *= a;
    }
}

void mt_bias_s32_to_f32(const int32_t *q, float *b, int channels, float x_scale, const float *w_scale) {
    for (int o = 0; o < channels; o++) {
        b[o] = (float)q[o] * (x_scale * w_scale[o]);
    }
}

bool mt_all_finite_f32(const float *x, size_t n) {
    size_t i = 0;
#if MT_VECTOR_ASM
    // acc += v * 0 stays 0 for finite v and turns NaN for inf or NaN: about 1.4 instructions
    // a value, where a compare and branch per value takes 9.
    size_t octets = n >> 3;
    float acc = 0.0f;
    if (octets) {
        __asm__ volatile (
            "vmov.f32 s9, %[acc]\n\t"
            "1:\n\t"
            "vldmia %[x]!, {s0-s7}\n\t"
            "vmla.f32 %[acc], s0, s9\n\t" "vmla.f32 %[acc], s1, s9\n\t"
            "vmla.f32 %[acc], s2, s9\n\t" "vmla.f32 %[acc], s3, s9\n\t"
            "vmla.f32 %[acc], s4, s9\n\t" "vmla.f32 %[acc], s5, s9\n\t"
            "vmla.f32 %[acc], s6, s9\n\t" "vmla.f32 %[acc], s7, s9\n\t"
            "subs %[octets], %[octets], #1\n\t" "bne 1b\n\t"
            : [x] "+r" (x), [octets] "+r" (octets), [acc] "+t" (acc)
            :
            : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s9", "cc", "memory");
        if (acc != 0.0f) {
            return false;
        }
    }
    n &= 7;
#endif
    for (; i < n; i++) {
        if (!isfinite(x[i])) {
            return false;
        }
    }
    return true;
}
