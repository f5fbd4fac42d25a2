#define MICROPY_HW_BOARD_NAME "qemu-rv32f (virt)"
#define MICROPY_HW_MCU_NAME "rv32imafc+Zfh"
