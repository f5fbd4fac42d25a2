"""The examples run as documented on every target."""

from __future__ import annotations

import pytest

import mcutrain

from conftest import ROOT

HELLO = ROOT / "examples" / "hello.py"


def test_examples_hello_reports_board_and_dot_cost(target):
    out = target.run_file(HELLO).splitlines()
    assert out[0].startswith(f"mcutrain {mcutrain.__version__} on ")
    if target.board.emulated:
        assert target.name in out[0]
    label, value = out[1].split(" = ")
    assert label == "dot of 64 floats"
    # The exact fp32 sum is 10.6640625. The emulated boards' Python floats are packed in
    # 30 bits and print 6 significant digits (10.6641), so allow half a unit of the 6th.
    assert float(value) == pytest.approx(10.6640625, rel=5e-6)
    assert out[2].split()[2] == ("instructions" if target.board.emulated else "ns")
    assert out[3].startswith("pure MicroPython took ")


def test_bench_memory_table_is_the_same_on_every_target(target):
    # README's memory table: model.memory() depends on shapes and dtypes, not on the target.
    rows = [line for line in target.run_file(ROOT / "bench" / "memory.py", timeout=120).splitlines()
            if line.startswith("| ") and "B" in line]
    assert len(rows) == 8, rows
    for row in rows:
        name, batch, fp32, f16, i8 = (cell.strip() for cell in row.strip("|").split("|"))
        total = int(fp32.split()[0].replace(",", ""))
        for cell in (f16, i8):
            n, ratio = int(cell.split()[0].replace(",", "")), float(cell.split("(")[1].rstrip("x)"))
            assert ratio == pytest.approx(n / total, abs=0.005) and ratio < 1, row
    expected = ROOT / "README.md"
    assert all(row in expected.read_text() for row in rows), "README memory table is stale"
