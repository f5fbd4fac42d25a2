#include <math.h>

#include "softmax_s8.h"

void mt_softmax_s8_forward(const int8_t *x, float x_scale, int8_t *y, int rows, int cols, float *scratch) {
    for (int r = 0; r < rows; r++, x += cols, y += cols) {
        int32_t max = x[0];
        for (int j = 1; j < cols; j++) {
            max = x[j] > max ? x[j] : max;
        }
        float sum = 0.0f;
        for (int j = 0; j < cols; j++) {
            scratch[j] = expf(x_scale * (float)(x[j] - max));
            sum += scratch[j];
        }
        // sum >= 1: the maximum contributes exp(0).
        const float k = 256.0f / sum;
        for (int j = 0; j < cols; j++) {
            int32_t v = mt_round_half_even(scratch[j] * k) + MT_SOFTMAX_S8_ZERO_POINT;
            y[j] = (int8_t)(v > MT_S8_ACT_MAX ? MT_S8_ACT_MAX : v);
        }
    }
}

static int32_t row_sum(const int8_t *y, const int8_t *dy, int cols) {
    int32_t s = 0;
    for (int j = 0; j < cols; j++) {
        s += (y[j] - MT_SOFTMAX_S8_ZERO_POINT) * dy[j];
    }
    return s;
}

int32_t mt_softmax_s8_grad_absmax(const int8_t *y, const int8_t *dy, int rows, int cols) {
    int32_t m = 0;
    for (int r = 0; r < rows; r++, y += cols, dy += cols) {
        const int32_t s = row_sum(y, dy, cols);
        for (int j = 0; j < cols; j++) {
            int32_t acc = (y[j] - MT_SOFTMAX_S8_ZERO_POINT) * (256 * dy[j] - s);
            acc = acc < 0 ? -acc : acc;
            m = acc > m ? acc : m;
        }
    }
    return m;
}

void mt_softmax_s8_grad_input(const int8_t *y, const int8_t *dy, int8_t *dx, int rows, int cols, mt_requant_t m) {
    for (int r = 0; r < rows; r++, y += cols, dy += cols, dx += cols) {
        const int32_t s = row_sum(y, dy, cols);
        for (int j = 0; j < cols; j++) {
            int32_t v = mt_requantize((y[j] - MT_SOFTMAX_S8_ZERO_POINT) * (256 * dy[j] - s), m);
            dx[j] = (int8_t)(v < -MT_S8_SYM_MAX ? -MT_S8_SYM_MAX : v > MT_S8_SYM_MAX ? MT_S8_SYM_MAX : v);
        }
    }
}
