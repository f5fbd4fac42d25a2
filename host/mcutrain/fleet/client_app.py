"""The Flower ClientApp: one per board, run by the board's SuperNode for every message.

The node config names the board (board_round.BoardConfig.from_node_config: `device=PORT` for
a real one, else an emulated board the client boots and stops itself); the run config says
how it trains (LocalSettings.from_run_config). The model arrives as float32 arrays with its
graph in the message's config (model.describe) and goes back the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..formats import ModelSpec
from .board_round import (
    BoardConfig,
    BoardLost,
    LocalSettings,
    RoundOutcome,
    evaluate_on_board,
    train_on_board,
)
from .model import rebuild
from .records import from_record, to_record

app = ClientApp()


def _round(msg: Message) -> int:
    config = msg.content["config"]
    value = config.get("server-round", 0) if isinstance(config, ConfigRecord) else 0
    return int(value) if isinstance(value, (int, float)) else 0


def _reply(msg: Message, outcome: RoundOutcome, board: BoardConfig) -> Message:
    named = ConfigRecord({"name": board.name, "kind": board.device or board.board})
    content = RecordDict({"metrics": MetricRecord(dict(outcome.metrics)), "board": named})
    if outcome.arrays is not None:
        content["arrays"] = to_record(outcome.arrays)
    return Message(content=content, reply_to=msg)


class BoardFailed(RuntimeError):
    """A round failed on a board that still answers (the message starts with its name)."""


def _named(board: BoardConfig, run: Callable[[], RoundOutcome]) -> RoundOutcome:
    # Flower reports only the node id of a failed reply: the board's name goes in the reason.
    try:
        return run()
    except BoardLost:
        raise
    except Exception as e:
        raise BoardFailed(f"{board.name}: {e}") from e


def _inputs(msg: Message, context: Context) -> tuple[BoardConfig, LocalSettings, int, ModelSpec]:
    """The board, the local settings, the round and the global model (a ModelSpec) of a message."""
    board = BoardConfig.from_node_config(context.node_config, context.node_id)
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    spec = rebuild(from_record(arrays), msg.content["config"])
    return board, LocalSettings.from_run_config(context.run_config).for_board(board.name), _round(msg), spec


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Push the global model to the board, train there on its own data, return the result."""
    board, settings, round_, spec = _inputs(msg, context)
    return _reply(msg, _named(board, lambda: train_on_board(board, spec, settings, round_)), board)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the global model on the board's own test data."""
    board, settings, round_, spec = _inputs(msg, context)
    return _reply(msg, _named(board, lambda: evaluate_on_board(board, spec, settings, round_)), board)
