// IEEE 754 binary16 ("half", float16) storage for the fp16 kernels: conversions to and
// from fp32, rounding to nearest even or stochastically, and the fp16 weight update.
// Halves are stored as uint16_t bit patterns; all arithmetic happens in fp32.
//
// Conversions (all targets give the same bits):
// - fp32 -> fp16 rounds to nearest, ties to even; magnitudes from 65520 up become infinity,
//   tiny values become fp16 subnormals or signed zero.
// - fp16 -> fp32 is exact (every half is a float).
// - NaN stays NaN with its sign and the top payload bits, and comes out quiet (the quiet bit
//   set), as IEEE 754 and the Cortex-M FPU do. numpy keeps signalling NaNs signalling, so for
//   those inputs only (payload without the quiet bit) our bits differ from numpy's.
//
// Cortex-M FPUs (FPv4-SP on the M4F, FPv5) convert in hardware with VCVTB/VCVTT; that path is
// inline asm and needs no -mfp16-format flag (without the flag GCC only lacks the __fp16
// type; the instructions are always available). It assumes the FPSCR as at reset: AHP = 0
// (IEEE format, not ARM's alternative one) and DN = 0 (NaN payloads kept), round to nearest.
// RISC-V cores with Zfh (qemu-rv32f) convert with FCVT.S.H / FCVT.H.S (inline asm: GCC 12 has
// no _Float16 there), rounding as frm says (round to nearest even at reset). RISC-V returns
// the canonical NaN from every conversion, dropping sign and payload, so NaNs take the
// portable path there. The portable bit-manipulation path, used on the host and RV32,
// computes the same bits with integer operations only (no soft-float calls on cores without
// an FPU).
#ifndef MCUTRAIN_KERNELS_HALF_H
#define MCUTRAIN_KERNELS_HALF_H

#include <stddef.h>
#include <stdint.h>

#if defined(__thumb2__) && defined(__ARM_FP) && (__ARM_FP & 4) && defined(__ARM_ARCH_PROFILE) \
    && __ARM_ARCH_PROFILE == 'M' && !defined(MCUTRAIN_PORTABLE_KERNELS)
#define MT_F16_HW 1
#else
#define MT_F16_HW 0
#endif

#if defined(__riscv_zfh) && defined(__riscv_flen) && !defined(MCUTRAIN_PORTABLE_KERNELS)
#define MT_F16_ZFH 1
#else
#define MT_F16_ZFH 0
#endif

#if MT_F16_ZFH
// Zfh's conversions on a half held in an f register (NaN-boxed, as FLH and FMV.H.X leave it):
// exact widening, and rounding to nearest even whatever frm says.
static inline float mt_zfh_widen(float h) {
    float f;
    __asm__ ("fcvt.s.h %0, %1" : "=f" (f) : "f" (h));
    return f;
}

static inline float mt_zfh_narrow(float f) {
    float h;
    __asm__ ("fcvt.h.s %0, %1, rne" : "=f" (h) : "f" (f));
    return h;
}

// mt_zfh_narrow's half as its bits (fmv.x.h sign-extends them; the cast drops the copies of
// the sign).
static inline uint16_t mt_zfh_narrow_bits(float f) {
    uint32_t r;
    __asm__ ("fmv.x.h %0, %1" : "=r" (r) : "f" (mt_zfh_narrow(f)));
    return (uint16_t)r;
}
#endif

#define MT_F16_ZERO ((uint16_t)0x0000u)
#define MT_F16_ONE ((uint16_t)0x3c00u)
#define MT_F16_INF ((uint16_t)0x7c00u)

// Type punning through a union (C99 TC3, 6.5.2.3): unlike memcpy it stays inline in
// freestanding builds (-ffreestanding, -fno-builtin).
typedef union {
    float f;
    uint32_t u;
} mt_f32_pun_t;

static inline uint32_t mt_f32_bits(float f) {
    mt_f32_pun_t p;
    p.f = f;
    return p.u;
}

static inline float mt_f32_from_bits(uint32_t u) {
    mt_f32_pun_t p;
    p.u = u;
    return p.f;
}

