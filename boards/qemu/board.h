// What each emulated board (m4f/, rv32/) provides to the common port code.
#ifndef MCUTRAIN_QEMU_BOARD_H
#define MCUTRAIN_QEMU_BOARD_H

#include <stddef.h>
#include <stdint.h>

// Clocks, FPU, UART with receive interrupt, timers, interrupts on.
void board_init(void);

void board_uart_write(const char *buf, size_t len);

// Virtual time since reset, in ns. Under `-icount shift=0` one ns is one guest instruction.
uint64_t board_time_ns(void);

// Exact count of guest instructions executed since reset (under -icount
// shift=0), as the call begins. Reading it may itself take a variable number of
// instructions, so board_instructions_end() gives the count as it returns.
uint64_t board_instructions(void);
uint64_t board_instructions_end(void);

// Sleep until any interrupt, or until time_ns reaches deadline_ns (0: no deadline).
// Called with interrupts enabled; returns with them enabled.
void board_sleep(uint64_t deadline_ns, int (*ready)(void));

// One semihosting call (ARM/RISC-V "angel" protocol, as QEMU implements it).
uintptr_t board_semihosting(uint32_t op, uintptr_t arg);

void board_reset(void) __attribute__((noreturn));

// From the linker script: the C stack, and the memory the GC heap may use.
extern uint8_t _stack_bottom[], _stack_top[];
extern uint8_t _heap_start[], _heap_end[];

// The board's UART receive interrupt pushes each byte while there is room, and
// otherwise masks itself until board_uart_rx_resume(): QEMU then holds further
// bytes back, so nothing sent to the board is lost.
void stdin_rx_push(uint8_t c);
int stdin_rx_has_room(void);
void board_uart_rx_resume(void);

#endif
