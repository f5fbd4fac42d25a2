// Checked size arithmetic: every element, byte and index count derived from user sizes
// goes through these, on 32- and 64-bit targets alike.
//
// A count is valid up to MT_SIZE_LIMIT (2^31 - 1): then it also fits the kernels' int
// indexes, and a byte count cannot wrap a 32-bit size_t. On overflow the helpers set
// *overflow and return MT_SIZE_OVERFLOW, which every later helper propagates, so a chain
// of products and sums is checked once at its end.
#ifndef MCUTRAIN_KERNELS_CHECKED_SIZE_H
#define MCUTRAIN_KERNELS_CHECKED_SIZE_H

#include <stdbool.h>
#include <stddef.h>

#define MT_SIZE_LIMIT ((size_t)0x7fffffff)
#define MT_SIZE_OVERFLOW (MT_SIZE_LIMIT + 1)

// a * b, or MT_SIZE_OVERFLOW with *overflow set if it exceeds MT_SIZE_LIMIT.
static inline size_t mt_mul_size(size_t a, size_t b, bool *overflow) {
    if (a > MT_SIZE_LIMIT || b > MT_SIZE_LIMIT || (a != 0 && b > MT_SIZE_LIMIT / a)) {
        *overflow = true;
        return MT_SIZE_OVERFLOW;
    }
    return a * b;
}

// a + b, or MT_SIZE_OVERFLOW with *overflow set if it exceeds MT_SIZE_LIMIT.
static inline size_t mt_add_size(size_t a, size_t b, bool *overflow) {
    if (a > MT_SIZE_LIMIT || b > MT_SIZE_LIMIT || b > MT_SIZE_LIMIT - a) {
        *overflow = true;
        return MT_SIZE_OVERFLOW;
    }
    return a + b;
}

// The larger of two counts (an overflowed one stays overflowed).
static inline size_t mt_max_size(size_t a, size_t b) {
    return a > b ? a : b;
}

// Bytes to floats, rounded up (an overflowed count stays overflowed).
static inline size_t mt_size_bytes_to_floats(size_t bytes) {
    return bytes > MT_SIZE_LIMIT ? MT_SIZE_OVERFLOW : (bytes + sizeof(float) - 1) / sizeof(float);
}

#endif
