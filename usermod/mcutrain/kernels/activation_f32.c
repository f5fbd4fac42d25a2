#include <math.h>

#include "activation_f32.h"

// The comparisons are written so that NaN falls through to the input, as in PyTorch:
// a diverging run then shows NaN instead of silently clamping it to 0.

void mt_relu_f32_forward(const float *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = v < 0.0f ? 0.0f : v;
    }
}

void mt_relu_f32_grad_input(const float *y, const float *dy, float *dx, size_t n) {
    for (size_t i = 0; i < n; i++) {
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    }
}

void mt_relu6_f32_forward(const float *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);
    }
}

void mt_relu6_f32_grad_input(const float *y, const float *dy, float *dx, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = y[i];
        dx[i] = (v > 0.0f && v < 6.0f) ? dy[i] : 0.0f;
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
