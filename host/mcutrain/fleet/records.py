"""Between numpy arrays and Flower's records, and Flower's replies as rounds.Reply rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord

from .rounds import Reply


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array.from_numpy_ndarray(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def board_name(msg: Message) -> str | None:
    """The name a board's reply carries (node config `name`); None for an error reply."""
    if msg.has_error():
        return None
    board = msg.content.get("board")
    return str(board["name"]) if isinstance(board, ConfigRecord) and "name" in board else None


def in_board_order(messages: Iterable[Message]) -> list[Message]:
    """Replies sorted by board name (then node id), as they arrive in any order: the strategies
    sum float32 arrays in list order, and a fixed order makes a run's averages repeat."""
    return sorted(messages, key=lambda m: (board_name(m) or "", int(m.metadata.src_node_id)))


def as_replies(messages: Iterable[Message]) -> list[Reply]:
    out = []
    for msg in messages:
        node = int(msg.metadata.src_node_id)
        if msg.has_error():
            out.append(Reply(node, None, error=str(msg.error.reason)))
            continue
        name = board_name(msg)
        metrics = msg.content.get("metrics")
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))} \
            if isinstance(metrics, MetricRecord) else {}  # fmt: skip
        out.append(Reply(node, name, values))
    return out
