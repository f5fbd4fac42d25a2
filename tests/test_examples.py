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
    # Single-precision firmware prints 7 significant digits; the exact fp32 sum is 10.6640625.
    assert float(value) == pytest.approx(10.6640625, rel=1e-6)
    assert out[2].split()[2] == ("instructions" if target.board.emulated else "ns")
    assert out[3].startswith("pure MicroPython took ")
