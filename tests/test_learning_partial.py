"""bench/learning.py --only partial, the partial-update accuracy table, on the unix port (one
seed of the digits CNN; the board run is the README's): every configuration trains, the
top-k ones do the backward work their policy says, and the table has a row for each."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import learning


def test_partial_sweep_runs_every_configuration_and_tabulates_it(target_pool, tmp_path):
    unix = target_pool.get("unix")
    data = learning.prepare_precision_data(tmp_path, 200, 100)
    runs = learning.partial_sweep(unix, data, models=("digits_cnn",), seeds=(1,), log=lambda line: None)
    assert [r["config"] for r in runs] == list(learning.PARTIAL_CONFIGS)
    for r in runs:
        dtype, update = learning.PARTIAL_CONFIGS[r["config"]]
        assert r["dtype"] == dtype and 0.0 <= r["test_accuracy"] <= 1.0
        if update is None:
            assert "backward_mac_fraction" not in r
        else:
            # Conv layers at 10-50% (the head in full): well under a full update's backward.
            assert 0.05 < r["backward_mac_fraction"] < 0.5, r
            assert r["update"].count("TopK") == 2, r["update"]  # the two convolutions, not the head
    table = learning.partial_markdown(runs, "unix").splitlines()
    assert len(table) == 2 + len(learning.PARTIAL_CONFIGS)
    assert all(f"| digits_cnn | {config} |" in "\n".join(table) for config in learning.PARTIAL_CONFIGS)
