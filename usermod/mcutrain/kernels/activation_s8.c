#include <string.h>

#include "activation_s8.h"

// Cores with the DSP extension (Cortex-M4/M7/M33) clamp and mask 4 values a word: SSUB8
// sets a GE flag per byte where a >= b (signed), and SEL picks each byte from its first or
// second operand by those flags. Unaligned words are fine for LDR/STR there (memcpy
// compiles to them).
#if defined(__ARM_FEATURE_DSP) && !defined(MCUTRAIN_PORTABLE_KERNELS)
#define MT_CLAMP_SIMD 1
#include <arm_acle.h>
#else
#define MT_CLAMP_SIMD 0
#endif

#if MT_CLAMP_SIMD
static inline uint32_t load4(const int8_t *p) {
    uint32_t w;
    memcpy(&w, p, 4);
    return w;
}

static inline void store4(int8_t *p, uint32_t w) {
    memcpy(p, &w, 4);
}

// v in every byte.
static inline uint32_t splat(int32_t v) {
    return (uint32_t)(uint8_t)v * 0x01010101u;
}
#endif

void mt_clamp_s8_forward(const int8_t *x, int8_t *y, size_t n, int32_t lo, int32_t hi) {
    size_t i = 0;
#if MT_CLAMP_SIMD
    const uint32_t lo4 = splat(lo), hi4 = splat(hi);
    if (hi >= 127) {
        // ReLU: only the lower bound.
        for (; i + 8 <= n; i += 8) {
            uint32_t a = load4(x + i), b = load4(x + i + 4);
            __ssub8(a, lo4);
            a = __sel(a, lo4);
            __ssub8(b, lo4);
            b = __sel(b, lo4);
            store4(y + i, a);
            store4(y + i + 4, b);
        }
    } else {
        for (; i + 4 <= n; i += 4) {
            uint32_t a = load4(x + i);
            __ssub8(a, lo4);
            a = __sel(a, lo4);
            __ssub8(hi4, a);
            store4(y + i, __sel(a, hi4));
        }
    }
#endif
    for (; i < n; i++) {
        int32_t v = x[i];
        y[i] = (int8_t)(v < lo ? lo : v > hi ? hi : v);
    }
}

void mt_clamp_s8_grad_input(const int8_t *y, const int8_t *dy, int8_t *dx, size_t n, int32_t lo,
    int32_t hi) {
    size_t i = 0;
#if MT_CLAMP_SIMD
    // lo < y < hi as y >= lo + 1 and hi - 1 >= y, bounds an int8 holds (else the loop below).
    if (lo < 127 && hi > -128) {
        const uint32_t lo4 = splat(lo + 1), hi4 = splat(hi - 1);
        if (hi > 127) {
            // ReLU: only the lower bound.
            for (; i + 8 <= n; i += 8) {
                __ssub8(load4(y + i), lo4);
                uint32_t a = __sel(load4(dy + i), 0);
                __ssub8(load4(y + i + 4), lo4);
                uint32_t b = __sel(load4(dy + i + 4), 0);
                store4(dx + i, a);
                store4(dx + i + 4, b);
            }
        } else {
            for (; i + 4 <= n; i += 4) {
                const uint32_t v = load4(y + i);
                __ssub8(v, lo4);
                uint32_t d = __sel(load4(dy + i), 0);
                __ssub8(hi4, v);
                store4(dx + i, __sel(d, 0));
            }
        }
    }
#endif
    for (; i < n; i++) {
        int32_t v = y[i];
        dx[i] = v > lo && v < hi ? dy[i] : 0;
    }
}