// Exact widening of a half to a float, with integer operations only.
static inline float mt_f16_to_f32_portable(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    uint32_t bits;
    if (em >= 0x0400u && em < 0x7c00u) {
        bits = (em << 13) + ((127u - 15u) << 23);   // normal: rebias the exponent
    } else if (em >= 0x7c00u) {
        bits = 0x7f800000u | (em & 0x3ffu) << 13;   // infinity or NaN
        if (em != 0x7c00u) {
            bits |= 0x00400000u;                    // quiet the NaN
        }
    } else if (em != 0) {
        // Subnormal: shift the leading one up to the implicit bit (at most 10 steps).
        uint32_t e = 127u - 14u;
        while (!(em & 0x0400u)) {
            em <<= 1;
            e--;
        }
        bits = e << 23 | (em & 0x3ffu) << 13;
    } else {
        bits = 0;
    }
    return mt_f32_from_bits(sign | bits);
}

// Exact widening of a half to a float.
static inline float mt_f16_to_f32(uint16_t h) {
#if MT_F16_HW
    float f;
    __asm__ ("vmov %0, %1\n\t" "vcvtb.f32.f16 %0, %0" : "=t" (f) : "r" ((uint32_t)h));
    return f;
#elif MT_F16_ZFH
    if ((h & 0x7fffu) > 0x7c00u) {
        return mt_f16_to_f32_portable(h);   // NaN: keep its sign and payload
    }
    float boxed;
    __asm__ ("fmv.h.x %0, %1" : "=f" (boxed) : "r" ((uint32_t)h));
    return mt_zfh_widen(boxed);
#else
    return mt_f16_to_f32_portable(h);
#endif
}

// One half widened for fp32 arithmetic only (see mt_f16_to_f32_operands): on Zfh FLH +
// FCVT.S.H, without the NaN test.
static inline float mt_f16_operand(const uint16_t *p) {
#if MT_F16_ZFH
    float h;
    __asm__ ("flh %0, %1" : "=f" (h) : "m" (*p));
    return mt_zfh_widen(h);
#else
    return mt_f16_to_f32(*p);
#endif
}

// Nearest half to f, ties to even, with integer operations only.
static inline uint16_t mt_f32_to_f16_portable(float f) {
    const uint32_t x = mt_f32_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x38800000u && ax < 0x477ff000u) {
        // Normal half (2^-14 <= |f| < 65520): rebias, then round away 13 bits; a carry
        // out of the mantissa correctly bumps the exponent (up to 0x7c00, infinity).
        uint32_t r = ax - ((127u - 15u) << 23);
        r += 0x0fffu + ((r >> 13) & 1u);
        return (uint16_t)(sign | (r >> 13));
    }
    if (ax >= 0x477ff000u) {
        if (ax > 0x7f800000u) {
            return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x1ffu));   // quiet NaN
        }
        return (uint16_t)(sign | 0x7c00u);
    }
    if (ax <= 0x33000000u) {
        return (uint16_t)sign;   // |f| <= 2^-25: half of the smallest subnormal ties to 0
    }
    // Subnormal half: the 24-bit significand shifted right by 14..24 bits, rounded.
    const uint32_t shift = 126u - (ax >> 23);
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
    return (uint16_t)(sign | (q + (rem > halfway || (rem == halfway && (q & 1u)))));
}

// Nearest half to f, ties to even.
static inline uint16_t mt_f32_to_f16(float f) {
#if MT_F16_HW
    uint32_t r;
    float t;
    // vcvtb writes the bottom 16 bits of t only; the cast drops the rest.
    __asm__ ("vcvtb.f16.f32 %1, %2\n\t" "vmov %0, %1" : "=r" (r), "=&t" (t) : "t" (f));
    return (uint16_t)r;
#elif MT_F16_ZFH
    if (f != f) {
        return mt_f32_to_f16_portable(f);   // NaN: keep its sign and payload
    }
    return mt_zfh_narrow_bits(f);
#else
    return mt_f32_to_f16_portable(f);
#endif
}

// mt_f32_to_f16 of an fp32 arithmetic result (see mt_f32_to_f16_results): on Zfh without
// the NaN test.
static inline uint16_t mt_f16_result(float f) {
#if MT_F16_ZFH
    return mt_zfh_narrow_bits(f);
#else
    return mt_f32_to_f16(f);
#endif
}

