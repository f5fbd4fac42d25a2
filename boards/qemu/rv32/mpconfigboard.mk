# RISC-V rv32imac on QEMU's virt machine: machine mode only, soft float.
CROSS_COMPILE ?= riscv64-unknown-elf-
# GCC 12 wants Zicsr named for the csr instructions, but Debian's GCC 12 picks
# the rv32 multilib (libgcc) only for an exact -march=rv32imac, so the link asks for that.
CFLAGS_MCU = -march=rv32imac_zicsr -mabi=ilp32
LDFLAGS_MCU = -march=rv32imac -mabi=ilp32
LDSCRIPT = $(BOARD_DIR)/link.ld
SRC_BOARD_C = $(BOARD_DIR)/board.c
SRC_BOARD_SHARED_O = shared/runtime/gchelper_native.o shared/runtime/gchelper_rv32i.o
LIBM_SQRT = SW
MPY_CROSS_FLAGS += -march=rv32imc
