"""Flower's stock strategies, recording each board's reply (rounds.RoundLog) before they
aggregate: FedAvg (McMahan et al. 2017), FedAvgM (Hsu et al. 2019, server momentum on the
averaged update) and FedAdam (Reddi et al. 2021, server-side Adam on the averaged update). The
server-side ones need nothing from the boards, unlike FedProx's proximal term, which the
device's optimizers do not have."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, Strategy

from . import STRATEGIES
from .records import as_replies, in_board_order
from .rounds import RoundLog

# Summed over boards rather than averaged: what crossed the serial links.
SUMMED = ("bytes-down", "bytes-up", "bytes-data")


def aggregate_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted means of losses and accuracies; sums of byte counts."""
    rows = [_numbers(next(iter(r.metric_records.values()))) for r in records]
    total = sum(row.get(weight_key, 0.0) for row in rows) or 1.0
    out: dict[str, float] = {}
    for row in rows:
        w = row.get(weight_key, 0.0)
        for k, v in row.items():
            out[k] = out.get(k, 0.0) + (v if k in SUMMED or k == weight_key else v * w / total)
    return MetricRecord(dict(out))


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


class _Recording:
    """Logs every reply of a round (RoundLog) before the stock strategy aggregates it, in board
    order (records.in_board_order: arrival order would make float32 sums differ run to run);
    the metrics are aggregated with aggregate_metrics."""

    def __init__(self, log: RoundLog, **options: Any) -> None:
        super().__init__(train_metrics_aggr_fn=aggregate_metrics, evaluate_metrics_aggr_fn=aggregate_metrics,
                         **options)  # type: ignore[call-arg]  # fmt: skip
        self.log = log

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:  # fmt: skip
        replies = in_board_order(replies)
        self.log.replies(server_round, "train", as_replies(replies))
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = in_board_order(replies)
        self.log.replies(server_round, "evaluate", as_replies(replies))
        return super().aggregate_evaluate(server_round, replies)  # type: ignore[misc]


class RecordingFedAvg(_Recording, FedAvg):
    pass


class RecordingFedAvgM(_Recording, FedAvgM):
    pass


class RecordingFedAdam(_Recording, FedAdam):
    pass


def make_strategy(name: str, log: RoundLog, config: Mapping[str, Any]) -> Strategy:
    """The strategy `name` (STRATEGIES) with the run config's sampling and server settings:
    every connected board trains each round (fraction 1.0) once `min-nodes` have connected."""
    sampling = dict(
        fraction_train=1.0,
        fraction_evaluate=float(config.get("fraction-evaluate", 1.0)),
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=int(config.get("min-nodes", 2)),
    )
    if name == "fedavg":
        return RecordingFedAvg(log, **sampling)
    if name == "fedavgm":
        # Hsu et al.'s form: the averaged update applied in full, plus momentum over rounds.
        return RecordingFedAvgM(log, server_learning_rate=1.0,
                                server_momentum=float(config.get("server-momentum", 0.9)), **sampling)  # fmt: skip
    if name == "fedadam":
        # Reddi et al.'s defaults for the moments; eta is the server's step on the averaged update.
        return RecordingFedAdam(log, eta=float(config.get("server-lr", 0.01)), beta_1=0.9, beta_2=0.99,
                                tau=1e-3, **sampling)  # fmt: skip
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {name!r}")
