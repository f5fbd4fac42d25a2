#include <stddef.h>

#include "shared/runtime/interrupt_char.h"

uint64_t board_instructions(void);

static inline mp_uint_t mp_hal_ticks_cpu(void) {
    return (mp_uint_t)board_instructions();
}
