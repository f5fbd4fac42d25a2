#include <string.h>

#include "select_f32.h"

void mt_channel_l1_f32(const float *x, int rows, int channels, float *magnitude) {
    for (int c = 0; c < channels; c++) {
        magnitude[c] = 0.0f;
    }
    for (int r = 0; r < rows; r++, x += channels) {
        for (int c = 0; c < channels; c++) {
            float v = x[c];
            magnitude[c] += v < 0.0f ? -v : v;
        }
    }
}

void mt_topk_indices(const float *magnitude, int n, int k, int32_t *indices, uint8_t *taken) {
    memset(taken, 0, (size_t)n);
    // k passes of a max search: n is a layer's channel count (tens to hundreds), and a
    // strict '>' keeps the lowest index on ties, matching a stable sort.
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int c = 0; c < n; c++) {
            if (!taken[c] && (best < 0 || magnitude[c] > magnitude[best])) {
                best = c;
            }
        }
        taken[best] = 1;
    }
    for (int c = 0, j = 0; c < n; c++) {
        if (taken[c]) {
            indices[j++] = c;
        }
    }
}

void mt_gather_columns_f32(const float *x, int rows, int channels, const int32_t *indices, int k, float *out) {
    for (int r = 0; r < rows; r++, x += channels, out += k) {
        for (int j = 0; j < k; j++) {
            out[j] = x[indices[j]];
        }
    }
}

void mt_gather_columns_padded_f32(const float *x, int rows, int channels, const int32_t *indices, int k,
    int width, float *out) {
    for (int r = 0; r < rows; r++, x += channels, out += width) {
        int j = 0;
        for (; j < k; j++) {
            out[j] = x[indices[j]];
        }
        for (; j < width; j++) {
            out[j] = 0.0f;
        }
    }
}

void mt_gather_rows_f32(const float *x, int row_len, const int32_t *indices, int k, float *out) {
    for (int j = 0; j < k; j++) {
        memcpy(out + (size_t)j * row_len, x + (size_t)indices[j] * row_len, (size_t)row_len * sizeof(float));
    }
}

void mt_scatter_columns_f32(const float *in, int rows, int channels, const int32_t *indices, int k, float *x) {
    for (int r = 0; r < rows; r++, x += channels, in += k) {
        memset(x, 0, (size_t)channels * sizeof(float));
        for (int j = 0; j < k; j++) {
            x[indices[j]] = in[j];
        }
    }
}

void mt_channel_sum_f32(const float *x, int rows, int channels, float alpha, float *out) {
    for (int c = 0; c < channels; c++) {
        float sum = 0.0f;
        for (int r = 0; r < rows; r++) {
            sum += x[(size_t)r * channels + c];
        }
        out[c] += alpha * sum;
    }
}

void mt_rows_grad_input_f32(const float *dy, int batch, int n, const float *w, int in, const int32_t *indices,
    int k, float *dx) {
    for (int b = 0; b < batch; b++, dy += n, dx += in) {
        for (int i = 0; i < in; i++) {
            dx[i] = 0.0f;
        }
        for (int j = 0; j < k; j++) {
            const float e = dy[indices[j]], *row = w + (size_t)indices[j] * in;
            for (int i = 0; i < in; i++) {
                dx[i] += e * row[i];
            }
        }
    }
}

void mt_row_grad_weight_f32(const float *x, int batch, int in, const float *dy, int n, int o, float *row) {
    float bias = 0.0f;
    for (int i = 0; i < in; i++) {
        row[i] = 0.0f;
    }
    for (int b = 0; b < batch; b++, x += in) {
        const float e = dy[(size_t)b * n + o];
        for (int i = 0; i < in; i++) {
            row[i] += e * x[i];
        }
        bias += e;
    }
    row[in] = bias;
}
