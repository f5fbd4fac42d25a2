"""A short run of the random-call API fuzzer (tests/fuzz/api.py) on the sanitizer build: fixed
seeds, a few thousand calls; only Python exceptions are allowed (no crash, hang or ASan/UBSan
report). `make fuzz` runs the long campaign on every target."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

import api as fuzz_api  # noqa: E402

SAN = ROOT / "build/unix-san/micropython"


@pytest.mark.parametrize("seed", [11, 12])
def test_api_fuzz_unix_san(seed: int, tmp_path: Path) -> None:
    if not SAN.is_file():
        pytest.skip("unix-san firmware not built; run `make firmware-unix-san`")
    out, failures = tmp_path / "api.json", tmp_path / "failures.json"
    status = fuzz_api.main([
        "--calls", "2000", "--targets", "unix-san", "--seed", str(seed), "--minimize-budget", "40",
        "--out", str(out), "--failures", str(failures),
    ])
    (row,) = json.loads(out.read_text())
    found = json.loads(failures.read_text())
    report = "\n".join(
        f"call {f['index']} ({f['kind']}): {f['call']}\n  {f['detail']}\n  reproducer: {f['minimized'] or f['call']}"
        for f in found)
    assert row["runs"] >= 2000
    assert row["python_exceptions"] > 0  # hostile arguments were tried and refused
    assert (row["crashes"], row["hangs"], row["sanitizer_reports"]) == (0, 0, 0), report
    assert status == 0
