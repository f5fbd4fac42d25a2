// Array conversions between binary16 and fp32, and the fp16 weight update.
#include "half.h"

// On a Cortex-M FPU one vldmia brings 8 halves (4 words) into s0..s3 and VCVTB/VCVTT widen
// the bottom and top half of each word: 12 instructions per 8 values, where a per-element
// loop needs ldrh + vmov + vcvtb + vstr.

#if MT_F16_ZFH
// A half loaded into an f register (NaN-boxed), its class bits, and a half stored from one.
static inline float zfh_load(const uint16_t *p) {
    float h;
    __asm__ ("flh %0, %1" : "=f" (h) : "m" (*p));
    return h;
}

static inline uint32_t zfh_class(float h) {
    uint32_t c;
    __asm__ ("fclass.h %0, %1" : "=r" (c) : "f" (h));
    return c;
}

static inline void zfh_store(uint16_t *p, float h) {
    __asm__ ("fsh %1, %0" : "=m" (*p) : "f" (h));
}

#define ZFH_CLASS_NAN 0x300u   // fclass: signalling (bit 8) or quiet (bit 9) NaN

// f rounded toward zero to a half.
static inline float zfh_narrow_rtz(float f) {
    float h;
    __asm__ ("fcvt.h.s %0, %1, rtz" : "=f" (h) : "f" (f));
    return h;
}

// The bits of |f| from the smallest normal half (2^-14) up to, not including, the largest
// (65504): adding 13 random bits below a half's last one cannot carry past it there.
#define ZFH_SR_LOW 0x38800000u
#define ZFH_SR_HIGH 0x477fe000u
#endif

// On rv32 with Zfh four halves at a time: FLH, FCLASS.H (one test that none is a NaN, whose
// payload FCVT would drop), FCVT.S.H and FSW each, 6 instructions a value against 10 when
// each value is tested in an integer register.
void mt_f16_to_f32_array(const uint16_t *src, float *dst, size_t n) {
#if MT_F16_ZFH
    for (; n >= 4; n -= 4, src += 4, dst += 4) {
        const float h0 = zfh_load(src), h1 = zfh_load(src + 1);
        const float h2 = zfh_load(src + 2), h3 = zfh_load(src + 3);
        if ((zfh_class(h0) | zfh_class(h1) | zfh_class(h2) | zfh_class(h3)) & ZFH_CLASS_NAN) {
            for (int i = 0; i < 4; i++) {
                dst[i] = mt_f16_to_f32(src[i]);
            }
        } else {
            dst[0] = mt_zfh_widen(h0);
            dst[1] = mt_zfh_widen(h1);
            dst[2] = mt_zfh_widen(h2);
            dst[3] = mt_zfh_widen(h3);
        }
    }
#elif MT_F16_HW
    if (n && ((uintptr_t)src & 2u)) {
        *dst++ = mt_f16_to_f32(*src++);
        n--;
    }
    size_t octets = n >> 3;
    if (octets) {
        __asm__ volatile (
            "1:\n\t"
            "vldmia %[src]!, {s0-s3}\n\t"
            "vcvtb.f32.f16 s8, s0\n\t" "vcvtt.f32.f16 s9, s0\n\t"
            "vcvtb.f32.f16 s10, s1\n\t" "vcvtt.f32.f16 s11, s1\n\t"
            "vcvtb.f32.f16 s12, s2\n\t" "vcvtt.f32.f16 s13, s2\n\t"
            "vcvtb.f32.f16 s14, s3\n\t" "vcvtt.f32.f16 s15, s3\n\t"
            "vstmia %[dst]!, {s8-s15}\n\t"
            "subs %[octets], %[octets], #1\n\t" "bne 1b\n\t"
            : [src] "+r" (src), [dst] "+r" (dst), [octets] "+r" (octets)
            :
            : "s0", "s1", "s2", "s3", "s8", "s9", "s10", "s11", "s12", "s13", "s14", "s15",
              "cc", "memory");
    }
    n &= 7;
#endif
    for (size_t i = 0; i < n; i++) {
        dst[i] = mt_f16_to_f32(src[i]);
    }
}

