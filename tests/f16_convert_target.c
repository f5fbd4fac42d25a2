// Bare-metal check of the binary16 conversions (kernels/half.c) on the emulated boards,
// run by tests/test_kernels_f16.py: on the Cortex-M4F the VCVTB/VCVTT path and on rv32 with
// Zfh the FCVT path are compared bit for bit with the portable one (built from the same
// half.c as portable_*), and on every board hashes of the results go back to the host,
// which recomputes them with numpy. The operand and result conversions (no NaN tests on
// Zfh) must give the portable bits for every value but NaN, and a NaN for a NaN.
// No C library: a vector table or _start, semihosting for output and exit.
#include <stddef.h>
#include <stdint.h>

#include "half.h"

void portable_f16_to_f32_array(const uint16_t *src, float *dst, size_t n);
void portable_f32_to_f16_array(const float *src, uint16_t *dst, size_t n);
void portable_f16_add_scaled(uint16_t *w, const float *g, float alpha, size_t n, mt_f16_rng_t *rng);

#define N_RANDOM 100000
#define N_MAX 100000   // >= 65536 halves, N_RANDOM, and 3 * 0x7c00 ties

static uint16_t halves[N_MAX];
static float floats[N_MAX];
static float floats_ref[N_MAX];
static uint16_t halves_out[N_MAX];
static uint16_t halves_ref[N_MAX];

static uintptr_t semihost(uint32_t op, uintptr_t arg) {
#if defined(__arm__)
    register uintptr_t r0 __asm__ ("r0") = op;
    register uintptr_t r1 __asm__ ("r1") = arg;
    __asm volatile ("bkpt 0xab" : "+r" (r0) : "r" (r1) : "memory");
    return r0;
#else
    register uintptr_t a0 __asm__ ("a0") = op;
    register uintptr_t a1 __asm__ ("a1") = arg;
    __asm volatile (
        ".option push\n" ".option norvc\n" ".balign 16\n"
        "slli x0, x0, 0x1f\n" "ebreak\n" "srai x0, x0, 7\n"
        ".option pop\n"
        : "+r" (a0) : "r" (a1) : "memory");
    return a0;
#endif
}

static void put(const char *s) {
    semihost(0x04, (uintptr_t)s);   // SYS_WRITE0
}

static void put_hex(const char *label, uint32_t v) {
    char buf[32];
    int i = 0;
    while (label[i] && i < 16) {
        buf[i] = label[i];
        i++;
    }
    buf[i++] = ' ';
    for (int k = 7; k >= 0; k--) {
        buf[i++] = "0123456789abcdef"[(v >> (4 * k)) & 15u];
    }
    buf[i++] = '\n';
    buf[i] = 0;
    put(buf);
}

// Order-dependent hash the host recomputes with numpy: sum of (v_i ^ (i * 0x9e3779b1)) * (2i + 1).
static uint32_t hash(const uint32_t *v, size_t n) {
    uint32_t h = 0;
    for (size_t i = 0; i < n; i++) {
        h += (v[i] ^ ((uint32_t)i * 0x9e3779b1u)) * (2u * (uint32_t)i + 1u);
    }
    return h;
}

static uint32_t count_diff_u32(const float *a, const float *b, size_t n) {
    uint32_t d = 0;
    for (size_t i = 0; i < n; i++) {
        d += mt_f32_bits(a[i]) != mt_f32_bits(b[i]);
    }
    return d;
}

static uint32_t count_diff_u16(const uint16_t *a, const uint16_t *b, size_t n) {
    uint32_t d = 0;
    for (size_t i = 0; i < n; i++) {
        d += a[i] != b[i];
    }
    return d;
}

typedef void (*widen_fn)(const uint16_t *src, float *dst, size_t n);
typedef void (*narrow_fn)(const float *src, uint16_t *dst, size_t n);

// The build's path runs in pieces of every length 0..19 at both alignments (the asm's leading
// single, octets and scalar tail), the portable one in one go.
static size_t piece(size_t len, size_t left) {
    return len % 20 < left ? len % 20 : left;
}

