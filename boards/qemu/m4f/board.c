// Cortex-M4F on QEMU mps2-an386: reset, vectors, CMSDK UART0 and timers.
// Peripheral addresses and IRQ numbers are QEMU's hw/arm/mps2.c.
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include "board.h"
#include "semihosting.h"

typedef struct {
    volatile uint32_t DATA, STATE, CTRL, INTSTATUS, BAUDDIV;
} cmsdk_uart_t;

typedef struct {
    volatile uint32_t CTRL, VALUE, RELOAD, INTSTATUS;
} cmsdk_timer_t;

#define UART0 ((cmsdk_uart_t *)0x40004000)
#define UART_STATE_TXFULL (1u << 0)
#define UART_STATE_RXFULL (1u << 1)
#define UART_CTRL_TX_EN (1u << 0)
#define UART_CTRL_RX_EN (1u << 1)
#define UART_CTRL_RX_INTEN (1u << 3)
#define UART_INT_RX (1u << 1)

// TIMER0 runs free as the time base; TIMER1 is a one-shot that ends a sleep.
#define TIMER0 ((cmsdk_timer_t *)0x40000000)
#define TIMER1 ((cmsdk_timer_t *)0x40001000)
#define TIMER_CTRL_EN (1u << 0)
#define TIMER_CTRL_IRQEN (1u << 3)

enum { IRQ_UART0_RX = 0, IRQ_TIMER0 = 8, IRQ_TIMER1 = 9 };

#define NVIC_ISER ((volatile uint32_t *)0xE000E100)
#define NVIC_ISPR ((volatile uint32_t *)0xE000E200)
#define SCB_VTOR (*(volatile uint32_t *)0xE000ED08)
#define SCB_AIRCR (*(volatile uint32_t *)0xE000ED0C)
#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88)
#define SCB_CFSR (*(volatile uint32_t *)0xE000ED28)

// The timers count the 25 MHz peripheral clock: 40 ns, so 40 instructions
// under -icount shift=0.
#define NS_PER_TICK (40u)

static volatile uint32_t timer0_wraps;

static inline uint32_t irq_disable(void) {
    uint32_t primask;
    __asm volatile ("mrs %0, primask\n cpsid i" : "=r" (primask) : : "memory");
    return primask;
}

static inline void irq_restore(uint32_t primask) {
    __asm volatile ("msr primask, %0" : : "r" (primask) : "memory");
}

static uint64_t timer0_ticks(void) {
    uint32_t primask = irq_disable();
    uint32_t value = TIMER0->VALUE;
    uint32_t wraps = timer0_wraps;
    if (TIMER0->INTSTATUS & 1) {
        // Wrapped, and the interrupt has not run yet.
        value = TIMER0->VALUE;
        wraps++;
    }
    irq_restore(primask);
    return ((uint64_t)wraps << 32) | (0xffffffffu - value);
}

uint64_t board_time_ns(void) {
    return timer0_ticks() * NS_PER_TICK;
}

// Exact instruction counts from a 40-instruction timer (Vernier measurement).
// edge_loops() polls TIMER0 in loops of 4 instructions across four timer edges,
// with 7 instructions between one edge's detection and the next loop's first
// read. The detection lag behind each edge, o, is 0..3 instructions and steps by
// -1 (mod 4) from edge to edge; a loop takes 10 polls exactly when the lag at the
// edge before it was 0, else 9. The pattern of poll counts thus gives the lag at
// the first edge, and from it the instruction at which edge_loops() began.
// Every instruction counts 1 under -icount, whatever its kind.
#define EDGES (4)
#define FIRST_POLL_OFFSET (3)   // instructions from entry to the first read
#define POLL_PERIOD (4)