#if MT_F16_ZFH
void mt_f16_to_f32_operands(const uint16_t *src, float *dst, size_t n) {
    // 24 instructions and 3 loop steps per 8 values
    for (; n >= 8; n -= 8, src += 8, dst += 8) {
#define MT_WIDEN_ONE(i) dst[i] = mt_zfh_widen(zfh_load(src + i));
        MT_WIDEN_ONE(0) MT_WIDEN_ONE(1) MT_WIDEN_ONE(2) MT_WIDEN_ONE(3)
        MT_WIDEN_ONE(4) MT_WIDEN_ONE(5) MT_WIDEN_ONE(6) MT_WIDEN_ONE(7)
#undef MT_WIDEN_ONE
    }
    for (; n > 0; n--) {
        *dst++ = mt_zfh_widen(zfh_load(src++));
    }
}
#endif

// With Zfh four floats at a time: one test that none is a NaN (FEQ.S), then FCVT.H.S and FSH
// each, about 6 instructions a value against 9.
void mt_f32_to_f16_array(const float *src, uint16_t *dst, size_t n) {
#if MT_F16_ZFH
    for (; n >= 4; n -= 4, src += 4, dst += 4) {
        const float f0 = src[0], f1 = src[1], f2 = src[2], f3 = src[3];
        if ((f0 == f0) & (f1 == f1) & (f2 == f2) & (f3 == f3)) {
            zfh_store(dst, mt_zfh_narrow(f0));
            zfh_store(dst + 1, mt_zfh_narrow(f1));
            zfh_store(dst + 2, mt_zfh_narrow(f2));
            zfh_store(dst + 3, mt_zfh_narrow(f3));
        } else {
            for (int i = 0; i < 4; i++) {
                dst[i] = mt_f32_to_f16(src[i]);
            }
        }
    }
#elif MT_F16_HW
    if (n && ((uintptr_t)dst & 2u)) {
        *dst++ = mt_f32_to_f16(*src++);
        n--;
    }
    size_t octets = n >> 3;
    if (octets) {
        // vcvtb/vcvtt each write one half of the destination word and keep the other.
        __asm__ volatile (
            "1:\n\t"
            "vldmia %[src]!, {s0-s7}\n\t"
            "vcvtb.f16.f32 s8, s0\n\t" "vcvtt.f16.f32 s8, s1\n\t"
            "vcvtb.f16.f32 s9, s2\n\t" "vcvtt.f16.f32 s9, s3\n\t"
            "vcvtb.f16.f32 s10, s4\n\t" "vcvtt.f16.f32 s10, s5\n\t"
            "vcvtb.f16.f32 s11, s6\n\t" "vcvtt.f16.f32 s11, s7\n\t"
            "vstmia %[dst]!, {s8-s11}\n\t"
            "subs %[octets], %[octets], #1\n\t" "bne 1b\n\t"
            : [src] "+r" (src), [dst] "+r" (dst), [octets] "+r" (octets)
            :
            : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11",
              "cc", "memory");
    }
    n &= 7;
#endif
    for (size_t i = 0; i < n; i++) {
        dst[i] = mt_f32_to_f16(src[i]);
    }
}

#if MT_F16_ZFH
void mt_f32_to_f16_results(const float *src, uint16_t *dst, size_t n) {
    // 24 instructions and 3 loop steps per 8 values
    for (; n >= 8; n -= 8, src += 8, dst += 8) {
#define MT_NARROW_ONE(i) zfh_store(dst + i, mt_zfh_narrow(src[i]));
        MT_NARROW_ONE(0) MT_NARROW_ONE(1) MT_NARROW_ONE(2) MT_NARROW_ONE(3)
        MT_NARROW_ONE(4) MT_NARROW_ONE(5) MT_NARROW_ONE(6) MT_NARROW_ONE(7)
#undef MT_NARROW_ONE
    }
    for (; n > 0; n--) {
        zfh_store(dst++, mt_zfh_narrow(*src++));
    }
}
#endif

