// Partial updates of int8 layers (select_f32.h is the float32 twin): how much error each
// output structure carries, which k carry the most, and moving the selected channels in
// and out of compact buffers so the unchanged int8 kernels run on k channels instead of N.
#ifndef MCUTRAIN_KERNELS_SELECT_S8_H
#define MCUTRAIN_KERNELS_SELECT_S8_H

#include <stddef.h>
#include <stdint.h>

// magnitude[c] = sum over rows of |x[r][c] - zero_point| for x (rows, channels), exact
// while rows * 255 < 2^31.
void mt_channel_l1_s8(const int8_t *x, int rows, int channels, int32_t zero_point, int32_t *magnitude);

// The indices of the k largest magnitudes, in increasing index order; ties go to the
// lower index (numpy's stable argsort of -magnitude). Uses `taken` (n bytes) as a mask.
void mt_topk_indices_s32(const int32_t *magnitude, int n, int k, int32_t *indices, uint8_t *taken);

// out[r][j] = x[r][indices[j]] for x (rows, channels), out (rows, k).
void mt_gather_columns_s8(const int8_t *x, int rows, int channels, const int32_t *indices, int k, int8_t *out);

// x[r][indices[j]] = in[r][j], and every other column of x set to zero.
void mt_scatter_columns_s8(const int8_t *in, int rows, int channels, const int32_t *indices, int k, int8_t *x);

// Rows of row_bytes bytes: out[j] = x[indices[j]].
void mt_gather_rows(const void *x, size_t row_bytes, const int32_t *indices, int k, void *out);

// In place, with no buffer: brings rows indices[0..k) (increasing) to rows 0..k-1 in that
// order by k swaps, and mt_rows_back undoes exactly that, so kernels can run on the first k
// rows of a weight matrix and leave every other row as it was.
void mt_rows_to_front(void *x, size_t row_bytes, const int32_t *indices, int k);
void mt_rows_back(void *x, size_t row_bytes, const int32_t *indices, int k);

#endif
