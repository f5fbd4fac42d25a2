"""`perf_counter()`: exact instruction counts on the emulated boards, ns on unix."""

from __future__ import annotations

from mcutrain.runner import run_on

EXPECTED_UNIT = {"unix": "ns", "qemu-m4f": "instructions", "qemu-rv32": "instructions",
                 "qemu-rv32f": "instructions"}


def test_perf_unit_says_what_perf_counter_counts(target):
    out = run_on(target, "import mcutrain as mt; print(mt.PERF_UNIT, mt.perf_counter() > 0)")
    assert out.split() == [EXPECTED_UNIT[target.name], "True"]


def test_same_work_measured_twice_costs_identical_instructions(emulated):
    code = """
import array, gc, mcutrain as mt

def measure(n):
    a = array.array('f', range(n))
    b = array.array('f', range(n))
    # Same heap state before each measurement: allocating a result costs more or fewer
    # instructions depending on where the allocator finds room.
    gc.collect()
    start = mt.perf_counter()
    mt.dot(a, b)
    return mt.perf_counter() - start

measure(100)  # warm-up: the first pass fills the bytecode's attribute-lookup caches
print(measure(100), measure(100), measure(100), measure(1000))
"""
    first, second, third, longer = map(int, run_on(emulated, code).split())
    assert first == second == third
    # 900 more multiply-adds need at least one more instruction each.
    assert longer - first >= 900


# A loop of exactly two instructions an iteration, in each board's inline assembler.
SPIN_LOOP = {
    "qemu-m4f": """
@micropython.asm_thumb
def spin(r0):
    label(loop)
    sub(r0, r0, 1)
    bne(loop)
""",
    "qemu-rv32": """
@micropython.asm_rv32
def spin(a0):
    label(loop)
    addi(a0, a0, -1)
    bne(a0, zero, loop)
""",
}
SPIN_LOOP["qemu-rv32f"] = SPIN_LOOP["qemu-rv32"]


def test_perf_counter_counts_every_instruction_exactly(emulated):
    # k more iterations must cost exactly 2k more instructions, whatever the phase of the
    # board's timer when measuring starts (the M4F's timer ticks every 40 instructions).
    code = SPIN_LOOP[emulated.name] + """
import mcutrain as mt

def cost(k):
    start = mt.perf_counter()
    spin(k)
    return mt.perf_counter() - start

cost(1)  # warm-up: fills the bytecode's lookup caches
extra = []
for phase in range(1, 41):
    spin(phase)  # shift the start by a different number of instructions each time
    # Both measurements from one call site: MicroPython's map-lookup cache is indexed by
    # bytecode position, so two sites can evict each other depending on the heap layout
    # and cost one of them extra instructions that are not spin's.
    c = [cost(k) for k in (1000 + phase, 1000)]
    extra.append(c[0] - c[1])
print(extra == [2 * phase for phase in range(1, 41)], extra[:5])
"""
    out = run_on(emulated, code)
    assert out.startswith("True"), out
