#include <math.h>
#include <stdint.h>

#include "activation_f32.h"

// ReLU and ReLU6 work on the bits, so they are exact and cost no float compare (a call to
// __ltsf2 on soft-float cores): floats order like their bits as signed integers while
// positive, and negative numbers (-0 aside) are 0x80000001..0xff800000 (-inf); negative NaNs
// lie above that. The result is that of the float comparisons below, NaN falling through to
// the output as in PyTorch (a diverging run then shows NaN instead of silently clamping it to
// 0) and -0 staying -0:
//   forward    y = v < 0 ? 0 : v          (ReLU6: then v > 6 ? 6 : v)
//   backward   dx = y > 0 ? dy : 0        (ReLU6: 0 < y < 6)
// The C loops take 4 values a step (loads the compiler can schedule together).

// May alias the floats they read and write.
typedef uint32_t __attribute__((may_alias)) f32_bits_t;

#define F32_SIX 0x40c00000u
#define F32_INF 0x7f800000u

// v < 0 ? 0 : v: ((bits - 1) >> 23) + 1 is negative exactly for 0x80000001..0xff800000
// (-0 wraps to a large positive, negative NaNs give 0), three instructions on Thumb-2.
static inline uint32_t relu_bits(uint32_t u) {
    const int32_t t = ((int32_t)(u - 1u) >> 23) + 1;
    return u & ~(uint32_t)(t >> 31);
}

// y > 0, i.e. bits 0x00000001..0x7f800000 (+inf): not +-0, negative or NaN.
static inline uint32_t positive_mask(uint32_t u) {
    return u - 1u < F32_INF ? 0xffffffffu : 0u;
}

// 0 < y < 6.
static inline uint32_t below_six_mask(uint32_t u) {
    return u - 1u < F32_SIX - 1u ? 0xffffffffu : 0u;
}

static inline uint32_t relu6_bits(uint32_t u) {
    u = relu_bits(u);
    // Positive above 6 but not NaN: 0x40c00001..0x7f800000.
    return u - (F32_SIX + 1u) < F32_INF - F32_SIX ? F32_SIX : u;
}

// Thumb-2 (Cortex-M3 and up): the loops below in asm, 8 values a step for forward (LDM, 3
// instructions a value, STM: 3.5 a value) and 4 for backward (4.25 a value with QSUB, 5.25
// without); GCC spends 5 and 11 on the same C.
#if defined(__thumb2__) && defined(__OPTIMIZE__) && !defined(MCUTRAIN_PORTABLE_KERNELS)
#define MT_RELU_ASM 1
#else
#define MT_RELU_ASM 0
#endif

#if MT_RELU_ASM
// relu_bits on register r: t = ((r - 1) asr 23) + 1, r &= ~(t asr 31).
#define RELU_STEP(r) "sub %[t], " r ", #1\n\t" "add %[t], %[one], %[t], asr #23\n\t" \
    "bic " r ", " r ", %[t], asr #31\n\t"
// d = y in (0, inf] ? d : 0, on registers y (destroyed) and d. Where QSUB exists (DSP
// cores), y + 0x7fffff (wrapping) then - 0x800000 (saturating) is negative exactly when not
// 0 < y <= inf: +0 gives -1, positive NaNs wrap negative, negative ones wrap to small
// positives that the subtraction takes below 0, the rest of the negatives stay there.
#if defined(__ARM_FEATURE_DSP)
#define MASK_STEP(y, d) "add " y ", " y ", %[k]\n\t" "qsub " y ", " y ", %[k2]\n\t" \
    "bic " d ", " d ", " y ", asr #31\n\t"
#else
#define MASK_STEP(y, d) "sub " y ", " y ", #1\n\t" "cmp " y ", %[k]\n\t" "it cs\n\t" \
    "movcs " d ", #0\n\t"
#endif
#endif

void mt_relu_f32_forward(const float *x, float *y, size_t n) {
    const f32_bits_t *a = (const f32_bits_t *)x;
    f32_bits_t *b = (f32_bits_t *)y;
    size_t i = 0;
#if MT_RELU_ASM
    size_t octets = n >> 3;
    if (octets) {
        const f32_bits_t *src = a;
        f32_bits_t *dst = b;
        uint32_t t;
        __asm__ volatile (
            "1:\n\t"
            "ldmia %[src]!, {r4, r5, r6, r8, r10, r11, r12, lr}\n\t"
            RELU_STEP("r4") RELU_STEP("r5") RELU_STEP("r6") RELU_STEP("r8")
            RELU_STEP("r10") RELU_STEP("r11") RELU_STEP("r12") RELU_STEP("lr")
            "stmia %[dst]!, {r4, r5, r6, r8, r10, r11, r12, lr}\n\t"
            "subs %[n], %[n], #1\n\t"
            "bne 1b\n\t"
            : [src] "+r" (src), [dst] "+r" (dst), [n] "+r" (octets), [t] "=&r" (t)
            : [one] "r" (1)
            : "r4", "r5", "r6", "r8", "r10", "r11", "r12", "lr", "cc", "memory");
        i = n & ~(size_t)7;
    }
#endif
    for (; i + 4 <= n; i += 4) {
        const uint32_t u0 = a[i], u1 = a[i + 1], u2 = a[i + 2], u3 = a[i + 3];
        b[i] = relu_bits(u0);
        b[i + 1] = relu_bits(u1);
        b[i + 2] = relu_bits(u2);
        b[i + 3] = relu_bits(u3);
    }
    for (; i < n; i++) {
        b[i] = relu_bits(a[i]);
    }
}