void mt_f16_add_scaled(uint16_t *w, const float *g, float alpha, size_t n, mt_f16_rng_t *rng) {
    if (!rng) {
#if MT_F16_HW
        if (n && ((uintptr_t)w & 2u)) {
            *w = mt_f32_to_f16(mt_f16_to_f32(*w) + alpha * *g++);
            w++;
            n--;
        }
        size_t octets = n >> 3;
        if (octets) {
            // 8 weights widened, 8 fused multiply-adds, narrowed back: 29 instructions per 8.
            __asm__ volatile (
                "1:\n\t"
                "vldmia %[w], {s0-s3}\n\t"
                "vldmia %[g]!, {s16-s23}\n\t"
                "vcvtb.f32.f16 s8, s0\n\t" "vcvtt.f32.f16 s9, s0\n\t"
                "vcvtb.f32.f16 s10, s1\n\t" "vcvtt.f32.f16 s11, s1\n\t"
                "vcvtb.f32.f16 s12, s2\n\t" "vcvtt.f32.f16 s13, s2\n\t"
                "vcvtb.f32.f16 s14, s3\n\t" "vcvtt.f32.f16 s15, s3\n\t"
                "vfma.f32 s8, s16, %[alpha]\n\t" "vfma.f32 s9, s17, %[alpha]\n\t"
                "vfma.f32 s10, s18, %[alpha]\n\t" "vfma.f32 s11, s19, %[alpha]\n\t"
                "vfma.f32 s12, s20, %[alpha]\n\t" "vfma.f32 s13, s21, %[alpha]\n\t"
                "vfma.f32 s14, s22, %[alpha]\n\t" "vfma.f32 s15, s23, %[alpha]\n\t"
                "vcvtb.f16.f32 s0, s8\n\t" "vcvtt.f16.f32 s0, s9\n\t"
                "vcvtb.f16.f32 s1, s10\n\t" "vcvtt.f16.f32 s1, s11\n\t"
                "vcvtb.f16.f32 s2, s12\n\t" "vcvtt.f16.f32 s2, s13\n\t"
                "vcvtb.f16.f32 s3, s14\n\t" "vcvtt.f16.f32 s3, s15\n\t"
                "vstmia %[w]!, {s0-s3}\n\t"
                "subs %[octets], %[octets], #1\n\t" "bne 1b\n\t"
                : [w] "+r" (w), [g] "+r" (g), [octets] "+r" (octets)
                : [alpha] "t" (alpha)
                : "s0", "s1", "s2", "s3", "s8", "s9", "s10", "s11", "s12", "s13", "s14", "s15",
                  "s16", "s17", "s18", "s19", "s20", "s21", "s22", "s23", "cc", "memory");
        }
        n &= 7;
#endif
        // The sum is an arithmetic result (on Zfh: no NaN tests).
        for (size_t i = 0; i < n; i++) {
            w[i] = mt_f16_result(mt_f16_operand(w + i) + alpha * g[i]);
        }
        return;
    }
    uint32_t s = mt_f16_rng_seed(rng);
    for (size_t i = 0; i < n; i++) {
        s = mt_xorshift32(s);
        const float f = mt_f16_operand(w + i) + alpha * g[i];
#if MT_F16_ZFH
        // Where the result is a normal half short of rounding up to infinity, adding the
        // random bits to f's and converting toward zero truncates them away exactly as
        // mt_f32_to_f16_sr does, in 9 instructions instead of 15.
        const uint32_t x = mt_f32_bits(f);
        if ((x & 0x7fffffffu) - ZFH_SR_LOW < ZFH_SR_HIGH - ZFH_SR_LOW) {
            zfh_store(w + i, zfh_narrow_rtz(mt_f32_from_bits(x + (s >> 19))));
            continue;
        }
#endif
        w[i] = mt_f32_to_f16_sr(f, s);
    }
    rng->state = s;
}
