# RISC-V rv32imafc + Zfh on QEMU's virt machine (-cpu rv32,Zfh=true): machine mode, hard
# float (ilp32f), half-precision loads, stores and arithmetic for the fp16 kernels. The
# board code and memory map are rv32's; reset also turns the FPU on.
CROSS_COMPILE ?= riscv64-unknown-elf-
# As on rv32: Zicsr (and Zfh) must be named for GCC 12 to accept the instructions, but the
# libgcc/picolibc multilib is picked only by an exact -march=rv32imafc, so the link asks for that.
CFLAGS_MCU = -march=rv32imafc_zicsr_zfh -mabi=ilp32f
LDFLAGS_MCU = -march=rv32imafc -mabi=ilp32f
LDSCRIPT = rv32/link.ld
SRC_BOARD_C = rv32/board.c
SRC_BOARD_SHARED_O = shared/runtime/gchelper_native.o shared/runtime/gchelper_rv32i.o
LIBM_SQRT = SW
MPY_CROSS_FLAGS += -march=rv32imc
