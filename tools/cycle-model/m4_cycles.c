// The Cortex-M4 cycle table: what each Thumb/Thumb-2 instruction costs on an M4 with
// zero-wait-state memory, from Arm's Cortex-M4 Technical Reference Manual (r0p1,
// ARM DDI 0439B; the same tables are in its later edition 100166_0001):
//   [3.3.1] Table 3-1 "Processor instruction set summary" (integer) and
//           Table 3-2 "DSP instruction set summary" (DSP extension: all 1 cycle),
//   [3.3.2] "Load/store timings" (which neighbouring loads and stores pipeline),
//   [7.2.3] Table 7-1 "FPU instruction set" (single-precision FPU).
// Encodings follow the ARMv7-M Architecture Reference Manual (ARM DDI 0403), A5/A6.
// Where the manual gives a range, the choice made is stated next to it.
#include "m4_cycles.h"

// [3.3.1] P: "the number of cycles required for a pipeline refill. This ranges from 1 to 3
// depending on the alignment and width of the target instruction, and whether the
// processor manages to speculate the address early." We take 2, the middle.
static unsigned refill = M4_DEFAULT_REFILL;

// [3.3.1] SDIV/UDIV take "2 to 12" cycles, ending early by the operands' leading zeros and
// ones, which a translation-time table cannot see: we charge the upper bound.
#define DIVIDE_CYCLES 12u

// [7.2.3] VDIV.F32 and VSQRT.F32.
#define FP_DIVIDE_CYCLES 14u

void m4_set_refill(unsigned p) {
    refill = p;
}

static m4_cost_t cost(unsigned cycles) {
    m4_cost_t c = { (uint8_t)cycles, 0, 0, 0, 0, 0 };
    return c;
}

// [3.3.2] "Any load or store that generates an address dependent on the result of a
// preceding data processing operation stalls the pipeline for an additional cycle while
// the register bank is updated": data processing records the registers it writes.
static m4_cost_t alu(unsigned cycles, unsigned rd) {
    m4_cost_t c = cost(cycles);
    c.wr = rd == 15 ? 0 : (uint16_t)(1u << rd);   // Rd = 15: TST, TEQ, CMP, CMN
    return c;
}

// A load or store that is not a single one (LDM, LDRD, VLDR...): its address registers.
static m4_cost_t memory(m4_cost_t c, unsigned addr_regs) {
    c.flags |= M4_MEMORY;
    c.addr = (uint16_t)addr_regs;
    return c;
}

// Always taken: "1 + P" rows of [3.3.1] (B, BL, BX, BLX, MOV/ADD PC, POP/LDM with PC,
// LDR PC); `base` is the cost without the refill.
static m4_cost_t branch(unsigned base) {
    m4_cost_t c = cost(base + refill);
    c.taken = (uint8_t)refill;
    c.flags = M4_BRANCH;
    return c;
}

// [3.3.1] B<cc>, CBZ, CBNZ: "1 or 1 + P" (one cycle when not taken).
static m4_cost_t conditional_branch(void) {
    m4_cost_t c = cost(1);
    c.taken = (uint8_t)refill;
    c.flags = M4_BRANCH | M4_CONDITIONAL;
    return c;
}

// [3.3.1] single loads: 2 cycles. [3.3.2] "LDR [any] are pipelined when possible": a load
// or store right after one costs one cycle less unless its address uses the register the
// load wrote (m4_block). LDREX and STREX "can be pipelined exactly as LDR".
static m4_cost_t load(unsigned rt, unsigned addr_regs) {
    m4_cost_t c = cost(2);
    c.flags = M4_LOAD1 | M4_LDST1 | M4_MEMORY;
    c.rt = (uint8_t)rt;
    c.addr = (uint16_t)addr_regs;
    return c;
}

// [3.3.2] "STR Rx,[Ry,#imm] is always one cycle" (the data phase overlaps the next
// instruction); with a register offset "other instructions cannot be pipelined after" it:
// the table's 2 cycles, 1 when it pipelines behind a load.
static m4_cost_t store(unsigned addr_regs, int register_offset) {
    m4_cost_t c = cost(register_offset ? 2 : 1);
    c.flags = M4_LDST1 | M4_MEMORY;
    c.addr = (uint16_t)addr_regs;
    return c;
}