__attribute__((naked, noinline)) static void edge_loops(volatile uint32_t *value, uint32_t *out) {
    __asm volatile (
        "ldr  r2, [r0]\n"
        "movs r3, #0\n"
        "1: adds r3, r3, #1\n"
        "ldr  ip, [r0]\n"
        "cmp  ip, r2\n"
        "beq  1b\n"
        "str  r3, [r1, #0]\n"
        "mov  r2, ip\n"
        "nop\n"
        "2: adds r3, r3, #1\n"
        "ldr  ip, [r0]\n"
        "cmp  ip, r2\n"
        "beq  2b\n"
        "str  r3, [r1, #4]\n"
        "mov  r2, ip\n"
        "nop\n"
        "3: adds r3, r3, #1\n"
        "ldr  ip, [r0]\n"
        "cmp  ip, r2\n"
        "beq  3b\n"
        "str  r3, [r1, #8]\n"
        "mov  r2, ip\n"
        "nop\n"
        "4: adds r3, r3, #1\n"
        "ldr  ip, [r0]\n"
        "cmp  ip, r2\n"
        "beq  4b\n"
        "str  r3, [r1, #12]\n"
        "str  ip, [r1, #16]\n"
        "bx   lr\n"
        );
}

// Lag at the first edge from the poll counts of the three loops after it, or -1
// if they fit no lag (an interrupt or a timer wrap disturbed the loops). Lags
// 0, 1, 2, 3 give the counts (10,9,9), (9,10,9), (9,9,10), (9,9,9). No
// data-dependent branches: the code after board_instructions_end()'s mark must
// take the same number of instructions every time.
static int first_edge_lag(const uint32_t *polls) {
    static const int8_t lag_by_pattern[8] = { 3, 0, 1, -1, 2, -1, -1, -1 };
    uint32_t d1 = polls[1] - polls[0] - 9;
    uint32_t d2 = polls[2] - polls[1] - 9;
    uint32_t d3 = polls[3] - polls[2] - 9;
    uint32_t valid = ((d1 | d2 | d3) >> 1) == 0;
    int lag = lag_by_pattern[(d1 & 1) | (d2 & 1) << 1 | (d3 & 1) << 2];
    return valid ? lag : -1;
}

// Instructions from entry to return of edge_loops(), given its total poll count.
static uint32_t edge_loops_length(uint32_t polls) {
    return 2 + POLL_PERIOD * polls + 3 * (EDGES - 1) + 3;
}

// Exact instruction count when edge_loops() began (*end: when it returned).
static uint64_t measure_instructions(uint64_t *end) {
    for (;;) {
        uint32_t out[EDGES + 1];
        uint32_t primask = irq_disable();
        edge_loops(&TIMER0->VALUE, out);
        bool wrapped = TIMER0->INTSTATUS & 1;
        uint32_t wraps = timer0_wraps;
        irq_restore(primask);
        int lag = first_edge_lag(out);
        if (wrapped || lag < 0) {
            continue;  // the interrupt has run now; measure again
        }
        uint64_t last_edge = ((uint64_t)wraps << 32) | (0xffffffffu - out[EDGES]);
        uint64_t first_edge = last_edge - (EDGES - 1);
        uint64_t begin = first_edge * NS_PER_TICK + (uint64_t)lag
            - FIRST_POLL_OFFSET - POLL_PERIOD * (uint64_t)(out[0] - 1);
        *end = begin + edge_loops_length(out[EDGES - 1]);
        return begin;
    }
}

uint64_t board_instructions(void) {
    uint64_t end;
    return measure_instructions(&end);
}

uint64_t board_instructions_end(void) {
    uint64_t end;
    measure_instructions(&end);
    return end;
}

void board_uart_write(const char *buf, size_t len) {
    for (size_t i = 0; i < len; i++) {
        while (UART0->STATE & UART_STATE_TXFULL) {
        }
        UART0->DATA = (uint8_t)buf[i];
    }
}

void board_uart_rx_resume(void) {
    if (!(UART0->CTRL & UART_CTRL_RX_INTEN)) {
        UART0->CTRL |= UART_CTRL_RX_INTEN;
        NVIC_ISPR[0] = 1u << IRQ_UART0_RX;  // drain any byte that waited meanwhile
    }
}

static void uart0_rx_irq(void) {
    UART0->INTSTATUS = UART_INT_RX;
    while (UART0->STATE & UART_STATE_RXFULL) {
        if (!stdin_rx_has_room()) {
            UART0->CTRL &= ~UART_CTRL_RX_INTEN;
            return;
        }
        stdin_rx_push((uint8_t)UART0->DATA);
    }
}

