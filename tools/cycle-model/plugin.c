// libm4cycles.so: a QEMU 7.2 TCG plugin that estimates Cortex-M4 cycles of the guest
// (qemu-system-arm) from the table in m4_cycles.c, and reports them per perf_counter()
// region. See README.md here and docs/cycle-model.md.
//
//   -plugin libm4cycles.so,out=FILE,read=A,read_end=A,sample=A,sample_end=A[,refill=P][,profile=N]
//
// Every instruction is decoded once, when QEMU translates its block; executing it adds 1
// to an instruction counter and its cost to a cycle counter (inline adds, no call). A
// conditional branch adds its refill cost P when the next block does not start right after
// it (a call at each block start checks that). The addresses come from the firmware's
// symbols (host/mcutrain/cycle_model.py): `read` and `read_end` are the board's
// mcutrain_board_perf_counter() and mcutrain_board_perf_counter_end(); `sample` and
// `sample_end` the first and the last instruction of the timer sampling loop whose start
// and end those two return. At each perf_counter() call the plugin writes one line,
// "instructions cycles", for the region since the previous call: from the end of that
// call's count to the start of this one's, exactly the region t1 - t0 measures.
//
// Profile mode (profile=N, off by default): every translated block also counts its own
// instructions and cycles (two more inline adds per instruction). At the same two points
// where the totals are read, the plugin copies every block's counters; the difference is
// that block's share of the region. At exit it writes "profile N instructions cycles" and one
// line "block ADDRESS instructions cycles" per block that ran in region N (1 = the first
// region written; 0 = the last one). The blocks' shares sum to the region's totals exactly.
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m4_cycles.h"

// The parts of QEMU 7.2's plugin API (include/qemu/qemu-plugin.h, API version 1) used here,
// declared from its documentation: QEMU's headers are not installed.
typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
    enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
    qemu_plugin_vcpu_udata_cb_t cb, enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn,
    enum qemu_plugin_op op, void *ptr, uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

#define EXPORT __attribute__((visibility("default")))
EXPORT int qemu_plugin_version = 1;

// qemu-m4f has one vCPU, so plain counters serve (QEMU runs one vCPU thread at a time).
static uint64_t instructions, cycles;

// Profile mode: one translated block's counters (a block retranslated gets a new record).
typedef struct {
    uint64_t start;
    uint64_t instructions, cycles;        // inline counters, since the block was translated
    uint64_t end_insns, end_cycles;       // copies as the previous perf_counter() call returned
    uint64_t begin_insns, begin_cycles;   // copies as this call's count began
    uint64_t region_insns, region_cycles; // its share of the profiled region
} block_count_t;

static bool profiling;
static uint64_t profile_region, regions_written, profiled, profiled_insns, profiled_cycles;
static block_count_t **blocks;
static size_t n_blocks, blocks_cap;

// A block that ends in a conditional branch: whether the branch ran (an inline counter)
// and where it falls through.
typedef struct {
    uint64_t executed;
    uint64_t fallthrough;
    uint64_t start;
    uint32_t taken;
    block_count_t *block;  // profile mode: the block the branch ends
} branch_site_t;

// The last block's branch, checked at the start of the next block.
static branch_site_t *pending;
static uint64_t pending_executed;

enum { MARK_NONE, MARK_READ, MARK_READ_END, MARK_SAMPLE, MARK_SAMPLE_END, MARKS };
static uint64_t mark_addr[MARKS];
static FILE *out;

// perf_counter() region bookkeeping: phase 1 between read and read_end (the last sample
// start is the count the read returns), phase 2 after read_end (the last sample end is
// the count the read leaves out from then on).
static int phase;
static bool have_end;
static uint64_t begin_insns, begin_cycles, end_insns, end_cycles;

typedef struct {
    int mark;
    uint32_t cost;
    block_count_t *block;  // profile mode
} marked_insn_t;

enum { SNAP_END, SNAP_BEGIN, SNAP_REGION };

