"""The Cortex-M4 cycle model (tools/cycle-model/): its table on known encodings, and the
QEMU plugin's cycles on qemu-m4f for loops whose cost follows from the TRM by hand.

Expected values cite ARM DDI 0439B (Cortex-M4 TRM r0p1): Table 3-1 [3.3.1], the load/store
pipelining rules [3.3.2] and the FPU Table 7-1 [7.2.3]; P (pipeline refill, "1 to 3") is 2.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from mcutrain.boards import get_board  # noqa: E402
from mcutrain.cycle_model import CycleModel  # noqa: E402
from mcutrain.runner import open_target, run_on  # noqa: E402

SOURCE = ROOT / "tools" / "cycle-model"
P = 2


class Cost(ctypes.Structure):
    _fields_ = [("cycles", ctypes.c_uint8), ("taken", ctypes.c_uint8), ("flags", ctypes.c_uint8),
                ("rt", ctypes.c_uint8), ("addr", ctypes.c_uint16), ("wr", ctypes.c_uint16)]


BRANCH, CONDITIONAL, LOAD1 = 0x01, 0x02, 0x04


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """m4_cycles.c alone, built for the host as a plain shared library."""
    lib = tmp_path_factory.mktemp("m4table") / "libm4table.so"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-fPIC", "-shared", "-o", str(lib),
                    str(SOURCE / "m4_cycles.c")], check=True)
    dll = ctypes.CDLL(str(lib))
    dll.m4_decode.restype = Cost
    dll.m4_decode.argtypes = [ctypes.c_uint16, ctypes.c_uint16]
    dll.m4_block.restype = None
    dll.m4_block.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(Cost)]
    return dll


# (assembly, first halfword, second halfword or None, cycles, taken penalty when conditional)
ENCODINGS = [
    ("adds r0, r0, #1", 0x1C40, None, 1, 0),                 # 3.3.1 Add: 1
    ("muls r0, r1", 0x4348, None, 1, 0),                     # Multiply: 1
    ("mla r0, r1, r2, r3", 0xFB01, 0x3002, 1, 0),            # Multiply accumulate: 1 (r0p1)
    ("mls r0, r1, r2, r3", 0xFB01, 0x3012, 1, 0),            # Multiply subtract: 1
    ("smull r0, r1, r2, r3", 0xFB82, 0x0103, 1, 0),          # Long signed: 1
    ("umlal r0, r1, r2, r3", 0xFBE2, 0x0103, 1, 0),          # Long unsigned accumulate: 1
    ("smlad r0, r1, r2, r3", 0xFB21, 0x3002, 1, 0),          # Table 3-2: 1
    ("smlabb r0, r1, r2, r3", 0xFB11, 0x3002, 1, 0),         # Table 3-2: 1
    ("sxtb16 r0, r1", 0xFA2F, 0xF081, 1, 0),                 # Table 3-2: 1
    ("sadd16 r0, r1, r2", 0xFA91, 0xF002, 1, 0),             # Table 3-2: 1
    ("sdiv r0, r1, r2", 0xFB91, 0xF0F2, 12, 0),              # Divide: 2 to 12, upper bound
    ("udiv r0, r1, r2", 0xFBB1, 0xF0F2, 12, 0),
    ("ldr r0, [r1]", 0x6808, None, 2, 0),                    # Load word: 2
    ("ldrb r0, [r1, r2]", 0x5C88, None, 2, 0),
    ("ldr.w r0, [r1, #4]", 0xF8D1, 0x0004, 2, 0),
    ("str r0, [r1]", 0x6008, None, 1, 0),                    # 3.3.2 STR Rx,[Ry,#imm]: always 1
    ("str r0, [r1, r2]", 0x5088, None, 2, 0),                # register offset: 2
    ("ldrd r0, r1, [r2]", 0xE9D2, 0x0100, 3, 0),             # Doubleword: 1 + N
    ("ldmia r0!, {r1-r4}", 0xC81E, None, 5, 0),              # Multiple: 1 + N
    ("push {r4-r7, lr}", 0xB5F0, None, 6, 0),                # Push: 1 + N
    ("pop {r4-r7, pc}", 0xBDF0, None, 6 + P, 0),             # Pop and return: 1 + N + P
    ("ldr pc, [sp], #4", 0xF85D, 0xFB04, 2 + P, 0),          # Load to PC: 2 + P
    ("bx lr", 0x4770, None, 1 + P, 0),                       # BX: 1 + P
    ("bl .", 0xF7FF, 0xFFFE, 1 + P, 0),                      # BL: 1 + P
    ("b.n .", 0xE7FE, None, 1 + P, 0),                       # B: 1 + P
    ("bne.n .", 0xD1FE, None, 1, P),                         # B<cc>: 1 or 1 + P
    ("beq.w .", 0xF43F, 0xAFFE, 1, P),
    ("cbz r0, .+4", 0xB100, None, 1, P),                     # CBZ: 1 or 1 + P
    ("tbb [pc, r0]", 0xE8DF, 0xF000, 2 + P, 0),              # TBB: 2 + P
    ("vadd.f32 s0, s1, s0", 0xEE30, 0x0A80, 1, 0),           # 7.2.3 Addition: 1
    ("vmul.f32 s0, s1, s0", 0xEE20, 0x0A80, 1, 0),           # Multiply: 1
    ("vmla.f32 s0, s1, s2", 0xEE00, 0x0A81, 3, 0),           # then accumulate: 3
    ("vfma.f32 s0, s1, s2", 0xEEA0, 0x0A81, 3, 0),           # fused: 3
    ("vdiv.f32 s0, s1, s0", 0xEE80, 0x0A80, 14, 0),          # Divide: 14
    ("vsqrt.f32 s0, s1", 0xEEB1, 0x0AE0, 14, 0),             # Square root: 14
    ("vcvt.f32.s32 s0, s0", 0xEEB8, 0x0AC0, 1, 0),           # Convert: 1
    ("vldr s0, [r0]", 0xED90, 0x0A00, 2, 0),                 # Load single float: 2
    ("vldr d0, [r0]", 0xED90, 0x0B00, 3, 0),                 # single double: 3
    ("vstr s0, [r0]", 0xED80, 0x0A00, 2, 0),
    ("vldmia r0!, {s0-s15}", 0xECB0, 0x0A10, 17, 0),         # multiple floats: 1 + N
    ("vpush {d8-d15}", 0xED2D, 0x8B10, 17, 0),               # doubles: 1 + 2N
    ("vmov r0, s0", 0xEE10, 0x0A10, 2, 0),                   # one float to core register: 2
    ("vmrs APSR_nzcv, fpscr", 0xEEF1, 0xFA10, 1, 0),         # status to core register: 1
]


@pytest.mark.parametrize("asm,hw1,hw2,cycles,taken", ENCODINGS, ids=[e[0] for e in ENCODINGS])
def test_table_costs_each_encoding_as_the_trm(table, asm, hw1, hw2, cycles, taken):
    c = table.m4_decode(hw1, hw2 or 0)
    assert c.cycles == cycles, asm
    assert bool(c.flags & CONDITIONAL) == bool(taken), asm
    if taken:
        assert c.taken == taken, asm


def block(table, halfwords: list[list[int]]) -> list[Cost]:
    code = b"".join(h.to_bytes(2, "little") for insn in halfwords for h in insn)
    sizes = bytes(2 * len(insn) for insn in halfwords)
    out = (Cost * len(halfwords))()
    table.m4_block(code, sizes, len(halfwords), out)
    return list(out)


def test_neighbouring_loads_pipeline_as_the_trm_examples(table):
    # 3.3.2: "LDR R0,[R1,R5]; LDR R1,[R2]; LDR R2,[R3,#4] - normally four cycles total"
    assert sum(c.cycles for c in block(table, [[0x5948], [0x6811], [0x685A]])) == 4
    # "LDR R0,[R1,R2]; STR R0,[R3,#20] - normally three cycles total"
    assert sum(c.cycles for c in block(table, [[0x5888], [0x6158]])) == 3
    # "LDR R0,[R1,R2]; STR R1,[R3,R2] - normally three cycles total"
    assert sum(c.cycles for c in block(table, [[0x5888], [0x5099]])) == 3
    # not when the first load's result is the next one's address: ldr r0,[r1]; ldr r1,[r0]
    assert sum(c.cycles for c in block(table, [[0x6808], [0x6801]])) == 4


def test_an_address_from_the_previous_result_stalls_a_cycle(table):
    # 3.3.2: "Any load or store that generates an address dependent on the result of a
    # preceding data processing operation stalls the pipeline for an additional cycle"
    assert [c.cycles for c in block(table, [[0x3104], [0x6808]])] == [1, 3]  # adds r1, #4; ldr r0, [r1]
    assert [c.cycles for c in block(table, [[0x3204], [0x6808]])] == [1, 2]  # adds r2, #4; ldr r0, [r1]
    # add.w r1, r1, r2; str r0, [r1]: 1 + 1;  adds r1, #4; vldr s0, [r1]: 2 + 1
    assert [c.cycles for c in block(table, [[0xEB01, 0x0102], [0x6008]])] == [1, 2]
    assert [c.cycles for c in block(table, [[0x3104], [0xED91, 0x0A00]])] == [1, 3]
    # cmp r1, #4 writes no register: no stall
    assert [c.cycles for c in block(table, [[0x2904], [0x6808]])] == [1, 2]


def test_it_folds_and_makes_its_branch_conditional(table):
    # cmp r0, #0; it eq; bxeq lr: IT folds onto the 16-bit CMP, BXEQ is 1, or 1 + P taken
    cmp, it, bx = block(table, [[0x2800], [0xBF08], [0x4770]])
    assert (cmp.cycles, it.cycles, bx.cycles, bx.taken) == (1, 0, 1, P)
    assert bx.flags & CONDITIONAL
    # after a 32-bit instruction the IT costs its cycle
    assert block(table, [[0xF1B0, 0x0F00], [0xBF08], [0x4770]])[1].cycles == 1


# Loops on qemu-m4f: r0 iterations of a body of known cost, then `sub r0, 1; bne loop`
# (1 + 1 + P per iteration, the last one not taken). The difference of two runs, 1000
# iterations apart, is 1000 times the iteration's cost: exact, whatever the call costs.
def raw(*halfwords: int) -> str:
    return "    data(2, " + ", ".join(hex(h) for h in halfwords) + ")\n"


LOOPS = {
    # name: (body, instructions per iteration, cycles per iteration)
    "alu": ("    add(r2, r2, r1)\n    mov(r3, r2)\n", 4, 2 + 1 + 1 + P),
    # three pipelined loads (2 + 1 + 1), a store after a load (1), LDM of two (1 + 2)
    "memory": ("    ldr(r2, [r1, 0])\n    ldr(r3, [r1, 4])\n    ldr(r2, [r1, 8])\n"
               "    str(r3, [r1, 12])\n" + raw(0xC90C) + "    sub(r1, 8)\n",   # ldmia r1!, {r2, r3}
               8, 4 + 1 + 3 + 1 + 1 + 1 + P),
    # four VFMA.F32 (3 each), a VLDR (2), a VADD (1)
    "fpu": (raw(0xEEA0, 0x0A81) * 4 + "    vldr(s3, [r1, 0])\n    vadd(s4, s4, s3)\n",
            8, 12 + 2 + 1 + 1 + 1 + P),
    # four SMLAD (1 each), an SDIV (12), a conditional branch never taken (1)
    "dsp": (raw(0xFB22, 0x2303) * 4 + raw(0xFB92, 0xF3F3) + "    cmp(r0, 0)\n    beq(done)\n",
            9, 4 + 12 + 1 + 1 + 1 + 1 + P),
}


def loop_function(name: str, body: str) -> str:
    return (f"@micropython.asm_thumb\ndef {name}(r0, r1):\n"
            "    label(loop)\n" + body + "    sub(r0, r0, 1)\n    bne(loop)\n    label(done)\n")


@pytest.fixture(scope="module")
def m4f_cycles():
    firmware = get_board("qemu-m4f").firmware_path()
    if not firmware.is_file():
        pytest.skip("qemu-m4f firmware not built; run `make firmware-qemu-m4f`")
    subprocess.run(["make", "-s", "-C", str(ROOT), "cycle-model"], check=True)
    model = CycleModel(firmware)
    with open_target("qemu-m4f", qemu_args=model.qemu_args()) as target:
        yield model, target
    model.close()


def test_plugin_regions_are_the_perf_counter_regions_and_loop_cycles_match_the_trm(m4f_cycles):
    model, target = m4f_cycles
    code = "import array, gc, micropython\nimport mcutrain as mt\n"
    code += "".join(loop_function(name, body) for name, (body, _, _) in LOOPS.items())
    code += """
buf = array.array('f', [1.5] * 8)
def cost(f, k):
    gc.collect()  # no collection inside a measured region (docs: measure after gc.collect())
    t0 = mt.perf_counter()
    f(k, buf)
    return mt.perf_counter() - t0
for f in (%s):
    cost(f, 1)  # warm-up: the bytecode's lookup caches
    print(cost(f, 1000), cost(f, 2000))
""" % ", ".join(LOOPS)
    out = run_on(target, code)
    rows = [tuple(map(int, line.split())) for line in out.splitlines()]
    regions = model.regions()
    start = 0
    for (name, (_, insns, cycles)), (short, long) in zip(LOOPS.items(), rows):
        assert long - short == 1000 * insns, name
        # Each perf_counter() difference is exactly one plugin region (same instructions).
        c_short, c_long = model.cycles_for([short, long], start)
        start = model.matched
        assert c_long - c_short == 1000 * cycles, (name, c_long - c_short, 1000 * cycles)
    assert len(regions) >= 2 * len(LOOPS)
