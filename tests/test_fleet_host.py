"""The fleet's host side without boards: the global model between float32 arrays and the
boards' .mtm files, the boards' data shares, the round records and the strategies' metrics."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from mcutrain.cli import build_parser
from mcutrain.fleet.data import digits_shards
from mcutrain.fleet.model import describe, for_device, from_device, initial_model, rebuild
from mcutrain.fleet.rounds import Reply, RoundLog, read_events, read_rows
from mcutrain.formats import ModelSpec, layer, model_bytes, read_dataset, sequential
from mcutrain.formats.spec import leaves


def calibration(n: int = 64) -> np.ndarray:
    return np.random.default_rng(0).random((n, 8, 8, 1)).astype(np.float32)


def test_global_model_travels_as_named_float32_arrays_and_its_graph():
    spec = initial_model("cnn", seed=3)
    info = describe(spec)
    back = rebuild({k: np.array(v) for k, v in spec.tensors.items()}, info)
    assert back.graph == spec.graph and back.input_shape == (8, 8, 1)
    assert set(back.tensors) == set(spec.tensors)
    for name, t in spec.tensors.items():
        assert back.tensors[name].dtype == np.float32
        np.testing.assert_array_equal(back.tensors[name], t)


def test_int8_board_model_comes_back_under_the_global_models_names():
    spec = initial_model("mlp", seed=1)
    board = for_device(spec, "int8", calibration())
    assert any(node.get("dtype") == "int8" for _, node in leaves(board.graph))
    arrays = from_device(board, spec.tensors)
    assert list(arrays) == list(spec.tensors)
    for name, t in spec.tensors.items():
        # Per-channel symmetric int8: each weight within half a step (max|w| / 127 / 2) of itself.
        step = np.abs(t).max(axis=tuple(range(1, t.ndim)), keepdims=True) / 127 if t.ndim > 1 else 0
        assert np.all(np.abs(arrays[name] - t) <= step / 2 + 1e-7), name


def test_a_boards_arrays_come_back_in_the_global_models_order_or_not_at_all():
    spec = initial_model("cnn", seed=1)
    board = ModelSpec(spec.graph, dict(reversed(list(spec.tensors.items()))), spec.input_shape)
    order = list(spec.tensors)
    assert list(from_device(board, order)) == order  # FedAvgM pairs arrays by position
    with pytest.raises(ValueError, match="parameters"):
        from_device(board, order[:-1])


def test_int8_models_move_about_four_times_fewer_bytes_as_weights_dominate():
    # Weights go from 4 bytes to 1; each output channel keeps a float32 bias and scale (8 bytes)
    # and the graph header is fixed, so the whole file's ratio nears 4 as rows grow longer.
    def mlp(hidden: int) -> ModelSpec:
        graph = sequential(layer("Flatten"), layer("Linear", in_features=64, out_features=hidden), layer("ReLU"),
                           layer("Linear", in_features=hidden, out_features=10))
        rng = np.random.default_rng(0)
        tensors = {"1.weight": rng.normal(0, 0.1, (hidden, 64)), "1.bias": np.zeros(hidden),
                   "3.weight": rng.normal(0, 0.1, (10, hidden)), "3.bias": np.zeros(10)}
        return ModelSpec(graph, {k: v.astype(np.float32) for k, v in tensors.items()}, (8, 8, 1))

    ratios = {}
    for hidden in (32, 512):
        spec = mlp(hidden)
        ratios[hidden] = len(model_bytes(spec)) / len(model_bytes(for_device(spec, "int8", calibration())))
    assert ratios[32] > 2.3  # the digits MLP: 10.3 KB against 4.1 KB
    assert ratios[512] > 3.5  # 154 KB against 43 KB
    assert ratios[512] > ratios[32]


def test_digits_split_by_label_gives_each_board_only_its_classes(tmp_path):
    shards, central = digits_shards(tmp_path, 3, split="label", classes_per_board=4, samples=100)
    assert [s.classes for s in shards] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    for s in shards:
        train, test = read_dataset(s.train), read_dataset(s.test)
        assert len(train.y) == s.samples == 100
        assert set(np.unique(train.y)) == set(s.classes)
        assert set(np.unique(test.y)) <= set(s.classes)
        assert train.x.dtype == np.int8 and train.x.shape[1:] == (8, 8, 1)
    assert len(read_dataset(central).y) == 359  # the whole held-out fifth of the digits


def test_digits_iid_split_deals_every_training_sample_once(tmp_path):
    shards, _ = digits_shards(tmp_path, 2)
    counts = [s.samples for s in shards]
    assert sum(counts) == 1438 and abs(counts[0] - counts[1]) <= 1


def test_round_log_names_a_failed_board_logs_it_and_its_return(tmp_path):
    log = RoundLog(tmp_path, {"strategy": "fedavg"}, echo=False)
    ok = {"num-examples": 10.0, "train-loss": 1.0, "train-accuracy": 0.5, "bytes-down": 100.0, "bytes-up": 110.0}
    log.replies(1, "train", [Reply(7, "board-1", dict(ok)),
                             Reply(9, None, error="<class 'BoardLost'>:<'board-2: the board stopped answering'>")])
    log.end_round(1, {"loss": 2.0, "accuracy": 0.25})
    log.replies(2, "train", [Reply(7, "board-1", dict(ok)), Reply(9, "board-2", {**ok, "train-loss": 3.0})])
    log.end_round(2, None)
    log.finish()
    rounds = read_rows(tmp_path)
    assert [(r["boards_ok"], r["boards_failed"]) for r in rounds] == [(1, 1), (2, 0)]
    assert rounds[0]["central_accuracy"] == 0.25 and rounds[1]["train_loss"] == 2.0
    assert rounds[1]["bytes_down"] == 200 and rounds[1]["bytes_up"] == 220
    events = [(e["event"], e["round"], e["board"]) for e in read_events(tmp_path)]
    assert events == [("failed", 1, "board-2"), ("rejoined", 2, "board-2")]
    boards = read_rows(tmp_path, "boards")
    assert [(b["round"], b["board"], b["ok"]) for b in boards] == [
        (1, "board-1", True), (1, "board-2", False), (2, "board-1", True), (2, "board-2", True)]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["boards"]["board-2"] == {"bytes_down": 100, "bytes_up": 110, "rounds_ok": 1}
    assert (tmp_path / "rounds.csv").read_text().splitlines()[0].startswith("round,boards_ok,boards_failed")


def test_strategy_metrics_weight_losses_by_examples_and_sum_link_bytes():
    pytest.importorskip("flwr")
    from flwr.app import MetricRecord, RecordDict
    from mcutrain.fleet.strategies import aggregate_metrics

    replies = [RecordDict({"metrics": MetricRecord({"num-examples": 30, "train-loss": 1.0, "bytes-down": 100})}),
               RecordDict({"metrics": MetricRecord({"num-examples": 10, "train-loss": 3.0, "bytes-down": 50})})]
    out = aggregate_metrics(replies, "num-examples")
    assert out["train-loss"] == pytest.approx(1.5)
    assert out["bytes-down"] == 150 and out["num-examples"] == 40


def test_fleet_command_takes_faults_as_board_at_round():
    args = build_parser().parse_args(["fleet", "--boards", "3", "--kill", "2@1", "--kill", "3@2", "--dtype", "int8"])
    assert args.kill == [(2, 1), (3, 2)] and args.dtype == "int8" and args.boards == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fleet", "--kill", "two"])


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("flite") is None,
                    reason="espeak-ng and flite are not installed (`make setup` installs them)")
def test_kws_boards_hold_only_their_own_voices_and_no_board_hears_the_test_voices(tmp_path):
    from mcutrain.fleet.kws_data import kws_voice_shards

    data = kws_voice_shards(tmp_path, 2, voices_per_board=2, samples_per_class=3, test_samples_per_class=2)
    heard = [set(read_dataset(s.train).meta["voices"]) for s in data.shards]
    assert [len(v) for v in heard] == [2, 2] and not heard[0] & heard[1]
    held_out = set(read_dataset(data.central).meta["voices"])
    assert held_out and not held_out & (heard[0] | heard[1])
    pooled = read_dataset(data.pooled)
    assert len(pooled.y) == 2 * 12 * 3 and pooled.x.shape[1:] == (49, 10, 1)
    # One input pipeline for the fleet: every file has the same int8 scale and zero point.
    params = {(read_dataset(p).scale, read_dataset(p).zero_point) for p in (data.central, data.pooled,
                                                                            *(s.train for s in data.shards))}
    assert len(params) == 1


def test_fresh_dscnn_is_he_initialized_for_plain_sgd():
    spec = initial_model("dscnn", seed=1, input_shape=(49, 10, 1), classes=12)
    w = spec.tensors["4.weight"]  # a pointwise conv, fan-in 32: He-uniform bound sqrt(6 / 32)
    assert 0.9 * np.sqrt(6 / 32) < np.abs(w).max() <= np.sqrt(6 / 32)
    assert not np.any(spec.tensors["4.bias"])


def test_fedavgm_applies_the_averaged_update_in_full_with_the_configured_server_momentum(tmp_path):
    pytest.importorskip("flwr")
    from flwr.serverapp.strategy import FedAvgM
    from mcutrain.fleet.strategies import make_strategy

    strategy = make_strategy("fedavgm", RoundLog(tmp_path, {}, echo=False), {"server-momentum": 0.7, "min-nodes": 4})
    assert isinstance(strategy, FedAvgM)
    assert strategy.server_learning_rate == 1.0 and strategy.server_momentum == 0.7
    assert strategy.min_available_nodes == 4
    args = build_parser().parse_args(["fleet", "--strategy", "fedavgm", "--server-momentum", "0.5"])
    assert args.strategy == "fedavgm" and args.server_momentum == 0.5


def test_each_board_shuffles_with_its_own_seed_fixed_by_its_name():
    from mcutrain.fleet.board_round import LocalSettings

    run = LocalSettings.from_run_config({"seed": 1})
    seeds = [run.for_board(f"board-{i}").seed for i in range(1, 9)]
    assert len(set(seeds)) == 8  # shares dealt in the same class order must not be shuffled alike
    assert run.for_board("board-3").seed == LocalSettings.from_run_config({"seed": 1}).for_board("board-3").seed
    assert run.for_board("board-3").lr == run.lr and run.seed == 1


def test_a_rounds_average_is_the_same_bits_whatever_order_the_boards_replies_arrive_in(tmp_path):
    pytest.importorskip("flwr")
    from types import SimpleNamespace

    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
    from mcutrain.fleet.records import in_board_order, to_record
    from mcutrain.fleet.strategies import make_strategy

    rng = np.random.default_rng(3)

    def reply(name: str, node: int) -> SimpleNamespace:
        content = RecordDict({"arrays": to_record({"w": rng.standard_normal(257).astype(np.float32)}),
                              "metrics": MetricRecord({"num-examples": 480}),
                              "board": ConfigRecord({"name": name})})
        return SimpleNamespace(has_error=lambda: False, content=content,
                               metadata=SimpleNamespace(src_node_id=node))

    replies = [reply(f"board-{i}", node) for i, node in ((3, 11), (1, 42), (4, 7), (2, 99))]
    assert [m.content["board"]["name"] for m in in_board_order(replies)] == [f"board-{i}" for i in range(1, 5)]
    averages = []
    for order in (replies, replies[::-1], replies[1:] + replies[:1]):
        strategy = make_strategy("fedavg", RoundLog(tmp_path, {}, echo=False), {})
        arrays, _ = strategy.aggregate_train(1, order)
        assert isinstance(arrays, ArrayRecord)
        averages.append(arrays["w"].numpy().tobytes())
    assert averages[0] == averages[1] == averages[2]