// [3.3.1] LDM, STM, PUSH, POP: 1 + N (N registers, PC and LR included); with PC: + P.
// [3.3.2] they do not pipeline with their neighbours.
static m4_cost_t multiple(unsigned n, int loads_pc, unsigned rn) {
    return memory(loads_pc ? branch(1 + n) : cost(1 + n), 1u << rn);
}

static unsigned bits_set(unsigned v) {
    return (unsigned)__builtin_popcount(v);
}

// [7.2.3] Table 7-1. Coprocessors 10 and 11 only (the single-precision FPU).
static m4_cost_t fpu(uint16_t h1, uint16_t h2) {
    if (((h2 >> 9) & 7) != 5) {
        return cost(1);
    }
    if ((h1 & 0xfe00) == 0xec00) {                     // extension register load/store
        if ((h1 & 0xffe0) == 0xec40) {
            return cost(2);                            // VMOV two core registers <-> S/D: 2
        }
        unsigned p = (h1 >> 8) & 1, w = (h1 >> 5) & 1, rn = 1u << (h1 & 0xf);
        if (p && !w) {
            return memory(cost(((h2 >> 8) & 1) ? 3 : 2), rn);  // VLDR/VSTR: .64 3, .32 2
        }
        return memory(cost(1 + (h2 & 0xff)), rn);      // VLDM/VSTM/VPUSH/VPOP: 1 + N floats,
    }                                                  // 1 + 2N doubles (imm8 counts words)
    if ((h1 & 0xff00) != 0xee00) {
        return cost(1);
    }
    if (h2 & 0x10) {                                   // core <-> extension register transfers
        unsigned a = (h1 >> 5) & 7, c = (h2 >> 8) & 1;
        if (!c && a == 0) {
            return cost(2);                            // VMOV Rt <-> Sn: "one float to/from
        }                                              // one core register" 2
        return cost(1);                                // VMRS/VMSR, VMOV Rt <-> Dd[x]: 1
    }
    unsigned opc1 = ((h1 >> 5) & 4) | ((h1 >> 4) & 3); // bits 23, 21, 20 (22 is D)
    switch (opc1) {
        case 0: case 1:                                // VMLA, VMLS, VNMLA, VNMLS: 3
        case 5: case 6:                                // VFNMA, VFNMS, VFMA, VFMS: 3
            return cost(3);
        case 4:
            return cost(FP_DIVIDE_CYCLES);             // VDIV: 14
        case 7:
            if ((h1 & 0xf) == 1 && ((h2 >> 6) & 3) == 3) {
                return cost(FP_DIVIDE_CYCLES);         // VSQRT: 14
            }
            return cost(1);                            // VMOV, VABS, VNEG, VCMP, VCVT: 1
        default:
            return cost(1);                            // VMUL, VNMUL, VADD, VSUB: 1
    }
}