// Profile mode: copy every block's counters at one of the region's points.
static void snapshot(int what) {
    for (size_t i = 0; i < n_blocks; i++) {
        block_count_t *b = blocks[i];
        if (what == SNAP_END) {
            b->end_insns = b->instructions;
            b->end_cycles = b->cycles;
        } else if (what == SNAP_BEGIN) {
            b->begin_insns = b->instructions;
            b->begin_cycles = b->cycles;
        } else {
            b->region_insns = b->begin_insns - b->end_insns;
            b->region_cycles = b->begin_cycles - b->end_cycles;
        }
    }
}

static block_count_t *new_block(uint64_t start) {
    if (n_blocks == blocks_cap) {
        size_t cap = blocks_cap ? 2 * blocks_cap : 1024;
        block_count_t **grown = realloc(blocks, cap * sizeof *grown);
        if (!grown) {
            return NULL;
        }
        blocks = grown;
        blocks_cap = cap;
    }
    block_count_t *b = calloc(1, sizeof *b);
    if (b) {
        b->start = start;
        blocks[n_blocks++] = b;
    }
    return b;
}

static void block_start(unsigned int vcpu, void *udata) {
    (void)vcpu;
    uintptr_t tag = (uintptr_t)udata;
    uint64_t vaddr = (tag & 1) ? (uint64_t)(tag >> 1) : ((branch_site_t *)udata)->start;
    if (pending) {
        if (pending->executed != pending_executed && vaddr != pending->fallthrough) {
            cycles += pending->taken;
            if (pending->block) {
                pending->block->cycles += pending->taken;
            }
        }
        pending = NULL;
    }
    if (!(tag & 1)) {
        pending = (branch_site_t *)udata;
        pending_executed = pending->executed;
    }
}

static void marked(unsigned int vcpu, void *udata) {
    (void)vcpu;
    const marked_insn_t *m = udata;
    if (m->mark == MARK_SAMPLE && phase == 1) {
        begin_insns = instructions;   // the count as the sampling loop begins
        begin_cycles = cycles;
        if (profiling) {
            snapshot(SNAP_BEGIN);
        }
    }
    instructions += 1;
    cycles += m->cost;
    if (m->block) {
        m->block->instructions += 1;
        m->block->cycles += m->cost;
    }
    switch (m->mark) {
        case MARK_READ:
            phase = 1;
            break;
        case MARK_READ_END:
            if (phase == 1 && have_end && out) {
                fprintf(out, "%" PRIu64 " %" PRIu64 "\n", begin_insns - end_insns, begin_cycles - end_cycles);
                fflush(out);
                regions_written++;
                if (profiling && (profile_region == 0 || profile_region == regions_written)) {
                    snapshot(SNAP_REGION);
                    profiled = regions_written;
                    profiled_insns = begin_insns - end_insns;
                    profiled_cycles = begin_cycles - end_cycles;
                }
            }
            phase = phase == 1 ? 2 : 0;
            break;
        case MARK_SAMPLE_END:
            if (phase == 2) {
                end_insns = instructions;     // the count as the sampling loop returns
                end_cycles = cycles;
                have_end = true;
                if (profiling) {
                    snapshot(SNAP_END);
                }
            }
            break;
        default:
            break;
    }
}

static int mark_of(uint64_t vaddr) {
    for (int m = MARK_READ; m < MARKS; m++) {
        if (mark_addr[m] == vaddr) {
            return m;
        }
    }
    return MARK_NONE;
}

#define MAX_BLOCK 512

