"""The CLI's host commands end to end: run with live collection, plot, info, push-dataset,
export / push-model / pull. Most use the session's emulated qemu-m4f through --device (no
boot per test); one boots the default board on demand, as a user's first command does."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT, host_env, is_running, require_firmware
from mcutrain.collect import Collector, parse_metrics_line, write_csv
from mcutrain.plot import plot_records
from test_cli import qemu_pids_using

TRAIN_SCRIPT = """
from mcutrain.metrics import Metrics, report
import time
print("hello from the board")
m = Metrics(every=2, model="toy")
loss = 2.0
for epoch in range(2):
    for i in range(6):
        loss *= 0.9
        time.sleep_ms(2)
        m.step(loss, accuracy=1 - loss / 2)
    m.epoch(val_loss=loss, val_accuracy=0.5 + epoch / 4)
report(kind="note", diverged=float("nan"))
m.done()
print("bye")
"""


def mcutrain_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcutrain", *args],
        capture_output=True, text=True, timeout=timeout, env=host_env(), cwd=ROOT,
    )  # fmt: skip


@pytest.fixture
def m4f(target_pool):
    """The session's qemu-m4f, and a CLI runner that drives it through --device."""
    target = target_pool.get("qemu-m4f")
    emulator = target.emulator

    def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        emulator.drain_uart()
        try:
            return mcutrain_cli(*args, "--device", emulator.device, timeout=timeout)
        finally:
            emulator.drain_uart()

    return SimpleNamespace(cli=cli, exec=target.exec)


# -- collection and plots, host side only --------------------------------------------------


def test_metrics_line_parses_micropython_nan_and_inf():
    record = parse_metrics_line('@mt {"kind": "step", "loss": nan, "g": -inf, "s": "nan"}')
    assert record is not None and record["s"] == "nan"
    assert np.isnan(record["loss"]) and record["g"] == -np.inf
    assert parse_metrics_line("@mt not json") is None
    assert parse_metrics_line("plain output") is None


def test_collector_passes_output_through_and_writes_jsonl_and_csv(tmp_path):
    out, status = io.StringIO(), io.StringIO()
    c = Collector(tmp_path, out=out, status=status)
    for line in ["hi", '@mt {"kind": "step", "step": 1, "loss": 1.5, "t": 0.5}',
                 '@mt {"kind": "step", "step": 3, "loss": 1.0, "t": 1.5, "lr": 0.1}',
                 '@mt {"kind": "epoch", "epoch": 0, "step": 3, "accuracy": 0.75}']:  # fmt: skip
        c.feed(line)
    c.close()
    assert out.getvalue() == "hi\n"
    assert c.rate == pytest.approx(2.0)  # 2 steps in 1 s of board time
    assert status.getvalue() == "epoch 0  step 3  acc 75.0%\n"  # not a tty: epochs only
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert list(rows[0]) == ["kind", "epoch", "step", "loss", "accuracy", "t", "lr"]
    assert rows[1]["lr"] == "0.1" and rows[0]["lr"] == ""
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 3
    assert not (tmp_path / "summary.json").exists()  # no `done` line: the run did not finish


