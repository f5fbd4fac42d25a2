"""The Flower ServerApp: starts from the run config's float32 .mtm, runs the chosen stock
strategy (strategies.py) for num-server-rounds, records every board's reply and each round
(rounds.py) in out-dir, evaluates the global model on central-test when given, and writes the
final model to out-dir/global.mtm."""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from ..formats import ModelSpec, read_model, write_model
from .central import CentralTest
from .model import describe, float_arrays
from .records import from_record, to_record
from .rounds import RoundLog
from .strategies import make_strategy

app = ServerApp()

SETTINGS = ("data", "strategy", "num-server-rounds", "dtype", "update", "local-epochs", "local-steps", "batch-size",
            "lr", "lr-decay", "momentum", "server-lr", "server-momentum", "fraction-evaluate", "min-nodes",
            "seed")  # fmt: skip


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    out = Path(str(config["out-dir"]))
    spec = read_model(str(config["model"]))
    info = describe(spec)
    log = RoundLog(out, {k: config[k] for k in SETTINGS if k in config})
    strategy = make_strategy(str(config.get("strategy", "fedavg")), log, config)
    test_path = str(config.get("central-test", ""))
    central = CentralTest(test_path) if test_path else None

    def evaluate(round_: int, arrays: ArrayRecord) -> MetricRecord | None:
        metrics = central(spec, from_record(arrays)) if central is not None else None
        log.end_round(round_, metrics)
        return MetricRecord(dict(metrics)) if metrics else None

    rounds = int(config.get("num-server-rounds", 3))
    log.say(f"{config.get('strategy', 'fedavg')}, {rounds} rounds, {config.get('dtype', 'float32')} on the boards")
    result = strategy.start(
        grid=grid,
        initial_arrays=to_record(float_arrays(spec)),
        num_rounds=rounds,
        timeout=float(config.get("round-timeout", 900.0)),
        train_config=ConfigRecord(dict(info)),
        evaluate_config=ConfigRecord(dict(info)),
        evaluate_fn=evaluate,
    )
    # No round aggregated anything (every board failed every round): the initial model stands.
    arrays = from_record(result.arrays) if len(result.arrays) else float_arrays(spec)
    final = ModelSpec(spec.graph, arrays, spec.input_shape, dict(spec.meta))
    write_model(out / "global.mtm", final)
    log.finish()
    log.say(f"done: {out}")