static m4_cost_t narrow(uint16_t h) {
    unsigned rt = h & 7, rn = (h >> 3) & 7;
    switch (h >> 12) {
        case 0x4:
            if ((h >> 11) == 0x9) {
                return load((h >> 8) & 7, 1u << 15);  // LDR literal
            }
            if ((h & 0xfc00) == 0x4400) {             // special data processing, BX, BLX
                unsigned rd = ((h >> 4) & 8) | (h & 7);
                if ((h & 0xff00) == 0x4700) {
                    return branch(1);                 // BX, BLX: 1 + P
                }
                if ((h & 0xff00) == 0x4500) {
                    return cost(1);                   // CMP (high registers)
                }
                return rd == 15 ? branch(1) : alu(1, rd);  // ADD PC / MOV PC: 1 + P
            }
            {                                         // data processing, MUL: 1
                unsigned op = (h >> 6) & 0xf;         // TST, CMP, CMN write no register
                return (op == 8 || op == 10 || op == 11) ? cost(1) : alu(1, rt);
            }
        case 0x5: {                                   // register offset
            unsigned addr = 1u << rn | 1u << ((h >> 6) & 7);
            return ((h >> 9) & 7) < 3 ? store(addr, 1) : load(rt, addr);
        }
        case 0x6: case 0x7: case 0x8:                 // STR/LDR(B/H) immediate
            return (h & 0x800) ? load(rt, 1u << rn) : store(1u << rn, 0);
        case 0x9:                                     // STR/LDR SP-relative
            return (h & 0x800) ? load((h >> 8) & 7, 1u << 13) : store(1u << 13, 0);
        case 0xa:
            return alu(1, (h >> 8) & 7);              // ADR, ADD Rd, SP, #imm
        case 0xb:
            if ((h & 0xf500) == 0xb100) {
                return conditional_branch();          // CBZ, CBNZ
            }
            if ((h & 0xfe00) == 0xb400) {
                return multiple(bits_set(h & 0x1ff), 0, 13);  // PUSH (bit 8: LR)
            }
            if ((h & 0xfe00) == 0xbc00) {
                return multiple(bits_set(h & 0x1ff), (h >> 8) & 1, 13);  // POP (bit 8: PC)
            }
            if ((h & 0xff00) == 0xbf00 && (h & 0xf)) {
                m4_cost_t c = cost(1);                // IT: 1, or 0 folded (m4_block)
                c.flags = M4_IT;
                return c;
            }
            if ((h & 0xff00) == 0xb000) {
                return alu(1, 13);                    // ADD/SUB SP, SP, #imm
            }
            if ((h & 0xff00) == 0xb200 || (h & 0xff00) == 0xba00) {
                return alu(1, rt);                    // SXTH, SXTB, UXTH, UXTB, REV*
            }
            return cost(1);                           // CPS, hints, BKPT
        case 0xc:
            return multiple(bits_set(h & 0xff), 0, (h >> 8) & 7);  // STM, LDM
        case 0xd:
            return ((h >> 8) & 0xf) < 14 ? conditional_branch() : cost(1);  // B<cc>; UDF, SVC
        case 0xe:
            return branch(1);                         // B
        default:                                      // 0x0-0x3
            if ((h >> 11) == 0x5) {
                return cost(1);                       // CMP #imm8
            }
            return alu(1, (h >> 13) ? (h >> 8) & 7 : rt);  // MOV/ADD/SUB #imm8; shifts, ADD, SUB
    }
}

