"""Federated training across emulated boards with Flower: each board's round on its own
(bytes over the link by precision), then one `mcutrain fleet` run of 2 boards and 2 rounds on
the digits in which board-2's emulator is killed while it trains in round 1."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import is_running, require_firmware
from mcutrain.fleet.board_round import BoardConfig, LocalSettings, evaluate_on_board, train_on_board
from mcutrain.fleet.data import digits_shards
from mcutrain.fleet.model import initial_model
from mcutrain.formats import ModelSpec


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory):
    return digits_shards(tmp_path_factory.mktemp("fleet-data"), 1, samples=120)[0][0]


def test_board_round_trains_on_its_own_data_and_int8_moves_fewer_bytes(tmp_path, shards):
    require_firmware("qemu-m4f")
    board = BoardConfig("board-1", flash=tmp_path / "flash.img", train_data=shards.train, test_data=shards.test,
                        status=tmp_path / "status.json")
    spec = initial_model("mlp", seed=1)
    f32 = train_on_board(board, spec, LocalSettings(dtype="float32", lr=0.01))
    assert f32.metrics["bytes-data"] > 0  # the first round copies the board's dataset to its flash
    q8 = train_on_board(board, spec, LocalSettings(dtype="int8", lr=0.1, momentum=0.0))
    assert q8.metrics["bytes-data"] == 0  # ...which keeps it
    for out in (f32, q8):
        assert out.metrics["num-examples"] == 120 and out.metrics["train-loss"] > 0
        assert out.arrays is not None and set(out.arrays) == set(spec.tensors)
    # The digits MLP's .mtm: 10.3 KB in float32, 4.1 KB in int8 (weights 4x smaller; float32
    # biases, per-channel scales and the graph header stay; test_fleet_host.py shows the ratio
    # nearing 4 as layers grow).
    assert f32.metrics["bytes-down"] / q8.metrics["bytes-down"] > 2.4
    assert f32.metrics["bytes-up"] / q8.metrics["bytes-up"] > 2.4
    trained = ModelSpec(spec.graph, f32.arrays, spec.input_shape)
    ev = evaluate_on_board(board, trained, LocalSettings())
    assert ev.arrays is None and ev.metrics["num-examples"] == 24 and 0 <= ev.metrics["eval-accuracy"] <= 1
    assert json.loads((tmp_path / "status.json").read_text())["phase"] == "idle"


def test_board_reports_an_option_the_device_refuses(tmp_path, shards):
    require_firmware("qemu-m4f")
    from mcutrain.errors import DeviceError

    board = BoardConfig("board-1", flash=tmp_path / "flash.img", train_data=shards.train)
    with pytest.raises(DeviceError, match="max_ratio"):  # not BoardLost: the board answered
        train_on_board(board, initial_model("mlp"), LocalSettings(dtype="int8", update="topk:0.5:0.2"))


@pytest.fixture(scope="module")
def fleet_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, object, list[str]]]:
    pytest.importorskip("flwr")
    require_firmware("qemu-m4f")
    from mcutrain.fleet.launch import FleetOptions, run_fleet

    out = tmp_path_factory.mktemp("fleet-run")
    lines: list[str] = []
    result = run_fleet(out, FleetOptions(boards=2, rounds=2, samples=150, faults=[(2, 1)]),
                       echo=lines.append, timeout=240)
    yield out, result, lines


def test_fleet_run_writes_rounds_as_jsonl_csv_plots_and_summary(fleet_run):
    out, result, lines = fleet_run
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    with open(out / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    assert {"central_accuracy", "eval_accuracy", "train_loss", "bytes_down", "bytes_up"} <= set(rows[0])
    assert sorted(p.name for p in result.plots) == ["fleet_accuracy.png", "fleet_loss.png"]
    assert all(p.stat().st_size > 10_000 for p in result.plots)
    assert (out / "global.mtm").is_file()
    # Two rounds of one local epoch on 150 digits per board: the global model learns.
    first, last = result.rounds[0], result.rounds[-1]
    assert first["central_accuracy"] < 0.2 < 0.5 < last["central_accuracy"]
    assert any(line.startswith("[fleet] round 2: 2 boards trained") for line in lines)


def test_fleet_reports_bytes_each_board_moved_each_round(fleet_run):
    out, result, _ = fleet_run
    boards = [json.loads(line) for line in (out / "boards.jsonl").read_text().splitlines()]
    ok = [b for b in boards if b["ok"]]
    # The digits MLP in float32 is a 10,344-byte .mtm down each link (train and evaluate) and
    # mt.save's 10,472 bytes back up after training.
    assert {b["bytes-down"] for b in ok} == {10344}
    assert {b["bytes-up"] for b in ok if b["phase"] == "train"} == {10472}
    assert result.summary["boards"]["board-1"] == {"bytes_down": 4 * 10344, "bytes_up": 2 * 10472, "rounds_ok": 2}
    assert result.rounds[2]["bytes_down"] == 4 * 10344 and result.rounds[2]["bytes_up"] == 2 * 10472


def test_killed_board_fails_its_round_the_others_finish_it_and_it_rejoins(fleet_run):
    out, result, lines = fleet_run
    events = [(e["event"], e["round"], e["board"]) for e in result.events]
    assert events[:2] == [("killed", 1, "board-2"), ("failed", 1, "board-2")]
    assert ("rejoined", 2, "board-2") in events
    round1, round2 = result.rounds[1], result.rounds[2]
    assert (round1["boards_ok"], round1["boards_failed"]) == (1, 1)  # board-1's update carried round 1
    assert (round2["boards_ok"], round2["boards_failed"]) == (2, 0)
    failed = [e for e in result.events if e["event"] == "failed"][0]
    assert "BoardLost" in failed["error"] and "stopped answering" in failed["error"]
    assert any("board-2 failed in train" in line for line in lines)
    assert result.summary["boards"]["board-2"]["rounds_ok"] == 1
    # Its dataset survived on its flash image: round 2 did not copy it again.
    b2 = [json.loads(line) for line in (out / "boards.jsonl").read_text().splitlines()
          if '"board-2"' in line and '"ok": true' in line]
    assert b2 and all(b["bytes-data"] == 0 for b in b2 if b["round"] == 2)


def test_fleet_leaves_no_process_running(fleet_run):
    out, result, _ = fleet_run
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(out) in cmdline and is_running(int(proc.name)):
            pytest.fail(f"still running: {cmdline[:200]}")
