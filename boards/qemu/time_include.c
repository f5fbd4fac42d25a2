// time module additions for the emulated boards (included by extmod/modtime.c).
// There is no RTC: time() counts virtual seconds since reset, which keeps runs
// under -icount repeatable.
#include "py/obj.h"
#include "board.h"

static mp_obj_t mp_time_time_get(void) {
    return mp_obj_new_int_from_ull(board_time_ns() / 1000000000u);
}