def test_plot_writes_loss_accuracy_and_time_per_step_pngs(tmp_path):
    records = [{"kind": "step", "step": s, "loss": 1 / s, "accuracy": s / 10, "dt_ms": 5.0}
               for s in range(1, 10)] + [{"kind": "epoch", "step": 9, "val_loss": 0.2}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    done = mcutrain_cli("plot", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for name in ("loss.png", "accuracy.png", "time_per_step.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(tmp_path / name) in done.stdout


def test_plot_says_when_time_is_emulated():
    from mcutrain.plot import titles

    steps = [{"kind": "step", "step": 1, "dt_ms": 5.0}]
    assert titles(steps)["time_per_step.png"] == ("Time per step", "ms per step")
    title, ylabel = titles([{"kind": "start", "clock": "emulated"}, *steps])["time_per_step.png"]
    assert "emulated" in title and "instructions as ns" in title
    assert ylabel == "emulated ms per step (1 instruction = 1 ns)"
    assert titles([{"kind": "done", "clock": "real"}])["time_per_step.png"][1] == "ms per step"


def test_plot_skips_plots_without_data(tmp_path):
    written = plot_records([{"kind": "step", "step": 1, "loss": 1.0}], tmp_path)
    assert [p.name for p in written] == ["loss.png"]


def test_accuracy_plot_draws_the_starting_models_accuracy_alone_too(tmp_path):
    # An adaptation run with no epoch yet still has its before-training score to show.
    written = plot_records([{"kind": "done", "step": 0, "accuracy_before": 0.8}], tmp_path)
    assert [p.name for p in written] == ["accuracy.png"]


def test_csv_writes_nested_values_as_json(tmp_path):
    write_csv([{"kind": "start", "shape": [1, 2]}], tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().splitlines()[1] == 'start,"[1, 2]"'


# -- against boards -------------------------------------------------------------------------


def test_run_collect_on_emulated_board_writes_results_and_passes_output(m4f, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    done = m4f.cli("run", str(script), "--collect", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hello from the board", "bye"]
    assert "epoch 1  step 12  val_loss" in done.stderr  # progress, one line per epoch
    records = [json.loads(line) for line in open(tmp_path / "out" / "results.jsonl")]
    kinds = [r["kind"] for r in records]
    assert kinds == ["start"] + ["step"] * 3 + ["epoch"] + ["step"] * 3 + ["epoch", "note", "done"]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [2, 4, 6, 8, 10, 12]
    assert all(r["dt_ms"] >= 2 for r in steps)  # each step slept 2 ms of board time
    assert steps[-1]["loss"] == pytest.approx(2 * 0.9**12, rel=1e-5)  # float32 on the board
    assert np.isnan(records[-2]["diverged"])
    assert records[0]["clock"] == records[-1]["clock"] == "emulated"  # plots say so
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert len(rows) == len(records) and rows[1]["loss"] != ""
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == {k: v for k, v in records[-1].items() if k != "kind"}  # the done line

    plotted = mcutrain_cli("plot", str(tmp_path / "out"))
    assert plotted.returncode == 0, plotted.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 3


def test_run_json_prints_only_records_on_stdout(tmp_path):
    require_firmware("unix")
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    done = mcutrain_cli("run", str(script), "--board", "unix", "--json")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert records[0] == {"kind": "start", "model": "toy", "clock": "real"}
    assert "hello from the board" in done.stderr


def test_info_prints_firmware_board_heap_and_features(m4f):
    done = m4f.cli("info")
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(":", 1) for line in done.stdout.splitlines())
    assert fields["machine"].strip().startswith("qemu-m4f")
    assert fields["firmware"].strip() == "MicroPython 1.25.0 (qemu)"
    assert fields["mcutrain"].strip() == "0.1.0"
    assert "of 256" in fields["heap free"]  # the board's default 256 KB heap
    assert "perf_counter" in fields["module"]
    as_json = json.loads(m4f.cli("info", "--json").stdout)
    assert 0 < as_json["heap_free"] < as_json["heap_total"] <= 256 * 1024
    assert as_json["float"] == "single"


@pytest.fixture
def small_npz(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "toy.npz"
    np.savez(path, x=rng.normal(size=(120, 6, 6, 1)).astype(np.float32),
             y=rng.integers(0, 3, 120), class_names=np.array(["a", "b", "c"]))  # fmt: skip
    return path


def test_push_dataset_boots_default_board_converts_copies_and_stops_it(small_npz, tmp_path):
    flash = tmp_path / "flash.img"
    saved = tmp_path / "toy.mtd"
    done = mcutrain_cli("push-dataset", str(small_npz), "--dtype", "int8",
                        "--flash", str(flash), "--save", str(saved), "--dest", "data/toy.mtd")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "120 samples of (6, 6, 1) int8 (scale" in done.stdout
    assert "to data/toy.mtd" in done.stdout and "sha256 verified on the board" in done.stdout
    assert "100.0%" in done.stderr  # the progress bar finished
    assert qemu_pids_using(flash) == []  # the board started for the command has stopped

    # On the board (the same flash image, booted again), the dataset reader opens it.
    from mcutrain.emulator import Emulator

    with Emulator("qemu-m4f", flash=flash) as emu:
        out = emu.exec(
            "from mcutrain.dataset import Dataset\nimport hashlib, binascii\n"
            "d = Dataset('/flash/data/toy.mtd')\nprint(len(d), d.dtype, d.num_classes)\n"
            "print(binascii.hexlify(hashlib.sha256(open('/flash/data/toy.mtd','rb').read())"
            ".digest()).decode())"
        )
    assert out.splitlines() == ["120 int8 3", hashlib.sha256(saved.read_bytes()).hexdigest()]


def test_push_dataset_to_a_name_on_the_board_asks_for_force(m4f, small_npz, tmp_path):
    dest = f"force-{tmp_path.name[-12:]}.mtd"  # unique: the session board's flash outlives tests
    first = m4f.cli("push-dataset", str(small_npz), "--dest", dest)
    assert first.returncode == 0, first.stderr
    same = m4f.cli("push-dataset", str(small_npz), "--dest", dest)  # compared by sha256
    assert same.returncode == 0, same.stderr
    assert f"{dest} is already on the board with the same content: nothing sent" in same.stdout
    again = m4f.cli("push-dataset", str(small_npz), "--dest", dest, "--dtype", "int8",
                    "--save", str(tmp_path / "int8.mtd"))  # fmt: skip
    assert again.returncode == 1
    assert again.stderr.startswith(f"mcutrain: error: {dest} is already on the board (")
    assert again.stderr.count("\n") == 1 and "pass --force to replace it" in again.stderr
    forced = m4f.cli("push-dataset", str(small_npz), "--dest", dest, "--dtype", "int8", "--force")
    assert forced.returncode == 0, forced.stderr
    out = m4f.exec(f"import os\nprint(os.stat({dest!r})[6])\nos.remove({dest!r})")
    assert int(out.split()[-1]) == (tmp_path / "int8.mtd").stat().st_size


def test_push_dataset_stream_serves_file_through_mount(m4f, small_npz, tmp_path):
    saved = tmp_path / "served" / "toy.mtd"
    saved.parent.mkdir()
    done = m4f.cli("push-dataset", str(small_npz), "--stream", "--save", str(saved))
    assert done.returncode == 0, done.stderr
    assert "open('/remote/toy.mtd', 'rb')" in done.stdout
    assert f"the board sees /remote/toy.mtd ({saved.stat().st_size / 1024:.1f} KB)" in done.stdout
    assert f"mcutrain run SCRIPT --mount {saved.parent}" in done.stdout


def test_push_dataset_to_unix_board_writes_host_file(small_npz, tmp_path):
    dest = tmp_path / "out" / "toy.mtd"
    done = mcutrain_cli("push-dataset", str(small_npz), "--board", "unix", "--dest", str(dest))
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes()[:4] == b"MTD\0"


def test_push_dataset_reports_unknown_source_clearly(tmp_path):
    bad = tmp_path / "data.txt"
    bad.write_text("?")
    done = mcutrain_cli("push-dataset", str(bad), "--board", "unix")
    assert done.returncode == 1
    assert "unknown dataset source" in done.stderr and "Traceback" not in done.stderr


GRAPH = {"model": {"type": "Sequential", "layers": [
    {"type": "Flatten", "config": {}},
    {"type": "Linear", "config": {"in_features": 12, "out_features": 3, "bias": True}}]},
    "input_shape": [4, 3]}  # fmt: skip


def test_export_push_model_and_pull_round_trip(m4f, tmp_path):
    rng = np.random.default_rng(3)
    weights = {"1.weight": rng.normal(size=(3, 12)).astype(np.float32),
               "1.bias": rng.normal(size=3).astype(np.float32)}  # fmt: skip
    np.savez(tmp_path / "w.npz", **weights)
    (tmp_path / "g.json").write_text(json.dumps(GRAPH))

    exported = mcutrain_cli("export", str(tmp_path / "w.npz"), str(tmp_path / "w.mtm"),
                            "--graph", str(tmp_path / "g.json"))  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert "2 tensors, 39 parameters" in exported.stdout

    pushed = m4f.cli("push-model", str(tmp_path / "w.npz"), "--graph", str(tmp_path / "g.json"),
                     "--dest", "m/w.mtm")  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    assert "to m/w.mtm" in pushed.stdout

    pulled = m4f.cli("pull", "m/w.mtm", str(tmp_path / "back.mtm"))
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "back.mtm").read_bytes() == (tmp_path / "w.mtm").read_bytes()
    pulled = m4f.cli("pull", "m/w.mtm", str(tmp_path / "back.npz"))
    assert pulled.returncode == 0, pulled.stderr
    with np.load(tmp_path / "back.npz") as z:
        for name, w in weights.items():
            np.testing.assert_array_equal(z[name], w)  # float32 stored exactly

    missing = m4f.cli("pull", "m/nothing.mtm", str(tmp_path / "x.mtm"))
    assert missing.returncode == 1
    assert "no such file on the board: m/nothing.mtm" in missing.stderr
    m4f.exec("import os\nfor p in ('m/w.mtm',): os.remove(p)")


def test_run_without_device_stops_the_board_it_started(tmp_path):
    require_firmware("qemu-m4f")
    flash = tmp_path / "flash.img"
    script = tmp_path / "s.py"
    script.write_text("from mcutrain.metrics import report\nreport(kind='done', step=1)\n")
    cli = subprocess.Popen(
        [sys.executable, "-m", "mcutrain", "run", str(script), "--flash", str(flash), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=host_env(), cwd=ROOT,
    )  # fmt: skip
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    assert json.loads(out) == {"kind": "done", "step": 1}
    assert not any(is_running(pid) for pid in qemu_pids_using(flash))
