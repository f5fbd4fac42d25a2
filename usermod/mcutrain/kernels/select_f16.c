#include <string.h>

#include "select_f16.h"
#include "half.h"

void mt_channel_l1_f16(const uint16_t *x, int rows, int channels, float *magnitude) {
    for (int c = 0; c < channels; c++) {
        magnitude[c] = 0.0f;
    }
    for (int r = 0; r < rows; r++, x += channels) {
        for (int c = 0; c < channels; c++) {
            // |h| is h without its sign bit.
            magnitude[c] += mt_f16_to_f32((uint16_t)(x[c] & 0x7fffu));
        }
    }
}

void mt_gather_columns_u16(const uint16_t *x, int rows, int channels, const int32_t *indices, int k, uint16_t *out) {
    for (int r = 0; r < rows; r++, x += channels, out += k) {
        for (int j = 0; j < k; j++) {
            out[j] = x[indices[j]];
        }
    }
}

void mt_scatter_columns_u16(const uint16_t *in, int rows, int channels, const int32_t *indices, int k, uint16_t *x) {
    for (int r = 0; r < rows; r++, x += channels, in += k) {
        memset(x, 0, (size_t)channels * sizeof(uint16_t));
        for (int j = 0; j < k; j++) {
            x[indices[j]] = in[j];
        }
    }
}
