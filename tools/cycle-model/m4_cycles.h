// Cortex-M4 cycle costs of Thumb/Thumb-2 instructions (the table is m4_cycles.c).
// Pure C, no QEMU: the plugin (plugin.c) and the host unit test (tests/test_cycle_model.py,
// through ctypes) both link it.
#ifndef M4_CYCLES_H
#define M4_CYCLES_H

#include <stddef.h>
#include <stdint.h>

// flags of m4_cost_t
#define M4_BRANCH      0x01u  // writes the PC (taken costs `taken` more when conditional)
#define M4_CONDITIONAL 0x02u  // may fall through: taken only if the next pc is not pc + size
#define M4_LOAD1       0x04u  // single load (LDR*, LDREX, STREX): the next load/store pipelines
#define M4_LDST1       0x08u  // single load or store: pipelines behind an M4_LOAD1
#define M4_IT          0x10u
#define M4_NARROW      0x20u  // 16-bit encoding
#define M4_MEMORY      0x40u  // any load or store: `addr` holds its address registers

typedef struct {
    uint8_t cycles;    // when executed and not branching (unconditional branches: taken cost)
    uint8_t taken;     // extra when a conditional branch is taken (P)
    uint8_t flags;
    uint8_t rt;        // register an M4_LOAD1 writes
    uint16_t addr;     // registers an M4_MEMORY instruction uses for its address (bit n = Rn)
    uint16_t wr;       // registers a data-processing instruction writes (bit n = Rn)
} m4_cost_t;

// Pipeline refill P of the TRM's "1 + P" (it gives 1 to 3); m4_set_refill() overrides it.
#define M4_DEFAULT_REFILL 2u
void m4_set_refill(unsigned p);

// One instruction: `hw1` its first halfword, `hw2` the second (32-bit encodings only).
m4_cost_t m4_decode(uint16_t hw1, uint16_t hw2);

// Whether a first halfword starts a 32-bit encoding.
static inline int m4_is_wide(uint16_t hw1) {
    return (hw1 >> 11) >= 0x1d;
}

// The costs of the n instructions of a straight-line block (`code`: their bytes, little
// endian, as fetched; `sizes`: 2 or 4 each), with the effects between neighbours: load
// pipelining, address interlocks, IT folding, branches made conditional by an IT block.
void m4_block(const uint8_t *code, const uint8_t *sizes, size_t n, m4_cost_t *out);

#endif
