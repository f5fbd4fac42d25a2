#include <math.h>

#include "activation_f16.h"
#include "half.h"

// On the bits: negative numbers are 0x8001..0xfc00 (-0 is 0x8000, negative NaNs lie
// above 0xfc00), positive ones 0x0001..0x7c00, and positive halves order like their bits.
#define F16_NEG_MIN 0x8001u
#define F16_NEG_MAX 0xfc00u
#define F16_POS_MAX 0x7c00u
#define F16_SIX 0x4600u

void mt_relu_f16_forward(const uint16_t *x, uint16_t *y, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const uint16_t h = x[i];
        y[i] = (h >= F16_NEG_MIN && h <= F16_NEG_MAX) ? MT_F16_ZERO : h;
    }
}

void mt_relu_f16_grad_input(const uint16_t *y, const uint16_t *dy, uint16_t *dx, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const uint16_t h = y[i];
        dx[i] = (h >= 1u && h <= F16_POS_MAX) ? dy[i] : MT_F16_ZERO;
    }
}

void mt_relu6_f16_forward(const uint16_t *x, uint16_t *y, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const uint16_t h = x[i];
        if (h >= F16_NEG_MIN && h <= F16_NEG_MAX) {
            y[i] = MT_F16_ZERO;
        } else if (h > F16_SIX && h <= F16_POS_MAX) {
            y[i] = F16_SIX;
        } else {
            y[i] = h;
        }
    }
}

void mt_relu6_f16_grad_input(const uint16_t *y, const uint16_t *dy, uint16_t *dx, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const uint16_t h = y[i];
        dx[i] = (h >= 1u && h < F16_SIX) ? dy[i] : MT_F16_ZERO;
    }
}

void mt_softmax_f16_forward(const uint16_t *x, uint16_t *y, int rows, int cols) {
    if (cols <= 0) {
        return;
    }
    for (int r = 0; r < rows; r++) {
        const uint16_t *xr = x + (size_t)r * (size_t)cols;
        uint16_t *yr = y + (size_t)r * (size_t)cols;
        float max = mt_f16_to_f32(xr[0]);
        for (int j = 1; j < cols; j++) {
            const float v = mt_f16_to_f32(xr[j]);
            if (v > max) {
                max = v;
            }
        }
        float sum = 0.0f;
        for (int j = 0; j < cols; j++) {
            sum += expf(mt_f16_to_f32(xr[j]) - max);
        }
        // sum >= 1 (the maximum contributes exp(0)). x[j] is read before y[j] is written.
        const float inv_sum = 1.0f / sum;
        for (int j = 0; j < cols; j++) {
            yr[j] = mt_f32_to_f16(expf(mt_f16_to_f32(xr[j]) - max) * inv_sum);
        }
    }
}

void mt_softmax_f16_grad_input(const uint16_t *y, const uint16_t *dy, uint16_t *dx, int rows,
    int cols) {
    for (int r = 0; r < rows; r++) {
        const uint16_t *yr = y + (size_t)r * (size_t)cols;
        const uint16_t *dyr = dy + (size_t)r * (size_t)cols;
        uint16_t *dxr = dx + (size_t)r * (size_t)cols;
        float dot = 0.0f;
        for (int j = 0; j < cols; j++) {
            dot += mt_f16_to_f32(dyr[j]) * mt_f16_to_f32(yr[j]);
        }
        for (int j = 0; j < cols; j++) {
            dxr[j] = mt_f32_to_f16(mt_f16_to_f32(yr[j]) * (mt_f16_to_f32(dyr[j]) - dot));
        }
    }
}

void mt_add_f16(const uint16_t *a, const uint16_t *b, uint16_t *y, size_t n) {
    for (size_t i = 0; i < n; i++) {
        y[i] = mt_f32_to_f16(mt_f16_to_f32(a[i]) + mt_f16_to_f32(b[i]));
    }
}
