// rv32imac (and rv32f's rv32imafc) on QEMU virt (-bios none), machine mode: reset, trap
// handler, NS16550A UART0 through the PLIC, ACLINT machine timer.
// Peripheral addresses and IRQ numbers are QEMU's hw/riscv/virt.c.
#include <stdint.h>
#include <string.h>
#include "board.h"
#include "mpconfigboard.h"
#include "semihosting.h"

typedef struct {
    volatile uint8_t RBR_THR, IER, IIR_FCR, LCR, MCR, LSR;
} ns16550a_t;

#define UART0 ((ns16550a_t *)0x10000000)
#define UART_IER_RDI (1u << 0)
#define UART_FCR_ENABLE (1u << 0)
#define UART_FCR_CLEAR (3u << 1)   // both FIFOs; trigger level stays at 1 byte
#define UART_LSR_DR (1u << 0)
#define UART_LSR_THRE (1u << 5)

enum { IRQ_UART0 = 10 };

// PLIC context 0 is hart 0 in machine mode (virt gives each hart an M and an S context).
#define PLIC_PRIORITY ((volatile uint32_t *)0x0c000000)
#define PLIC_ENABLE ((volatile uint32_t *)0x0c002000)
#define PLIC_THRESHOLD (*(volatile uint32_t *)0x0c200000)
#define PLIC_CLAIM (*(volatile uint32_t *)0x0c200004)

// mtime counts at 10 MHz: 100 ns, so 100 instructions under -icount shift=0.
#define MTIME_LO (*(volatile uint32_t *)0x0200bff8)
#define MTIME_HI (*(volatile uint32_t *)0x0200bffc)
#define MTIMECMP_LO (*(volatile uint32_t *)0x02004000)
#define MTIMECMP_HI (*(volatile uint32_t *)0x02004004)
#define NS_PER_TICK (100u)

// SiFive test device: ends or resets the emulator.
#define SIFIVE_TEST (*(volatile uint32_t *)0x00100000)
#define SIFIVE_TEST_FAIL (0x3333u)   // exit status in the upper 16 bits
#define SIFIVE_TEST_RESET (0x7777u)

#define MSTATUS_MIE (1u << 3)
#define MIE_MTIE (1u << 7)
#define MIE_MEIE (1u << 11)
#define MCAUSE_INTERRUPT (1u << 31)
enum { CAUSE_BREAKPOINT = 3, IRQ_M_TIMER = 7, IRQ_M_EXTERNAL = 11 };

#define CSR_READ(csr) __extension__ ({ \
        uint32_t value_; \
        __asm volatile ("csrr %0, " #csr : "=r" (value_) : : "memory"); \
        value_; \
    })
#define CSR_SET(csr, bits) __asm volatile ("csrs " #csr ", %0" : : "r" (bits) : "memory")
#define CSR_CLEAR(csr, bits) __asm volatile ("csrc " #csr ", %0" : : "r" (bits) : "memory")

static inline uint32_t irq_disable(void) {
    uint32_t mstatus;
    __asm volatile ("csrrci %0, mstatus, %1" : "=r" (mstatus) : "i" (MSTATUS_MIE) : "memory");
    return mstatus;
}

static inline void irq_restore(uint32_t mstatus) {
    CSR_SET(mstatus, mstatus & MSTATUS_MIE);
}

uint64_t board_time_ns(void) {
    uint32_t hi, lo;
    do {
        hi = MTIME_HI;
        lo = MTIME_LO;
    } while (hi != MTIME_HI);
    return (((uint64_t)hi << 32) | lo) * NS_PER_TICK;
}

// QEMU 7.2 derives instret from icount: exact under -icount, one per instruction
// whatever its kind. Being the virtual clock, it also runs on while in wfi.
uint64_t board_instructions(void) {
    uint32_t hi, lo;
    do {
        hi = CSR_READ(instreth);
        lo = CSR_READ(instret);
    } while (hi != CSR_READ(instreth));
    return ((uint64_t)hi << 32) | lo;
}

// A read takes the same few instructions every time (but when instreth steps
// mid-read, every 2^32), so the count as it begins serves as its end too.
uint64_t board_instructions_end(void) {
    return board_instructions();
}

void board_uart_write(const char *buf, size_t len) {
    for (size_t i = 0; i < len; i++) {
        while (!(UART0->LSR & UART_LSR_THRE)) {
        }
        UART0->RBR_THR = (uint8_t)buf[i];
    }
}

void board_uart_rx_resume(void) {
    if (!(UART0->IER & UART_IER_RDI)) {
        // A 16550 interrupts at once for a byte that waited meanwhile.
        UART0->IER |= UART_IER_RDI;
    }
}

static void uart0_rx_irq(void) {
    while (UART0->LSR & UART_LSR_DR) {
        if (!stdin_rx_has_room()) {
            UART0->IER &= ~UART_IER_RDI;
            return;
        }
        stdin_rx_push(UART0->RBR_THR);
    }
}

static void external_irq(void) {
    uint32_t irq;
    while ((irq = PLIC_CLAIM) != 0) {
        if (irq == IRQ_UART0) {
            uart0_rx_irq();
        }
        PLIC_CLAIM = irq;
    }
}

