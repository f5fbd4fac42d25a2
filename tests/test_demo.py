"""make demo's pipeline end to end at a tiny size: synthetic data, host pretraining, a
fine-tuning run on the emulated M4F, collected metrics, plots and summary.json."""

from __future__ import annotations

import json

from mcutrain.demo import SUMMARY_FIELDS, run_demo


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
