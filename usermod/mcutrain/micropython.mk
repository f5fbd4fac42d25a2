# Make-based ports (unix, our qemu boards, stm32): USER_C_MODULES=<repo>/usermod
MCUTRAIN_MOD_DIR := $(USERMOD_DIR)

# Bindings (they include MicroPython headers, so they get QSTR extraction).
SRC_USERMOD_C += $(wildcard $(MCUTRAIN_MOD_DIR)/*.c)
# Kernels are plain C: no QSTRs to extract.
MCUTRAIN_KERNELS := $(wildcard $(MCUTRAIN_MOD_DIR)/kernels/*.c)
SRC_USERMOD_LIB_C += $(MCUTRAIN_KERNELS)

CFLAGS_USERMOD += -I$(MCUTRAIN_MOD_DIR)

# Ports build for size (-Os); the kernels are where the time goes, so build them for
# speed. py/py.mk names a user module's objects by their path under USER_C_MODULES
# (e.g. $(BUILD)/mcutrain/kernels/gemm_s8.o); map the sources the same way.
MCUTRAIN_KERNEL_OBJS := $(patsubst $(USER_C_MODULES)/%.c,$(BUILD)/%.o,$(MCUTRAIN_KERNELS))
$(MCUTRAIN_KERNEL_OBJS): CFLAGS += -O2
