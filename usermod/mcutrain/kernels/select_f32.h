// Helpers for partial updates: how much error each output structure (a conv filter, a
// dense row) carries, which k carry the most, and moving the selected channels in and
// out of compact buffers so the unchanged fp32 kernels run on k channels instead of N.
#ifndef MCUTRAIN_KERNELS_SELECT_F32_H
#define MCUTRAIN_KERNELS_SELECT_F32_H

#include <stdint.h>

// magnitude[c] = sum over rows of |x[r][c]| for x (rows, channels).
void mt_channel_l1_f32(const float *x, int rows, int channels, float *magnitude);

// The indices of the k largest magnitudes, in increasing index order; ties go to the
// lower index. Uses `taken` (n bytes) as a work mask.
void mt_topk_indices(const float *magnitude, int n, int k, int32_t *indices, uint8_t *taken);

// out[r][j] = x[r][indices[j]] for x (rows, channels), out (rows, k).
void mt_gather_columns_f32(const float *x, int rows, int channels, const int32_t *indices, int k, float *out);

// The same into rows of `width` >= k floats whose last width - k are zero: padding k up to
// the GEMM's block size keeps a few selected channels on its fast path.
void mt_gather_columns_padded_f32(const float *x, int rows, int channels, const int32_t *indices, int k,
    int width, float *out);

// out[j][:] = x[indices[j]][:] for rows of row_len floats.
void mt_gather_rows_f32(const float *x, int row_len, const int32_t *indices, int k, float *out);

// x[r][indices[j]] = in[r][j], and every other column of x set to zero.
void mt_scatter_columns_f32(const float *in, int rows, int channels, const int32_t *indices, int k, float *x);

// A dense layer's partial backward with no copies, for y = x W^T (x: batch x in, W: n x in,
// dy: batch x n): dx = dy[:, indices] W[indices, :] (overwritten), and one selected row's
// weight gradient row[i] = sum_b dy[b][o] x[b][i] with its bias gradient row[in] = sum_b
// dy[b][o].
void mt_rows_grad_input_f32(const float *dy, int batch, int n, const float *w, int in, const int32_t *indices,
    int k, float *dx);
void mt_row_grad_weight_f32(const float *x, int batch, int in, const float *dy, int n, int o, float *row);

// out[c] += alpha * sum over rows of x[r][c] (a bias gradient without the weight's).
void mt_channel_sum_f32(const float *x, int rows, int channels, float alpha, float *out);

#endif
