#define MICROPY_HW_BOARD_NAME "qemu-m4f (mps2-an386)"
#define MICROPY_HW_MCU_NAME "Cortex-M4F"