// halves -> floats in pieces.
static void widen_in_pieces(widen_fn widen, size_t n) {
    for (size_t at = 0, len = 0, k; at < n; at += k, len++) {
        k = piece(len, n - at);
        widen(halves + at, floats + at, k);
    }
}

// floats -> halves_out in pieces.
static void narrow_in_pieces(narrow_fn narrow, size_t n) {
    for (size_t at = 0, len = 0, k; at < n; at += k, len++) {
        k = piece(len, n - at);
        narrow(floats + at, halves_out + at, k);
    }
}

// w += alpha * floats in pieces (rng carried from piece to piece).
static void update_in_pieces(uint16_t *w, float alpha, size_t n, mt_f16_rng_t *rng) {
    for (size_t at = 0, len = 0, k; at < n; at += k, len++) {
        k = piece(len, n - at);
        mt_f16_add_scaled(w + at, floats + at, alpha, k, rng);
    }
}

static uint32_t check_widen(size_t n) {
    widen_in_pieces(mt_f16_to_f32_array, n);
    portable_f16_to_f32_array(halves, floats_ref, n);
    return count_diff_u32(floats, floats_ref, n);
}

// The operand widening against the portable one: the same bits, or NaN for NaN.
static uint32_t check_operands(size_t n) {
    widen_in_pieces(mt_f16_to_f32_operands, n);
    portable_f16_to_f32_array(halves, floats_ref, n);
    uint32_t d = 0;
    for (size_t i = 0; i < n; i++) {
        const float a = floats[i], b = floats_ref[i];
        d += (b != b) ? (a == a) : (mt_f32_bits(a) != mt_f32_bits(b));
    }
    return d;
}

static int half_is_nan(uint16_t h) {
    return (h & 0x7fffu) > 0x7c00u;
}

// The result narrowing against the portable one: the same bits, or a NaN half for NaN.
static uint32_t check_results(size_t n) {
    narrow_in_pieces(mt_f32_to_f16_results, n);
    portable_f32_to_f16_array(floats, halves_ref, n);
    uint32_t d = 0;
    for (size_t i = 0; i < n; i++) {
        d += half_is_nan(halves_ref[i]) ? !half_is_nan(halves_out[i]) : halves_out[i] != halves_ref[i];
    }
    return d;
}

static uint32_t check_narrow(size_t n) {
    narrow_in_pieces(mt_f32_to_f16_array, n);
    portable_f32_to_f16_array(floats, halves_ref, n);
    return count_diff_u16(halves_out, halves_ref, n);
}

