#define MICROPY_HW_BOARD_NAME "qemu-rv32 (virt)"
#define MICROPY_HW_MCU_NAME "rv32imac"
