"""A short run of the file fuzzers (the long one is `make fuzz`: tests/fuzz/files.py and
tests/fuzz/power_loss.py): mutated .mtm/.mtd files give the host readers and the device loaders
on unix-san nothing but FormatError, both accept the same files, and mt.save survives a few
power cuts on qemu-m4f."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest
from conftest import require_firmware
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = Path(__file__).resolve().parent / "fuzz"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


files = _module("files")
SEEDS = files.seed_files()
SETTINGS = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))  # fmt: skip


def _host_only_format_errors(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / ("m." + name.rsplit(".", 1)[1])
    path.write_bytes(data)
    verdict = files.host_verdict(path)
    assert not verdict.startswith("E"), f"{name}: {verdict}"


@SETTINGS
@given(name=st.sampled_from(sorted(SEEDS)), seed=st.integers(0, 2**32 - 1))
def test_host_readers_raise_only_format_error_for_mutants(tmp_path_factory, name, seed):
    data, _ = files.mutate(name, SEEDS[name], random.Random(seed))
    _host_only_format_errors(tmp_path_factory.mktemp("m"), name, data)


@SETTINGS
@given(name=st.sampled_from(sorted(SEEDS)),
       edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 10**6)),
       fix_crcs=st.booleans())  # fmt: skip
def test_host_readers_raise_only_format_error_for_byte_edits(tmp_path_factory, name, edits, cut,
                                                             fix_crcs):  # fmt: skip
    b = bytearray(SEEDS[name])
    for pos, value in edits:
        b[pos % len(b)] = value
    if cut is not None:
        del b[cut % (len(b) + 1) :]
    data = bytes(b)
    if fix_crcs:
        data = (files.fix_mtm_crcs if name.endswith(".mtm") else files.fix_mtd_crcs)(data)
    _host_only_format_errors(tmp_path_factory.mktemp("b"), name, data)


def test_seed_files_are_valid_on_the_host(tmp_path):
    for name, data in SEEDS.items():
        (tmp_path / name).write_bytes(data)
        assert files.host_verdict(tmp_path / name) == "A", name


def test_device_loaders_on_unix_san_agree_with_host_and_raise_only_format_error(tmp_path):
    if not files.SANITIZED.is_file():
        pytest.skip("run `make firmware-unix-san`")
    rows = files.fuzz(3000, ["unix-san"], seed=15, directory=tmp_path, verbose=False)
    for row in rows:
        d = row.as_dict()
        assert (row.crashes, row.hangs, row.sanitizer_reports, row.python_exceptions,
                row.verdict_mismatches) == (0, 0, 0, 0, 0), d  # fmt: skip
    assert rows[1].runs == 3000
    accepted = int(str(rows[0].notes[0]).split()[0])
    assert 200 < accepted < 2800  # mutants reach both verdicts


def test_save_is_old_or_new_after_power_cuts_on_qemu_m4f(tmp_path):
    require_firmware("qemu-m4f")
    power_loss = _module("power_loss")
    row = power_loss.run_board("qemu-m4f", 3, random.Random(2), tmp_path)
    assert row["runs"] == 3 and row["crashes"] == 0 and row["python_exceptions"] == 0, row
    assert row["violations"] == 0, row
