#include "vector_f32.h"

void mt_minmax_f32(const float *x, size_t n, float *lo, float *hi) {
    float a = 0.0f, b = 0.0f;
    int seen = 0;
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        if (v != v) {
            continue;   // NaN
        }
        if (!seen) {
            a = b = v;
            seen = 1;
        } else if (v < a) {
            a = v;
        } else if (v > b) {
            b = v;
        }
    }
    *lo = a;
    *hi = b;
}

float mt_absmax_f32(const float *x, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float v = x[i] < 0.0f ? -x[i] : x[i];
        if (v > m) {   // false for NaN
            m = v;
        }
    }
    return m;
}

void mt_scale_f32(float *x, size_t n, float a) {
    for (size_t i = 0; i < n; i++) {
        x[i] *= a;
    }
}

void mt_bias_s32_to_f32(const int32_t *q, float *b, int channels, float x_scale, const float *w_scale) {
    for (int o = 0; o < channels; o++) {
        b[o] = (float)q[o] * (x_scale * w_scale[o]);
    }
}
