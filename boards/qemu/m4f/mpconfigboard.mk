# Cortex-M4F on QEMU's mps2-an386: hard float, the project's default device.
CROSS_COMPILE ?= arm-none-eabi-
CFLAGS_MCU = -mthumb -mcpu=cortex-m4 -mfpu=fpv4-sp-d16 -mfloat-abi=hard
LDSCRIPT = $(BOARD_DIR)/link.ld
SRC_BOARD_C = $(BOARD_DIR)/board.c
SRC_BOARD_SHARED_O = shared/runtime/gchelper_native.o shared/runtime/gchelper_thumb2.o
LIBM_SQRT = HW
MPY_CROSS_FLAGS += -march=armv7emsp
