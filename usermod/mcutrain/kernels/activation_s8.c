#include "activation_s8.h"

void mt_clamp_s8_forward(const int8_t *x, int8_t *y, size_t n, int32_t lo, int32_t hi) {
    for (size_t i = 0; i < n; i++) {
        int32_t v = x[i];
        y[i] = (int8_t)(v < lo ? lo : v > hi ? hi : v);
    }
}

void mt_clamp_s8_grad_input(const int8_t *y, const int8_t *dy, int8_t *dx, size_t n, int32_t lo,
    int32_t hi) {
    for (size_t i = 0; i < n; i++) {
        int32_t v = y[i];
        dx[i] = v > lo && v < hi ? dy[i] : 0;
    }
}
