// stdio over the board UART (receive side interrupt-driven into a ring buffer),
// time from the board's virtual clock.
#include "py/mphal.h"
#include "py/runtime.h"
#include "py/stream.h"
#include "board.h"

// Single producer (UART interrupt) and single consumer (VM): no lock needed.
#define STDIN_BUF_SIZE (512)
static volatile uint8_t stdin_buf[STDIN_BUF_SIZE];
static volatile uint32_t stdin_head, stdin_tail;

void stdin_rx_push(uint8_t c) {
    if (c == mp_interrupt_char) {
        mp_sched_keyboard_interrupt();
        return;
    }
    stdin_buf[stdin_head] = c;
    stdin_head = (stdin_head + 1) % STDIN_BUF_SIZE;
}

int stdin_rx_has_room(void) {
    return (stdin_head + 1) % STDIN_BUF_SIZE != stdin_tail;
}

static int stdin_has_data(void) {
    return stdin_head != stdin_tail;
}

uintptr_t mp_hal_stdio_poll(uintptr_t poll_flags) {
    uintptr_t ret = 0;
    if ((poll_flags & MP_STREAM_POLL_RD) && stdin_has_data()) {
        ret |= MP_STREAM_POLL_RD;
    }
    if (poll_flags & MP_STREAM_POLL_WR) {
        ret |= MP_STREAM_POLL_WR;
    }
    return ret;
}

int mp_hal_stdin_rx_chr(void) {
    while (!stdin_has_data()) {
        mp_event_wait_indefinite();
    }
    int c = stdin_buf[stdin_tail];
    stdin_tail = (stdin_tail + 1) % STDIN_BUF_SIZE;
    board_uart_rx_resume();
    return c;
}

mp_uint_t mp_hal_stdout_tx_strn(const char *str, size_t len) {
    board_uart_write(str, len);
    return len;
}

void board_wait_for_event(uint32_t timeout_ms) {
    uint64_t deadline = 0;
    if (timeout_ms != (uint32_t)-1) {
        deadline = board_time_ns() + (uint64_t)timeout_ms * 1000000u;
    }
    board_sleep(deadline, stdin_has_data);
}

mp_uint_t mp_hal_ticks_ms(void) {
    return (mp_uint_t)(board_time_ns() / 1000000u);
}

mp_uint_t mp_hal_ticks_us(void) {
    return (mp_uint_t)(board_time_ns() / 1000u);
}

uint64_t mp_hal_time_ns(void) {
    return board_time_ns();
}

void mp_hal_delay_ms(mp_uint_t ms) {
    uint64_t deadline = board_time_ns() + (uint64_t)ms * 1000000u;
    for (;;) {
        uint64_t now = board_time_ns();
        if (now >= deadline) {
            return;
        }
        // Runs scheduled callbacks and raises a pending KeyboardInterrupt.
        mp_event_wait_ms((mp_uint_t)((deadline - now + 999999u) / 1000000u));
    }
}

void mp_hal_delay_us(mp_uint_t us) {
    uint64_t deadline = board_time_ns() + (uint64_t)us * 1000u;
    while (board_time_ns() < deadline) {
    }
}

// _mcutrain.perf_counter() (see usermod/mcutrain/perf_counter.h).
uint64_t mcutrain_board_perf_counter(void) {
    return board_instructions();
}

uint64_t mcutrain_board_perf_counter_end(void) {
    return board_instructions_end();
}

uint32_t board_random_seed(void) {
    // Deterministic under -icount, like a board without a hardware RNG.
    return (uint32_t)board_instructions() ^ 0x6d637472u;
}