static m4_cost_t wide(uint16_t h1, uint16_t h2) {
    unsigned op1 = (h1 >> 11) & 3, op2 = (h1 >> 4) & 0x7f;
    unsigned rn = h1 & 0xf, rt = h2 >> 12;
    if (op1 == 1) {
        if ((op2 & 0x64) == 0x00) {                   // LDM, STM, PUSH.W, POP.W
            unsigned l = (h1 >> 4) & 1;
            return multiple(bits_set(h2), l && (h2 & 0x8000), rn);
        }
        if ((op2 & 0x64) == 0x04) {                   // dual, exclusive, table branch
            unsigned o1 = (h1 >> 7) & 3, o2 = (h1 >> 4) & 3, o3 = (h2 >> 4) & 0xf;
            if (o1 == 0 && o2 == 0) {
                return load((h2 >> 8) & 0xf, 1u << rn);  // STREX: pipelines as LDR
            }
            if (o1 == 0 && o2 == 1) {
                return load(rt, 1u << rn);            // LDREX
            }
            if (o1 == 1 && o2 == 1 && o3 <= 1) {
                // TBB/TBH: "at least two cycles for the load, one cycle for the add, and
                // three cycles for the pipeline reload" [3.3.2]; Table 3-1: 2 + P.
                return memory(branch(2), 1u << rn | 1u << (h2 & 0xf));
            }
            if (o1 == 1 && o2 <= 1 && o3 >= 4) {
                return load(o2 ? rt : (h2 & 0xf), 1u << rn);  // LDREXB/H, STREXB/H
            }
            return memory(cost(3), 1u << rn);         // LDRD, STRD: 1 + N, not pipelined
        }
        if ((op2 & 0x60) == 0x20) {
            return alu(1, (h2 >> 8) & 0xf);           // data processing (shifted register)
        }
        return fpu(h1, h2);
    }
    if (op1 == 2) {
        if (!(h2 & 0x8000)) {
            return alu(1, (h2 >> 8) & 0xf);           // data processing (immediate)
        }
        unsigned b = (h2 >> 12) & 5;
        if (b == 1 || b == 5) {
            return branch(1);                         // B.W, BL: 1 + P
        }
        if (b == 0) {
            if ((op2 & 0x38) != 0x38) {
                return conditional_branch();          // B<cc>.W
            }
            if (op2 == 0x3b && ((h2 >> 4) & 0xf) == 6) {
                return branch(1);                     // ISB: 1 + B, B at least a refill
            }
        }
        return cost(1);                               // MSR, MRS, hints, DMB, DSB: 1
    }
    // op1 == 3
    if ((op2 & 0x71) == 0x00) {                       // store single
        int reg = !(h1 & 0x80) && (h2 & 0x0fc0) == 0;
        return store(1u << rn | (reg ? 1u << (h2 & 0xf) : 0u), reg);
    }
    if ((op2 & 0x67) == 0x01 || (op2 & 0x67) == 0x03 || (op2 & 0x67) == 0x05) {
        int word = (op2 & 0x67) == 0x05;
        if (rt == 15) {
            return word ? branch(2) : cost(1);        // LDR PC: 2 + P; PLD, PLI: hint
        }
        int reg = rn != 15 && !(h1 & 0x80) && (h2 & 0x0fc0) == 0;
        return load(rt, 1u << rn | (reg ? 1u << (h2 & 0xf) : 0u));
    }
    unsigned rd = (h2 >> 8) & 0xf;
    if ((op2 & 0x70) == 0x20) {
        return alu(1, rd);                            // data processing (register), SIMD
    }
    if ((op2 & 0x78) == 0x30) {
        // MUL, MLA, MLS and Table 3-2's SMLAxy, SMLAD, SMLAW, SMLSD, SMMLA, SMUAD, USADA8...:
        // all 1 on the M4 (Table 3-1 r0p1 gives MLA and MLS 1; the M3 took 2).
        return alu(1, rd);
    }
    if ((op2 & 0x78) == 0x38) {
        unsigned o1 = (h1 >> 4) & 7, o2 = (h2 >> 4) & 0xf;
        if ((o1 == 1 || o1 == 3) && o2 == 0xf) {
            return alu(DIVIDE_CYCLES, rd);            // SDIV, UDIV
        }
        m4_cost_t c = alu(1, rd);                     // SMULL, UMULL, SMLAL, UMLAL, SMLALD...: 1
        c.wr |= (uint16_t)(1u << rt);                 // RdLo
        return c;
    }
    if (op2 & 0x40) {
        return fpu(h1, h2);
    }
    return cost(1);
}

m4_cost_t m4_decode(uint16_t hw1, uint16_t hw2) {
    if (m4_is_wide(hw1)) {
        return wide(hw1, hw2);
    }
    m4_cost_t c = narrow(hw1);
    c.flags |= M4_NARROW;
    return c;
}

void m4_block(const uint8_t *code, const uint8_t *sizes, size_t n, m4_cost_t *out) {
    unsigned it_left = 0;
    const m4_cost_t *prev = NULL;
    for (size_t i = 0; i < n; code += sizes[i], i++) {
        uint16_t hw1 = (uint16_t)(code[0] | code[1] << 8);
        uint16_t hw2 = sizes[i] == 4 ? (uint16_t)(code[2] | code[3] << 8) : 0;
        m4_cost_t c = m4_decode(hw1, hw2);
        if (c.flags & M4_IT) {
            // [3.3.1] "IT instructions can be folded onto a preceding 16-bit Thumb
            // instruction, enabling execution in zero cycles."
            if (prev && (prev->flags & M4_NARROW)) {
                c.cycles = 0;
            }
            it_left = 4u - (unsigned)__builtin_ctz(hw1 & 0xf);
        } else if (it_left) {
            it_left--;
            if ((c.flags & M4_BRANCH) && !(c.flags & M4_CONDITIONAL)) {
                c.flags |= M4_CONDITIONAL;            // e.g. BXEQ LR, POPNE {..., PC}
                c.cycles = (uint8_t)(c.cycles - c.taken);
            }
        }
        if (prev && (prev->flags & M4_LOAD1) && (c.flags & M4_LDST1) &&
            !(c.addr & (1u << prev->rt)) && c.cycles > 1) {
            c.cycles--;                               // [3.3.2] pipelined behind a load
        }
        if (prev && (c.flags & M4_MEMORY) && (c.addr & prev->wr)) {
            c.cycles++;                               // [3.3.2] address from the last result
        }
        out[i] = c;
        prev = &out[i];
    }
}