int main(void) {
    uint32_t diff = 0;
    // Every half, widened; then those floats narrowed back.
    for (uint32_t i = 0; i < 65536; i++) {
        halves[i] = (uint16_t)i;
    }
    diff += check_operands(65536);
    diff += check_widen(65536);
    put_hex("widen", hash((const uint32_t *)(const void *)floats, 65536));
    diff += check_results(65536);
    diff += check_narrow(65536);
    // Random fp32 bit patterns (xorshift32 from 1), narrowed.
    uint32_t s = 1;
    for (size_t i = 0; i < N_RANDOM; i++) {
        s = mt_xorshift32(s);
        floats[i] = mt_f32_from_bits(s);
    }
    diff += check_results(N_RANDOM);
    diff += check_narrow(N_RANDOM);
    uint32_t h = 0;
    for (size_t i = 0; i < N_RANDOM; i++) {
        uint32_t v = halves_out[i];
        h += (v ^ ((uint32_t)i * 0x9e3779b1u)) * (2u * (uint32_t)i + 1u);
    }
    put_hex("narrow", h);
    // Midpoints between neighbouring positive halves (ties) and one fp32 ulp either side.
    size_t n = 0;
    for (uint32_t i = 0; i < 0x7c00u; i++) {
        const uint32_t lo = mt_f32_bits(mt_f16_to_f32((uint16_t)i));
        const uint32_t hi = mt_f32_bits(mt_f16_to_f32((uint16_t)(i + 1)));
        if (i == 0) {
            floats[n++] = mt_f32_from_bits(0x33000000u);   // 2^-25, half the first subnormal
            continue;
        }
        // The midpoint, also across a power of two (fp32 has 13 more bits than fp16).
        const uint32_t mid = lo + (hi - lo) / 2;
        floats[n++] = mt_f32_from_bits(mid - 1);
        floats[n++] = mt_f32_from_bits(mid);
        floats[n++] = mt_f32_from_bits(mid + 1);
    }
    diff += check_results(n);
    diff += check_narrow(n);
    h = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = halves_out[i];
        h += (v ^ ((uint32_t)i * 0x9e3779b1u)) * (2u * (uint32_t)i + 1u);
    }
    put_hex("ties", h);
    // The weight update (nearest even) in pieces of every length at both alignments, on
    // random finite weights and gradients, against the portable loop in one go.
    for (size_t i = 0; i < 65536; i++) {
        s = mt_xorshift32(s);
        halves[i] = (uint16_t)(s & 0xffffu) & 0xbfffu;   // exponent <= 15: finite, |w| < 2
        halves_ref[i] = halves[i];
        floats[i] = mt_f16_to_f32((uint16_t)((s >> 16) & 0xbfffu));
    }
    update_in_pieces(halves, -0.375f, 65536, NULL);
    portable_f16_add_scaled(halves_ref, floats, -0.375f, 65536, NULL);
    diff += count_diff_u16(halves, halves_ref, 65536);
    // Both updates on every half (infinities, NaNs, subnormals, the largest finite ones),
    // with gradients of every magnitude: the nearest one in pieces, the stochastic one
    // (with its own fast path on Zfh) from the same seed, bit for bit.
    for (size_t i = 0; i < 65536; i++) {
        s = mt_xorshift32(s);
        halves[i] = (uint16_t)i;
        floats[i] = mt_f32_from_bits((s & 0x807fffffu) | ((96u + (s >> 8) % 64u) << 23));
    }
    for (int stochastic = 0; stochastic < 2; stochastic++) {
        for (size_t i = 0; i < 65536; i++) {
            halves_out[i] = halves[i];
            halves_ref[i] = halves[i];
        }
        mt_f16_rng_t rng = { 12345u }, rng_ref = { 12345u };
        update_in_pieces(halves_out, 0.75f, 65536, stochastic ? &rng : NULL);
        portable_f16_add_scaled(halves_ref, floats, 0.75f, 65536, stochastic ? &rng_ref : NULL);
        diff += count_diff_u16(halves_out, halves_ref, 65536) + (rng.state != rng_ref.state);
    }
    put_hex("hw", MT_F16_HW || MT_F16_ZFH);
    put_hex("mismatches", diff);
    put("done\n");
    semihost(0x18, 0x20026);   // SYS_EXIT, ADP_Stopped_ApplicationExit
    for (;;) {
    }
}

#if defined(__arm__)
extern uint32_t stack_top[];

__attribute__((naked, noreturn)) void reset(void) {
    __asm volatile (
        "ldr r0, =0xE000ED88\n"   // CPACR: CP10, CP11 full access (FPU on)
        "ldr r1, [r0]\n"
        "orr r1, r1, #(0xf << 20)\n"
        "str r1, [r0]\n"
        "dsb\n" "isb\n"
        "bl main\n");
}

static void fault(void) {
    put("FATAL: fault\n");
    semihost(0x18, 0x20023);   // ADP_Stopped_RunTimeErrorUnknown
}

typedef void (*vector_t)(void);
__attribute__((section(".isr_vector"), used)) const vector_t vectors[16] = {
    (vector_t)stack_top, reset, fault, fault, fault, fault, fault,
};
#else
__attribute__((naked, noreturn, section(".text.start"))) void _start(void) {
    __asm volatile (
        "la sp, stack_top\n"
#ifdef __riscv_flen
        "li t0, 0x2000\n" "csrs mstatus, t0\n"   // mstatus.FS = Initial: the FPU on
#endif
        "call main\n");
}
#endif