static void timer0_irq(void) {
    TIMER0->INTSTATUS = 1;
    timer0_wraps++;
}

static void timer1_irq(void) {
    TIMER1->CTRL = 0;
    TIMER1->INTSTATUS = 1;
}

void board_sleep(uint64_t deadline_ns, int (*ready)(void)) {
    uint32_t primask = irq_disable();
    if (!ready()) {
        uint64_t now = board_time_ns();
        if (deadline_ns == 0 || deadline_ns > now) {
            if (deadline_ns != 0) {
                uint64_t ticks = (deadline_ns - now + NS_PER_TICK - 1) / NS_PER_TICK;
                TIMER1->CTRL = 0;
                TIMER1->RELOAD = 0;
                TIMER1->VALUE = ticks > 0xffffffffu ? 0xffffffffu : (uint32_t)ticks;
                TIMER1->CTRL = TIMER_CTRL_EN | TIMER_CTRL_IRQEN;
            }
            // Wakes on a pending interrupt even while masked; it runs on restore.
            __asm volatile ("dsb\n wfi" : : : "memory");
        }
    }
    irq_restore(primask);
}

uintptr_t board_semihosting(uint32_t op, uintptr_t arg) {
    register uintptr_t r0 __asm__ ("r0") = op;
    register uintptr_t r1 __asm__ ("r1") = arg;
    __asm volatile ("bkpt 0xab" : "+r" (r0) : "r" (r1) : "memory");
    return r0;
}

void board_reset(void) {
    SCB_AIRCR = 0x05fa0004;  // SYSRESETREQ: QEMU reloads the image and restarts
    for (;;) {
    }
}

void board_init(void) {
    UART0->BAUDDIV = 16;  // QEMU's CMSDK UART moves no data below 16
    UART0->CTRL = UART_CTRL_TX_EN | UART_CTRL_RX_EN | UART_CTRL_RX_INTEN;

    TIMER0->RELOAD = 0xffffffffu;
    TIMER0->VALUE = 0xffffffffu;
    TIMER0->CTRL = TIMER_CTRL_EN | TIMER_CTRL_IRQEN;

    NVIC_ISER[0] = (1u << IRQ_UART0_RX) | (1u << IRQ_TIMER0) | (1u << IRQ_TIMER1);
    __asm volatile ("cpsie i" : : : "memory");
}

// A fault must end the emulator with a message, never hang a test run.
static void fault_handler(void) {
    static const char msg[] = "\r\nFATAL: hard fault on qemu-m4f\r\n";
    board_uart_write(msg, sizeof(msg) - 1);
    semihosting_exit(3);
}

extern int main(void);
extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[];

__attribute__((naked, noreturn)) void Reset_Handler(void) {
    // Turn the FPU on before any C code could use it (CPACR: CP10, CP11 full access).
    __asm volatile (
        "ldr r0, =0xE000ED88\n"
        "ldr r1, [r0]\n"
        "orr r1, r1, #(0xf << 20)\n"
        "str r1, [r0]\n"
        "dsb\n"
        "isb\n"
        "b reset_c\n"
        );
}

__attribute__((noreturn, used)) void reset_c(void) {
    memcpy(_sdata, _sidata, (size_t)((uint8_t *)_edata - (uint8_t *)_sdata));
    memset(_sbss, 0, (size_t)((uint8_t *)_ebss - (uint8_t *)_sbss));
    main();
    semihosting_exit(0);
}

static void default_handler(void) {
    fault_handler();
}

typedef void (*vector_t)(void);

__attribute__((section(".isr_vector"), used)) const vector_t board_vectors[16 + 32] = {
    (vector_t)_stack_top,
    Reset_Handler,
    fault_handler,      // NMI
    fault_handler,      // HardFault
    fault_handler,      // MemManage
    fault_handler,      // BusFault
    fault_handler,      // UsageFault
    [7 ... 15] = default_handler,
    [16 ... 47] = default_handler,
    [16 + IRQ_UART0_RX] = uart0_rx_irq,
    [16 + IRQ_TIMER0] = timer0_irq,
    [16 + IRQ_TIMER1] = timer1_irq,
};
