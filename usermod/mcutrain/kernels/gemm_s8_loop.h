// The k loop of the 3x2 SMLAD kernels as an assembly fragment (Cortex-M4 and other cores
// with the DSP extension), shared by gemm_s8.c's kernels and by kernels that run their
// epilogue straight from the sums' registers (conv2d_s8.c). Internal: panels as in
// gemm_s8.h.
//
// Per pair of k, one LDM loads the three A words, one the two B words, and six SMLADs do
// 12 multiply-adds: 8 instructions. In: r0 = kp (a multiple of MT_GEMM_S8_KSTEP, > 0),
// r1 = A, r2 = B, sums in r4-r9 (A row r against B row c in r(4 + 2r + c)). Out: r1 and r2
// past the block's kp / 2 words per row; r0 = 0; uses r3, r10-r12 and lr.
#ifndef MCUTRAIN_KERNELS_GEMM_S8_LOOP_H
#define MCUTRAIN_KERNELS_GEMM_S8_LOOP_H

#define MT_GEMM_S8_PAIR \
        "ldm r1!, {r3, r10, r11}\n\t" \
        "ldm r2!, {r12, lr}\n\t" \
        "smlad r4, r3, r12, r4\n\t" \
        "smlad r5, r3, lr, r5\n\t" \
        "smlad r6, r10, r12, r6\n\t" \
        "smlad r7, r10, lr, r7\n\t" \
        "smlad r8, r11, r12, r8\n\t" \
        "smlad r9, r11, lr, r9\n\t"
#define MT_GEMM_S8_PAIR4 MT_GEMM_S8_PAIR MT_GEMM_S8_PAIR MT_GEMM_S8_PAIR MT_GEMM_S8_PAIR
#define MT_GEMM_S8_K_LOOP \
        /* kp / 8 steps of 4 pairs: 4 and 8 pairs as kp's bits 3 and 4 say, then loops of */ \
        /* 16 pairs (130 instructions for 192 multiply-adds: 1.48 a instruction). */ \
        "lsrs r0, r0, #4\n\t" \
        "bcc 1f\n\t" \
        MT_GEMM_S8_PAIR4 \
        "1:\n\t" \
        "lsrs r0, r0, #1\n\t" \
        "bcc 4f\n\t" \
        MT_GEMM_S8_PAIR4 MT_GEMM_S8_PAIR4 \
        "4:\n\t" \
        "cmp r0, #0\n\t" \
        "beq 2f\n\t" \
        "3:\n\t" \
        MT_GEMM_S8_PAIR4 MT_GEMM_S8_PAIR4 MT_GEMM_S8_PAIR4 MT_GEMM_S8_PAIR4 \
        "subs r0, r0, #1\n\t" \
        "bne 3b\n\t" \
        "2:\n\t"

#endif
