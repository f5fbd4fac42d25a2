// machine module additions for the emulated boards (included by extmod/modmachine.c).
#include "board.h"

static void mp_machine_idle(void) {
    board_wait_for_event(1);
}

NORETURN static void mp_machine_reset(void) {
    board_reset();
}

static mp_int_t mp_machine_reset_cause(void) {
    return 0;
}