static void translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (n == 0 || n > MAX_BLOCK) {
        return;
    }
    uint8_t code[4 * MAX_BLOCK], sizes[MAX_BLOCK];
    m4_cost_t costs[MAX_BLOCK];
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        size_t size = qemu_plugin_insn_size(insn);
        if (size != 2 && size != 4) {
            size = 2;  // not Thumb: cost it as one 16-bit instruction
            memset(code + off, 0, 2);
        } else {
            memcpy(code + off, qemu_plugin_insn_data(insn), size);
        }
        sizes[i] = (uint8_t)size;
        off += size;
    }
    m4_block(code, sizes, n, costs);

    uint64_t start = qemu_plugin_tb_vaddr(tb);
    block_count_t *block = profiling ? new_block(start) : NULL;
    void *udata = (void *)(uintptr_t)(start << 1 | 1);
    const m4_cost_t *last = &costs[n - 1];
    branch_site_t *site = NULL;
    if (last->flags & M4_CONDITIONAL) {
        site = calloc(1, sizeof *site);
        if (site) {
            struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, n - 1);
            site->fallthrough = qemu_plugin_insn_vaddr(insn) + sizes[n - 1];
            site->start = start;
            site->taken = last->taken;
            site->block = block;
            udata = site;
        }
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, block_start, QEMU_PLUGIN_CB_NO_REGS, udata);

    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        int mark = mark_of(qemu_plugin_insn_vaddr(insn));
        if (mark != MARK_NONE) {
            marked_insn_t *m = malloc(sizeof *m);
            if (m) {
                m->mark = mark;
                m->cost = costs[i].cycles;
                m->block = block;
                qemu_plugin_register_vcpu_insn_exec_cb(insn, marked, QEMU_PLUGIN_CB_NO_REGS, m);
                continue;
            }
        }
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &instructions, 1);
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &cycles,
            costs[i].cycles);
        if (block) {
            qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64,
                &block->instructions, 1);
            qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64,
                &block->cycles, costs[i].cycles);
        }
    }
    if (site) {
        qemu_plugin_register_vcpu_insn_exec_inline(qemu_plugin_tb_get_insn(tb, n - 1),
            QEMU_PLUGIN_INLINE_ADD_U64, &site->executed, 1);
    }
}

static void at_exit(qemu_plugin_id_t id, void *udata) {
    (void)id;
    (void)udata;
    if (out) {
        fprintf(out, "total %" PRIu64 " %" PRIu64 "\n", instructions, cycles);
        if (profiled) {
            fprintf(out, "profile %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", profiled, profiled_insns,
                profiled_cycles);
            for (size_t i = 0; i < n_blocks; i++) {
                const block_count_t *b = blocks[i];
                if (b->region_insns) {
                    fprintf(out, "block %#" PRIx64 " %" PRIu64 " %" PRIu64 "\n", b->start,
                        b->region_insns, b->region_cycles);
                }
            }
        }
        fclose(out);
        out = NULL;
    }
}

static bool parse_address(const char *arg, const char *key, uint64_t *value) {
    size_t len = strlen(key);
    if (strncmp(arg, key, len) != 0 || arg[len] != '=') {
        return false;
    }
    *value = strtoull(arg + len + 1, NULL, 0) & ~(uint64_t)1;  // Thumb bit off
    return true;
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv) {
    (void)info;
    static const char *const names[MARKS] = { NULL, "read", "read_end", "sample", "sample_end" };
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        bool known = false;
        for (int m = MARK_READ; m < MARKS; m++) {
            known = known || parse_address(arg, names[m], &mark_addr[m]);
        }
        if (strncmp(arg, "refill=", 7) == 0) {
            m4_set_refill((unsigned)strtoul(arg + 7, NULL, 0));
            known = true;
        } else if (strncmp(arg, "profile=", 8) == 0) {
            profile_region = strtoull(arg + 8, NULL, 0);
            profiling = true;
            known = true;
        } else if (strncmp(arg, "out=", 4) == 0) {
            out = fopen(arg + 4, "w");
            if (!out) {
                qemu_plugin_outs("m4cycles: cannot open the out file\n");
                return -1;
            }
            known = true;
        }
        if (!known) {
            qemu_plugin_outs("m4cycles: unknown argument (want out=, read=, read_end=, sample=, "
                "sample_end=, refill=, profile=)\n");
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, translate);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
