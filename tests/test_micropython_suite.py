"""MicroPython's own tests (tests/basics of the pinned source) pass on the emulated boards.

A curated subset by default: the language core plus what our port provides itself (heap and
MemoryError, sys.stdout/stdin buffers, big ints, buffers and struct for our arrays). The
whole basics directory (about 530 tests, ~25 s per board) runs with --all-basics.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT

MICROPYTHON_TESTS = ROOT / ".cache" / "micropython-1.25.0" / "tests"

BASICS = """
0prelim andor array1 array_construct array_micropython assign_expr async_await async_for
async_with builtin_eval builtin_exec builtin_minmax builtin_pow3_intbig builtin_round
builtin_sorted builtin_zip bytearray1 bytearray_slice_assign bytes bytes_format_modulo
bytes_large class_descriptor class_inherit_mul class_super closure_manyvars deque1 dict1
dict_views except_match_tuple exception1 fun_kwvarargs fun_largestate gc1
gen_yield_from_throw generator_pend_throw generator_send int_big_div int_big_mul int_big_pow
int_bytes int_divzero int_small io_bytesio_ext io_stringio1 lambda1 list_slice_assign_grow
list_sort memoryerror memoryview1 memoryview_slice_assign namedtuple1 ordereddict1 python36
scope_class set_binop special_methods string_format string_format_modulo string_fstring
string_large string_split struct1 struct_micropython subclass_native_buffer sys1 sys_exit
sys_stdio_buffer try_finally_loops with_raise
""".split()


def test_micropython_basics_pass_on_emulated_board(emulated, tmp_path, request):
    if not (MICROPYTHON_TESTS / "run-tests.py").is_file():
        pytest.skip(f"no MicroPython source at {MICROPYTHON_TESTS.parent} (run `make fetch`)")
    if request.config.getoption("all_basics"):
        selection, expected = ["-d", "basics"], None
    else:
        selection, expected = [f"basics/{name}.py" for name in BASICS], len(BASICS)
    emulator = emulated.emulator
    device = emulator.start().device
    emulator.drain_uart()
    env = os.environ | {"MICROPY_CPYTHON3": sys.executable}  # expected output, where no .exp
    done = subprocess.run(
        [sys.executable, "run-tests.py", "-t", device, "-r", str(tmp_path), *selection],
        cwd=MICROPYTHON_TESTS, env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    emulator.drain_uart()
    diffs = "".join(
        f"\n--- {out.name}\n{out.read_text(errors='replace')}" for out in tmp_path.glob("*.out")
    )
    assert done.returncode == 0, done.stdout + done.stderr + diffs
    summary = done.stdout.splitlines()
    passed = next(line for line in summary if line.endswith(" tests passed"))
    if expected is not None:
        assert passed == f"{expected} tests passed", done.stdout