// Never below both the old and the new value while half written (the sequence
// the privileged spec gives for rv32).
static void mtimecmp_set(uint64_t ticks) {
    MTIMECMP_LO = 0xffffffffu;
    MTIMECMP_HI = (uint32_t)(ticks >> 32);
    MTIMECMP_LO = (uint32_t)ticks;
}

// The timer only ends a sleep. It is disarmed by masking, not by a far mtimecmp:
// QEMU 7.2's icount overflows on a timer that far out and then spins when idle.
static void timer_irq(void) {
    CSR_CLEAR(mie, MIE_MTIE);
}

void board_sleep(uint64_t deadline_ns, int (*ready)(void)) {
    uint32_t mstatus = irq_disable();
    if (!ready()) {
        uint64_t now = board_time_ns();
        if (deadline_ns == 0 || deadline_ns > now) {
            if (deadline_ns != 0) {
                mtimecmp_set((deadline_ns + NS_PER_TICK - 1) / NS_PER_TICK);
                CSR_SET(mie, MIE_MTIE);
            }
            // Wakes on a pending enabled interrupt even while MIE is clear; it runs on restore.
            __asm volatile ("wfi" : : : "memory");
        }
    }
    irq_restore(mstatus);
}

// QEMU takes an ebreak as a semihosting call only between these two exact
// (uncompressed) instructions on the same page.
uintptr_t board_semihosting(uint32_t op, uintptr_t arg) {
    register uintptr_t a0 __asm__ ("a0") = op;
    register uintptr_t a1 __asm__ ("a1") = arg;
    __asm volatile (
        ".option push\n"
        ".option norvc\n"
        ".balign 16\n"
        "slli x0, x0, 0x1f\n"
        "ebreak\n"
        "srai x0, x0, 7\n"
        ".option pop\n"
        : "+r" (a0) : "r" (a1) : "memory");
    return a0;
}

void board_reset(void) {
    SIFIVE_TEST = SIFIVE_TEST_RESET;  // QEMU reloads the image and restarts
    for (;;) {
    }
}

void board_init(void) {
    UART0->IIR_FCR = UART_FCR_ENABLE | UART_FCR_CLEAR;
    UART0->IER = UART_IER_RDI;

    PLIC_PRIORITY[IRQ_UART0] = 1;
    PLIC_ENABLE[IRQ_UART0 / 32] = 1u << (IRQ_UART0 % 32);
    PLIC_THRESHOLD = 0;

    CSR_SET(mie, MIE_MEIE);  // MTIE only while a sleep has a deadline
    CSR_SET(mstatus, MSTATUS_MIE);
}

static void uart_write_hex(uint32_t value) {
    char buf[10] = "0x";
    for (int i = 0; i < 8; i++) {
        buf[2 + i] = "0123456789abcdef"[(value >> (28 - 4 * i)) & 0xf];
    }
    board_uart_write(buf, sizeof(buf));
}

// A fault must end the emulator with a message, never hang a test run.
__attribute__((noreturn)) static void fatal_trap(uint32_t mcause) {
    static const char msg[] = "\r\nFATAL: trap on " MICROPY_HW_BOARD_NAME ": mcause=";
    board_uart_write(msg, sizeof(msg) - 1);
    uart_write_hex(mcause);
    board_uart_write(" mepc=", 6);
    uart_write_hex(CSR_READ(mepc));
    board_uart_write(" mtval=", 7);
    uart_write_hex(CSR_READ(mtval));
    board_uart_write("\r\n", 2);
    if (mcause == CAUSE_BREAKPOINT) {
        // An ebreak that QEMU did not take as semihosting: semihosting is off.
        SIFIVE_TEST = SIFIVE_TEST_FAIL | (3u << 16);
    }
    semihosting_exit(3);
}

// mtvec needs a 4-byte aligned handler; the attribute saves what it uses and returns with mret.
__attribute__((interrupt("machine"), aligned(4), used)) static void trap_handler(void) {
    uint32_t mcause = CSR_READ(mcause);
    if (mcause == (MCAUSE_INTERRUPT | IRQ_M_EXTERNAL)) {
        external_irq();
    } else if (mcause == (MCAUSE_INTERRUPT | IRQ_M_TIMER)) {
        timer_irq();
    } else {
        fatal_trap(mcause);
    }
}

extern int main(void);
extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[];

// QEMU's reset vector jumps to the start of DRAM, where link.ld puts this.
__attribute__((naked, noreturn, section(".text.reset"))) void Reset_Handler(void) {
    __asm volatile (
        ".option push\n"
        ".option norelax\n"   // gp itself must not be loaded relative to gp
        "la gp, __global_pointer$\n"
        ".option pop\n"
        "la sp, _stack_top\n"
#ifdef __riscv_flen
        // mstatus.FS = Initial: until then every FPU instruction traps as illegal.
        "li t0, 0x2000\n"
        "csrs mstatus, t0\n"
#endif
        "la t0, trap_handler\n"
        "csrw mtvec, t0\n"
        "tail reset_c\n"
        );
}

__attribute__((noreturn, used)) void reset_c(void) {
    memcpy(_sdata, _sidata, (size_t)((uint8_t *)_edata - (uint8_t *)_sdata));
    memset(_sbss, 0, (size_t)((uint8_t *)_ebss - (uint8_t *)_sbss));
    main();
    semihosting_exit(0);
}
