# Make-based ports (unix, our qemu boards, stm32): USER_C_MODULES=<repo>/usermod
MCUTRAIN_MOD_DIR := $(USERMOD_DIR)

SRC_USERMOD_C += $(MCUTRAIN_MOD_DIR)/modmcutrain.c
SRC_USERMOD_LIB_C += $(wildcard $(MCUTRAIN_MOD_DIR)/kernels/*.c)

CFLAGS_USERMOD += -I$(MCUTRAIN_MOD_DIR)