// State of the generator behind stochastic rounding: xorshift32 (Marsaglia 2003). Any
// seed works; 0, a fixed point of xorshift, is replaced by a constant. Kept by the caller
// (one per layer or per model), so runs are reproducible and there are no globals.
typedef struct {
    uint32_t state;
} mt_f16_rng_t;

static inline uint32_t mt_xorshift32(uint32_t x) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return x;
}

static inline uint32_t mt_f16_rng_seed(const mt_f16_rng_t *rng) {
    return rng->state ? rng->state : 0x9e3779b9u;
}

// f rounded to one of its two neighbouring halves at random, up with probability equal to
// the distance from the lower one in units of the half spacing (to 2^-13 of a spacing for
// normal halves), so the rounding is unbiased: E[result] = f. `random` supplies 32
// uniform bits (only the top ones are used). Infinity and NaN convert as with
// mt_f32_to_f16; finite values round to at most 65504 or up to infinity; values below
// 2^-32 in magnitude become zero (they would reach the smallest subnormal with
// probability < 2^-8).
static inline uint16_t mt_f32_to_f16_sr(float f, uint32_t random) {
    const uint32_t x = mt_f32_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x38800000u && ax < 0x47800000u) {
        const uint32_t r = ax - ((127u - 15u) << 23) + (random >> 19);
        return (uint16_t)(sign | (r >> 13));
    }
    if (ax >= 0x47800000u) {
        return mt_f32_to_f16(f);   // infinity, NaN, or |f| >= 65536
    }
    const uint32_t e = ax >> 23;
    if (e < 95u) {
        return (uint16_t)sign;
    }
    // Subnormal half: add random bits below the kept ones, then truncate.
    const uint32_t shift = 126u - e;   // 14..31
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    return (uint16_t)(sign | ((m + (random >> (32u - shift))) >> shift));
}

// Arrays: n halves widened to floats, n floats rounded (nearest even) to halves.
void mt_f16_to_f32_array(const uint16_t *src, float *dst, size_t n);
void mt_f32_to_f16_array(const float *src, uint16_t *dst, size_t n);
// mt_f16_to_f32_array for operands that only feed fp32 arithmetic (GEMM tiles, weights, bias): on Zfh a
// NaN comes out as the canonical NaN, which is what any RISC-V arithmetic on it returns
// anyway, so FLH + FCVT.S.H + FSW need no NaN test (3 instructions a value against 6).
// mt_f32_to_f16_array for fp32 results of arithmetic (GEMM and kernel outputs), whose NaNs on
// a RISC-V core are all the canonical one: on Zfh FLW + FCVT.H.S + FSH with no NaN test give
// the same bits. Elsewhere both are the array conversions.
#if MT_F16_ZFH
void mt_f16_to_f32_operands(const uint16_t *src, float *dst, size_t n);
void mt_f32_to_f16_results(const float *src, uint16_t *dst, size_t n);
#else
static inline void mt_f16_to_f32_operands(const uint16_t *src, float *dst, size_t n) {
    mt_f16_to_f32_array(src, dst, n);
}

static inline void mt_f32_to_f16_results(const float *src, uint16_t *dst, size_t n) {
    mt_f32_to_f16_array(src, dst, n);
}
#endif

// The fp16 weight update, w = round(w + alpha * g) element by element with the sum formed
// in fp32 and rounded once: to nearest even when rng is NULL, else stochastically (one
// xorshift32 draw per element, advancing *rng).
//
// Why stochastic rounding: an fp16 weight w has a spacing of 2^-10 |w|, so an update
// smaller than half of that (lr * g < 2^-11 |w|, common late in training) rounds back to w
// under round-to-nearest and is lost for good; with no fp32 master copy, such updates would
// never accumulate. Stochastic rounding applies them with the right probability, so the
// expected weight follows the fp32 trajectory (Gupta et al. 2015, "Deep Learning with
// Limited Numerical Precision"). The price is noise of at most one half-ulp per step.
// Updates below 2^-24 |w| are lost in the fp32 sum itself before any rounding to fp16.
void mt_f16_add_scaled(uint16_t *w, const float *g, float alpha, size_t n, mt_f16_rng_t *rng);

#endif
