#include <string.h>

#include "select_s8.h"

// |x| of four int8 lanes of a word at once, each an unsigned byte (128 for -128): the
// negative lanes are complemented and incremented, which never carries into the next lane.
static inline uint32_t abs_lanes_s8(uint32_t w) {
    uint32_t sign = (w >> 7) & 0x01010101u;
    return (w ^ (sign * 0xffu)) + sign;
}

// Four columns (a word of each row) summed down up to 256 rows in 16-bit lanes (256 * 128
// fits), then added to magnitude[0..3].
static void l1_four_columns(const int8_t *x, int rows, int channels, int32_t *magnitude) {
    while (rows > 0) {
        int n = rows < 256 ? rows : 256;
        uint32_t even = 0, odd = 0;
        for (int r = 0; r < n; r++, x += channels) {
            uint32_t w;
            memcpy(&w, __builtin_assume_aligned(x, 4), sizeof w);
            uint32_t a = abs_lanes_s8(w);
            even += a & 0x00ff00ffu;
            odd += (a >> 8) & 0x00ff00ffu;
        }
        magnitude[0] += (int32_t)(even & 0xffffu);
        magnitude[1] += (int32_t)(odd & 0xffffu);
        magnitude[2] += (int32_t)(even >> 16);
        magnitude[3] += (int32_t)(odd >> 16);
        rows -= n;
    }
}

void mt_channel_l1_s8(const int8_t *x, int rows, int channels, int32_t zero_point, int32_t *magnitude) {
    for (int c = 0; c < channels; c++) {
        magnitude[c] = 0;
    }
    int c = 0;
    if (zero_point == 0 && channels % 4 == 0 && ((uintptr_t)x & 3u) == 0) {
        // Errors are symmetric (zero point 0): whole words of four channels, down the rows.
        for (; c < channels; c += 4) {
            l1_four_columns(x + c, rows, channels, magnitude + c);
        }
        return;
    }
    for (int r = 0; r < rows; r++, x += channels) {
        for (c = 0; c < channels; c++) {
            int32_t v = x[c] - zero_point;
            magnitude[c] += v < 0 ? -v : v;
        }
    }
}

void mt_topk_indices_s32(const int32_t *magnitude, int n, int k, int32_t *indices, uint8_t *taken) {
    memset(taken, 0, (size_t)n);
    // k passes of a max search (n is a layer's channel count); the strict '>' keeps the
    // lowest index on ties.
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

void mt_gather_columns_s8(const int8_t *x, int rows, int channels, const int32_t *indices, int k, int8_t *out) {
    for (int r = 0; r < rows; r++, x += channels, out += k) {
        for (int j = 0; j < k; j++) {
            out[j] = x[indices[j]];
        }
    }
}

void mt_scatter_columns_s8(const int8_t *in, int rows, int channels, const int32_t *indices, int k, int8_t *x) {
    for (int r = 0; r < rows; r++, x += channels, in += k) {
        memset(x, 0, (size_t)channels);
        for (int j = 0; j < k; j++) {
            x[indices[j]] = in[j];
        }
    }
}

void mt_gather_rows(const void *x, size_t row_bytes, const int32_t *indices, int k, void *out) {
    for (int j = 0; j < k; j++) {
        memcpy((uint8_t *)out + (size_t)j * row_bytes, (const uint8_t *)x + (size_t)indices[j] * row_bytes, row_bytes);
    }
}

static void swap_rows(uint8_t *x, size_t row_bytes, size_t a, size_t b) {
    if (a == b) {
        return;
    }
    uint8_t *p = x + a * row_bytes, *q = x + b * row_bytes;
    for (size_t i = 0; i < row_bytes; i++) {
        uint8_t t = p[i];
        p[i] = q[i];
        q[i] = t;
    }
}

// Row indices[j] >= j still holds its own content at step j (earlier swaps touched rows
// below j and other selected rows only).
void mt_rows_to_front(void *x, size_t row_bytes, const int32_t *indices, int k) {
    for (int j = 0; j < k; j++) {
        swap_rows(x, row_bytes, (size_t)j, (size_t)indices[j]);
    }
}

void mt_rows_back(void *x, size_t row_bytes, const int32_t *indices, int k) {
    for (int j = k - 1; j >= 0; j--) {
        swap_rows(x, row_bytes, (size_t)j, (size_t)indices[j]);
    }
}
