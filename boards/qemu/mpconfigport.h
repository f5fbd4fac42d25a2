// Configuration of mcutrain's emulated boards (QEMU mps2-an386 and virt rv32).
// Features follow what a real MCU port offers: time, select on stdin, a littlefs
// filesystem, sys.stdin.buffer (for mpremote mount), Ctrl-C during a script.
#include <stdint.h>
#include <alloca.h>

#define MICROPY_CONFIG_ROM_LEVEL            (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)

#if defined(__ARM_ARCH_ISA_THUMB)
#define MICROPY_EMIT_THUMB                  (1)
#define MICROPY_EMIT_INLINE_THUMB           (1)
#define MICROPY_MAKE_POINTER_CALLABLE(p)    ((void *)((mp_uint_t)(p) | 1))
#elif defined(__riscv)
#define MICROPY_EMIT_RV32                   (1)
#define MICROPY_EMIT_INLINE_RV32            (1)
#endif

#define MICROPY_ENABLE_GC                   (1)
#define MICROPY_MALLOC_USES_ALLOCATED_SIZE  (1)
#define MICROPY_MEM_STATS                   (1)
#define MICROPY_ENABLE_EMERGENCY_EXCEPTION_BUF (1)
#define MICROPY_LONGINT_IMPL                (MICROPY_LONGINT_IMPL_MPZ)
#define MICROPY_FLOAT_IMPL                  (MICROPY_FLOAT_IMPL_FLOAT)
// Floats packed in the object word (30 bits: 2 fewer mantissa bits than fp32), as on
// many small ports: float results such as train_step's loss then need no heap, so a
// training step allocates nothing. Tensors keep full fp32.
#define MICROPY_OBJ_REPR                    (MICROPY_OBJ_REPR_C)
#define MICROPY_PERSISTENT_CODE_LOAD        (1)
#define MICROPY_WARNINGS                    (1)
#define MICROPY_ENABLE_SCHEDULER            (1)
#define MICROPY_KBD_EXCEPTION               (1)
#define MICROPY_HELPER_REPL                 (1)
#define MICROPY_REPL_INFO                   (1)
#define MICROPY_READER_VFS                  (1)

#define MICROPY_PY_SYS_PLATFORM             "qemu"
#define MICROPY_PY_SYS_STDFILES             (1)
#define MICROPY_PY_SYS_STDIO_BUFFER         (1)
#define MICROPY_PY_SELECT                   (1)
#define MICROPY_PY_TIME                     (1)
#define MICROPY_PY_TIME_TIME_TIME_NS        (1)
#define MICROPY_PY_TIME_INCLUDEFILE         "time_include.c"
#define MICROPY_PY_OS                       (1)
#define MICROPY_PY_OS_UNAME                 (1)
#define MICROPY_PY_RANDOM_SEED_INIT_FUNC    (board_random_seed())
#define MICROPY_PY_MACHINE                  (1)
#define MICROPY_PY_MACHINE_INCLUDEFILE      "machine_include.c"
#define MICROPY_PY_MACHINE_RESET            (1)
#define MICROPY_PY_ASYNCIO                  (0)

#define MICROPY_VFS                         (1)   // littlefs2 comes from the Makefile (MICROPY_VFS_LFS2=1)

// Board name as shown in the banner and os.uname().machine; the board's
// mpconfigboard.h defines MICROPY_HW_BOARD_NAME and MICROPY_HW_MCU_NAME.
#include "mpconfigboard.h"

// mcutrain: perf_counter() is the board's exact guest instruction count.
#define MCUTRAIN_BOARD_PERF_COUNTER         (1)
#define MCUTRAIN_BOARD_PERF_UNIT            "instructions"

// Sleep until an interrupt (UART byte, timer) instead of spinning: an idle
// emulator then costs no host CPU.
#define MICROPY_INTERNAL_WFE(TIMEOUT_MS)    board_wait_for_event(TIMEOUT_MS)

#define MP_SSIZE_MAX                        (0x7fffffff)
#define UINT_FMT                            "%lu"
#define INT_FMT                             "%ld"
typedef int32_t mp_int_t;
typedef uint32_t mp_uint_t;
typedef long mp_off_t;

#define MP_NEED_LOG2                        (1)
#define MP_STATE_PORT                       MP_STATE_VM

void board_wait_for_event(uint32_t timeout_ms);
uint32_t board_random_seed(void);
