"""The adaptation demo without a board: the README table (mcutrain.adapt_report) from make demo
summaries, and the settings it refuses before doing any work."""

from __future__ import annotations

import json

import conftest  # noqa: F401 - puts this checkout's host package on sys.path
import pytest
from mcutrain.adapt_report import adapt_table, main


def summary(host, topk_after, full_after):
    run = {"dtype": "int8", "step_instructions": 2_000_000, "peak_ram_bytes": 61242}
    return {"host_test_accuracy": host, "run": "int8-topk", "update_policy": "TopK", "accuracy_after": topk_after,
            "backward_mac_fraction": 0.2, **run,
            "comparison": [{"run": "float32-full", "update_policy": "full", "accuracy_after": full_after,
                            **run, "dtype": "float32", "step_instructions": 3_000_000}]}  # fmt: skip


def test_table_has_a_row_per_run_with_per_seed_and_mean_gains(tmp_path, capsys):
    table = adapt_table([summary(0.80, 0.86, 0.90), summary(0.84, 0.88, 0.93)])
    rows = table.splitlines()
    assert rows[2].startswith("| host model (PyTorch) | – | 82.0% |")
    assert rows[3] == ("| int8-topk | TopK | 87.0% | +6.0, +4.0 | **+5.0** | 20% | 2,000,000 | 61,242 B |")
    assert rows[4].startswith("| float32-full | full | 91.5% | +10.0, +9.0 | **+9.5** | 100% | 3,000,000 |")
    for seed, s in enumerate([summary(0.8, 0.85, 0.9)]):
        (tmp_path / str(seed)).mkdir()
        (tmp_path / str(seed) / "summary.json").write_text(json.dumps(s))
    assert main([str(tmp_path / "0")]) == 0
    assert "+5.0" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no summaries"):
        adapt_table([])


def test_adaptation_refuses_settings_it_cannot_run_before_any_work(tmp_path, capsys):
    from mcutrain.adapt_demo import run_adaptation
    from mcutrain.demo import main as demo_main

    with pytest.raises(ValueError, match="enroll_per_class >= 1"):
        run_adaptation(tmp_path, 3, 0, "qemu-m4f", 60, enroll_per_class=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        run_adaptation(tmp_path, 3, 0, "qemu-m4f", 60, dtype="float16")
    for argv, said in ((["--enroll-per-class", "0"], "at least 1"), (["--epochs", "-1"], "0 or more"),
                       (["--from-scratch"], "needs --train-voices")):  # fmt: skip
        with pytest.raises(SystemExit):
            demo_main(argv)
        assert said in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was made
