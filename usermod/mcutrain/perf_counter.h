// perf_counter(): the finest repeatable work counter the target has.
// A board can supply its own by defining MCUTRAIN_BOARD_PERF_COUNTER (1) in its
// mpconfigport.h, together with MCUTRAIN_BOARD_PERF_UNIT (a string) and
//     uint64_t mcutrain_board_perf_counter(void);      // count as the read begins
//     uint64_t mcutrain_board_perf_counter_end(void);  // count as the read returns
#ifndef MCUTRAIN_PERF_COUNTER_H
#define MCUTRAIN_PERF_COUNTER_H

#include <stdint.h>
#include "py/mpconfig.h"

#if MCUTRAIN_BOARD_PERF_COUNTER
uint64_t mcutrain_board_perf_counter(void);
uint64_t mcutrain_board_perf_counter_end(void);
#define MCUTRAIN_PERF_UNIT MCUTRAIN_BOARD_PERF_UNIT
#elif defined(__unix__)
#include <time.h>
static inline uint64_t mcutrain_board_perf_counter(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
static inline uint64_t mcutrain_board_perf_counter_end(void) {
    return mcutrain_board_perf_counter();
}
#define MCUTRAIN_PERF_UNIT "ns"
#else
#include "py/mphal.h"
static inline uint64_t mcutrain_board_perf_counter(void) {
    return mp_hal_ticks_us();
}
static inline uint64_t mcutrain_board_perf_counter_end(void) {
    return mp_hal_ticks_us();
}
#define MCUTRAIN_PERF_UNIT "us"
#endif

#endif
