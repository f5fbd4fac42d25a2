// Entry point of mcutrain's emulated boards: heap sized like a real MCU's RAM,
// littlefs on the host-file flash (mounted by the frozen _boot.py), boot.py and
// main.py, then the REPL; soft reset starts over.
#include <stdlib.h>
#include <string.h>

#include "py/compile.h"
#include "py/runtime.h"
#include "py/stackctrl.h"
#include "py/gc.h"
#include "py/mperrno.h"
#include "py/mphal.h"
#include "extmod/vfs.h"
#include "shared/runtime/gchelper.h"
#include "shared/runtime/pyexec.h"
#include "board.h"
#include "semihosting.h"

#ifndef MICROPY_HEAP_SIZE
#define MICROPY_HEAP_SIZE (256 * 1024)
#endif

// The heap models the target MCU's RAM: MICROPY_HEAP_SIZE unless the emulator
// passes heap=BYTES, and never more than the linker left free.
static size_t heap_size(void) {
    size_t available = (size_t)(_heap_end - _heap_start);
    size_t size = MICROPY_HEAP_SIZE;
    char buf[16];
    if (semihosting_arg("heap", buf, sizeof(buf)) != NULL) {
        size = 0;
        for (const char *p = buf; *p >= '0' && *p <= '9'; p++) {
            size = size * 10 + (size_t)(*p - '0');
        }
    }
    if (size < 16 * 1024) {
        size = 16 * 1024;
    }
    return size < available ? size : available;
}

static void run_boot_scripts(void) {
    pyexec_frozen_module("_boot.py", false);
    if (pyexec_mode_kind == PYEXEC_MODE_FRIENDLY_REPL) {
        pyexec_file_if_exists("boot.py");
    }
    if (pyexec_mode_kind == PYEXEC_MODE_FRIENDLY_REPL) {
        pyexec_file_if_exists("main.py");
    }
}

int main(void) {
    board_init();
    mp_stack_ctrl_init();
    // Leave room below the limit for the C code that runs when it is hit.
    mp_stack_set_limit((size_t)(_stack_top - _stack_bottom) - 2048);
    size_t heap = heap_size();

    for (;;) {
        gc_init(_heap_start, _heap_start + heap);
        mp_init();
        run_boot_scripts();

        for (;;) {
            if (pyexec_mode_kind == PYEXEC_MODE_RAW_REPL) {
                if (pyexec_raw_repl() != 0) {
                    break;
                }
            } else {
                if (pyexec_friendly_repl() != 0) {
                    break;
                }
            }
        }

        mp_printf(&mp_plat_print, "MPY: soft reboot\n");
        gc_sweep_all();
        mp_deinit();
    }
}

void gc_collect(void) {
    gc_collect_start();
    gc_helper_collect_regs_and_stack();
    gc_collect_end();
}

void nlr_jump_fail(void *val) {
    mp_printf(&mp_plat_print, "FATAL: uncaught NLR %p\n", val);
    semihosting_exit(1);
}

void __assert_func(const char *file, int line, const char *func, const char *expr) {
    mp_printf(&mp_plat_print, "Assertion '%s' failed, at file %s:%d\n", expr, file, line);
    semihosting_exit(1);
}
