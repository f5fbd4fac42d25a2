// int8 matrix products for the int8 layers, on packed int16 panels.
//
// Cortex-M4's SMLAD does two 16-bit multiply-adds in one instruction, and LDM loads several
// words in one, so the kernels work on int16 "panels" that hold each operand in exactly the
// order the inner loop consumes it: a block of R rows, its k values interleaved by pairs.
// The core kernel computes a 3x2 block of int32 sums (6 accumulators, 3 + 2 operand
// registers: all 14 usable registers) at 8 instructions per 12 multiply-adds.
//
// Panel layout. Rows of length k are zero-padded to kp = mt_gemm_s8_kpad(k), a multiple of
// MT_GEMM_S8_KSTEP. Word j (int16 positions 2j, 2j+1) of a row holds two of its values;
// within each group of four positions the k order is {0, 2, 1, 3} (it is what SXTB16 and
// SXTB16 ROR #8 give from four bytes, and any permutation is fine as long as both operands
// share it). A panel of R rows stores word j of row r at index j * R + r (int32 words).
// Rows beyond the matrix are zeros, so blocks never need edge code.
//
// All sums wrap modulo 2^32 (SMLAD's behaviour); with int8 operands and |offset| <= 255 a
// sum of up to 2^15 products cannot wrap, and callers stay far below that.
#ifndef MCUTRAIN_KERNELS_GEMM_S8_H
#define MCUTRAIN_KERNELS_GEMM_S8_H

#include <stddef.h>
#include <stdint.h>

#define MT_GEMM_S8_ROWS 3     // rows of A in a block
#define MT_GEMM_S8_COLS 2     // rows of B (columns of C) in a block
#define MT_GEMM_S8_KSTEP 8    // kp is a multiple of this

static inline int mt_gemm_s8_kpad(int k) {
    return (k + MT_GEMM_S8_KSTEP - 1) & ~(MT_GEMM_S8_KSTEP - 1);
}

// Position of value k within its padded row (the {0, 2, 1, 3} permutation; self-inverse).
static inline int mt_gemm_s8_pos(int k) {
    return (k & ~3) | ((k & 1) << 1) | ((k >> 1) & 1);
}

// acc[r * 2 + c] += sum over k < kp of A_r[k] * B_c[k]: a (3 rows) and b (2 rows) are panel
// blocks of kp values per row, kp > 0 a multiple of MT_GEMM_S8_KSTEP.
void mt_gemm_s16_3x2(int kp, const int32_t *a, const int32_t *b, int32_t acc[6]);

// mt_gemm_s16_3x2 against nb consecutive 2-row blocks of b (block j at b + j * kp words):
// out[6j + 2r + c] = init[2j + c] + sum over k of A_r[k] * B_jc[k] (nb >= 1). One call for
// a whole row of blocks: the per-block call and setup cost about as much as a short k loop.
void mt_gemm_s16_3x2_multi(int kp, const int32_t *a, const int32_t *b, int nb,
    const int32_t *init, int32_t *out);

// The same with the six sums in three rows of acc, ld int32 apart: acc[0..1], acc[ld..ld+1],
// acc[2ld..2ld+1] (the update's per-channel gradient rows).
void mt_gemm_s16_3x2_rows(int kp, const int32_t *a, const int32_t *b, int32_t *acc, int ld);

// mt_gemm_s16_3x2_rows for np consecutive 3-row panels of a (panel j at a + j * 3 * kp / 2
// words) against the same b, panel j's sums in acc + j * 3 * ld (np >= 1): one call for a
// block of channels (the update's), not one per panel.
void mt_gemm_s16_3x2_rows_multi(int kp, const int32_t *a, const int32_t *b, int32_t *acc,
    int ld, int np);

// Packs `rows` rows of k int8 values (row r at src + r * ld) minus `offset` into panel blocks
// of R rows each (ceil(rows / R) blocks of R * kp int16), padding rows and k with zeros.
void mt_pack_s8_rows(const int8_t *src, int ld, int rows, int k, int32_t offset, int R, int kp,
    int16_t *panel);

// One run of n values (n a multiple of 4, starting at a multiple of 4 in its row) of a row:
// src minus offset into the row's words dst[0], dst[stride], ... (n / 2 words).
void mt_pack_s8_run(const int8_t *src, int n, int32_t offset, int32_t *dst, int stride);

// n zeros (n even) into the words dst[0], dst[stride], ... of a row.
void mt_pack_zero_run(int n, int32_t *dst, int stride);

// Transposing pack: n rows of k int8 values (row i at src + i * ld, minus `offset`) become
// the panel of the k columns, as blocks of 2 columns (ceil(k / 2) blocks of 2 * np int16),
// each of length np = mt_gemm_s8_kpad(n) (zeros past n and past k).
void mt_pack_s8_cols(const int8_t *src, int ld, int n, int k, int32_t offset, int np,
    int16_t *panel);

// Bytes of scratch mt_gemm_s8_nt needs.
size_t mt_gemm_s8_nt_scratch_bytes(int m, int n, int k);

// C[i][j] = sum_k (A[i][k] - a_offset) * (B[j][k] - b_offset) for i < m, j < n (int32,
// overwritten), with A m x k (row stride lda), B n x k (ldb), C row stride ldc.
void mt_gemm_s8_nt(int m, int n, int k, const int8_t *a, int lda, int32_t a_offset,
    const int8_t *b, int ldb, int32_t b_offset, int32_t *c, int ldc, void *scratch);

#endif