void mt_relu_f32_grad_input(const float *y, const float *dy, float *dx, size_t n) {
    const f32_bits_t *a = (const f32_bits_t *)y, *d = (const f32_bits_t *)dy;
    f32_bits_t *b = (f32_bits_t *)dx;
    size_t i = 0;
#if MT_RELU_ASM
    size_t quads = n >> 2;
    if (quads) {
        const f32_bits_t *ys = a, *ds = d;
        f32_bits_t *dst = b;
        __asm__ volatile (
            "1:\n\t"
            "ldmia %[ys]!, {r4, r5, r6, r8}\n\t"
            "ldmia %[ds]!, {r10, r11, r12, lr}\n\t"
            MASK_STEP("r4", "r10") MASK_STEP("r5", "r11") MASK_STEP("r6", "r12") MASK_STEP("r8", "lr")
            "stmia %[dst]!, {r10, r11, r12, lr}\n\t"
            "subs %[n], %[n], #1\n\t"
            "bne 1b\n\t"
            : [ys] "+r" (ys), [ds] "+r" (ds), [dst] "+r" (dst), [n] "+r" (quads)
#if defined(__ARM_FEATURE_DSP)
            : [k] "r" (0x7fffffu), [k2] "r" (0x800000u)
#else
            : [k] "r" (F32_INF)
#endif
            : "r4", "r5", "r6", "r8", "r10", "r11", "r12", "lr", "cc", "memory");
        i = n & ~(size_t)3;
    }
#endif
    for (; i + 4 <= n; i += 4) {
        const uint32_t u0 = a[i], u1 = a[i + 1], u2 = a[i + 2], u3 = a[i + 3];
        const uint32_t d0 = d[i], d1 = d[i + 1], d2 = d[i + 2], d3 = d[i + 3];
        b[i] = d0 & positive_mask(u0);
        b[i + 1] = d1 & positive_mask(u1);
        b[i + 2] = d2 & positive_mask(u2);
        b[i + 3] = d3 & positive_mask(u3);
    }
    for (; i < n; i++) {
        b[i] = d[i] & positive_mask(a[i]);
    }
}

void mt_relu6_f32_forward(const float *x, float *y, size_t n) {
    const f32_bits_t *a = (const f32_bits_t *)x;
    f32_bits_t *b = (f32_bits_t *)y;
    for (size_t i = 0; i < n; i++) {
        b[i] = relu6_bits(a[i]);
    }
}

void mt_relu6_f32_grad_input(const float *y, const float *dy, float *dx, size_t n) {
    const f32_bits_t *a = (const f32_bits_t *)y, *d = (const f32_bits_t *)dy;
    f32_bits_t *b = (f32_bits_t *)dx;
    for (size_t i = 0; i < n; i++) {
        b[i] = d[i] & below_six_mask(a[i]);
    }
}

void mt_softmax_f32_forward(const float *x, float *y, int rows, int cols) {
    if (cols <= 0) {
        return;
    }
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * (size_t)cols;
        float *yr = y + (size_t)r * (size_t)cols;
        float max = xr[0];
        for (int j = 1; j < cols; j++) {
            if (xr[j] > max) {
                max = xr[j];
            }
        }
        // Each x[j] is read once before y[j] is written, so y may alias x.
        float sum = 0.0f;
        for (int j = 0; j < cols; j++) {
            float e = expf(xr[j] - max);
            yr[j] = e;
            sum += e;
        }
        // sum >= 1 (the maximum contributes exp(0)), so the reciprocal is safe.
        float inv_sum = 1.0f / sum;
        for (int j = 0; j < cols; j++) {
            yr[j] *= inv_sum;
        }
    }
}

void mt_softmax_f32_grad_input(const float *y, const float *dy, float *dx, int rows, int cols) {
    for (int r = 0; r < rows; r++) {
        const float *yr = y + (size_t)r * (size_t)cols;
        const float *dyr = dy + (size_t)r * (size_t)cols;
        float *dxr = dx + (size_t)r * (size_t)cols;
        float dot = 0.0f;
        for (int j = 0; j < cols; j++) {
            dot += dyr[j] * yr[j];
        }
        for (int j = 0; j < cols; j++) {
            dxr[j] = yr[j] * (dyr[j] - dot);
        }
    }
}

void mt_add_f32(const float *a, const float *b, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) {
        y[i] = a[i] + b[i];
    }
}
