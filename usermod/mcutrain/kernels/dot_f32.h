// fp32 vector kernels. Plain C: no MicroPython headers, so they build and are
// tested as a host library too.
#ifndef MCUTRAIN_KERNELS_DOT_F32_H
#define MCUTRAIN_KERNELS_DOT_F32_H

#include <stddef.h>

// Sum of a[i] * b[i] for i < n, accumulated in fp32.
float mt_dot_f32(const float *a, const float *b, size_t n);

#endif
