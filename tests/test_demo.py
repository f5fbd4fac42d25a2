"""make demo's pipeline end to end at a tiny size: synthetic data (or recorded WAVs), host
pretraining, adaptation (or fine-tuning) runs on the emulated M4F, collected metrics, plots
and summary.json."""

from __future__ import annotations

import json

from conftest import require_firmware
from mcutrain.adapt_demo import RUN_FIELDS as ADAPT_FIELDS
from mcutrain.adapt_demo import RUNS, TOPK_POLICY, run_adaptation
from mcutrain.demo import SUMMARY_FIELDS, run_demo
from mcutrain.formats import read_dataset
from mcutrain.kws import KEYWORDS
from test_kws_enroll import recorded_folder


def test_demo_pipeline_writes_summary_plots_and_metrics(tmp_path):
    summary = run_demo(tmp_path, samples_per_class=3, epochs=1, seed=0, board="qemu-m4f", timeout=600)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == summary
    for field in SUMMARY_FIELDS:
        assert field in written
    assert written["synthetic"] is True and written["epochs"] == 1 and written["dtype"] == "float32"
    assert 0 <= written["test_accuracy"] <= 1
    assert written["peak_ram_bytes"] < 256 * 1024
    assert written["step_instructions"] > 0
    for name in ("results.jsonl", "results.csv", "loss.png", "accuracy.png", "time_per_step.png"):
        assert (tmp_path / name).is_file(), name


def test_adaptation_demo_reports_before_and_after_for_each_run(tmp_path):
    """make demo's default: enrollment clips of held-out voices, int8 top-k then the full-update
    comparisons, each scored on the evaluation clips before and after."""
    summary = run_adaptation(tmp_path, samples_per_class=3, seed=0, board="qemu-m4f", timeout=600,
                             epochs=1, enroll_per_class=1)  # fmt: skip
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    enrolled = read_dataset(tmp_path / "data" / "kws_enroll.mtd")
    assert len(enrolled.y) == 12 * 5  # 1 clip per class and each of the 5 held-out voices
    runs = [summary, *summary["comparison"]]
    assert [r["run"] for r in runs] == [name for name, *_ in RUNS]
    for run in runs:
        for field in ADAPT_FIELDS:
            assert field in run, (run["run"], field)
        assert run["adaptation_samples"] == 60 and run["epochs"] == 1
        assert 0 <= run["accuracy_before"] <= 1 and run["accuracy_after"] == run["test_accuracy"]
        assert run["peak_ram_bytes"] < 256 * 1024 and run["step_instructions"] > 0
    assert summary["dtype"] == "int8" and summary["update_policy"] == TOPK_POLICY
    assert 0 < summary["backward_mac_fraction"] < 1  # top-k did part of the backward work
    assert summary["synthetic"] is True and summary["mode"] == "adapt"
    assert 0 <= summary["host_test_accuracy"] <= 1
    for name in ("results.jsonl", "accuracy.png", "float32-full/results.jsonl", "int8-full/accuracy.png"):
        assert (tmp_path / name).is_file(), name


def test_adaptation_demo_takes_a_folder_of_recordings(tmp_path):
    recorded_folder(tmp_path / "wavs", speakers=5, takes=3, words=(*KEYWORDS, "cat"))
    summary = run_adaptation(tmp_path / "out", samples_per_class=4, seed=0, board="qemu-m4f",
                             timeout=600, dtype="float32", epochs=1, enroll_per_class=2,
                             from_wav=tmp_path / "wavs")  # fmt: skip
    assert summary["synthetic"] is False and summary["dtype"] == "float32"
    assert "comparison" not in summary  # the one float32 run
    # 1 held-out speaker: 2 of 3 takes per word enroll (_unknown_: cat), 2 noise clips for _silence_.
    assert summary["adaptation_samples"] == 2 * 12
    assert 0 <= summary["accuracy_before"] <= 1 and 0 <= summary["accuracy_after"] <= 1


def test_adaptation_demo_runs_int8_on_the_rv32_board(tmp_path):
    """The same device script on the RISC-V board (int8 only: soft-float float32 is slow
    there); int8 integer passes make it score as on the M4F."""
    require_firmware("qemu-rv32")
    summary = run_adaptation(tmp_path, samples_per_class=3, seed=0, board="qemu-rv32", timeout=600,
                             dtype="int8", epochs=1, enroll_per_class=1)  # fmt: skip
    runs = [summary, *summary["comparison"]]
    assert [r["run"] for r in runs] == [name for name, dtype, *_ in RUNS if dtype == "int8"]
    for run in runs:
        assert run["dtype"] == "int8" and run["adaptation_samples"] == 60
        assert 0 <= run["accuracy_before"] <= 1 and 0 <= run["accuracy_after"] <= 1
        assert run["peak_ram_bytes"] < 256 * 1024 and run["step_instructions"] > 0
    assert summary["board"] == "qemu-rv32" and 0 < summary["backward_mac_fraction"] < 1
