"""The fleet demo: keyword spotting across emulated M4F boards, split non-IID by voice.

    python -m mcutrain.fleet.demo [--boards 4] [--rounds 10] [--out results/fleet-kws]

1. `mcutrain fleet --data kws`: each board holds the SYNTHETIC clips of its own two training
   voices (fleet/kws_data.py); FedAvgM (server momentum SERVER_MOMENTUM) for ROUNDS rounds of
   two local epochs of plain SGD; the host evaluates the global model on the held-out voices
   (heard by no board) each round.
2. One board alone: the same initial model trained on board-1's clips only, the same local
   epochs and rates per round, on an emulated board (board_round.train_on_board).
3. Centralized: every board's clips pooled on one board, one epoch per round.
2 and 3 run side by side (one emulator each).
All three start from the same weights; OUT/comparison.csv and fleet_kws.png hold the accuracy
on the held-out voices per round, OUT/summary.json the settings, voices and final figures.
`mcutrain fleet --data kws --compare` runs 2 and 3 after any kws fleet run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..formats import ModelSpec, read_dataset, read_model
from .board_round import BoardConfig, LocalSettings, train_on_board
from .central import CentralTest
from .kws_data import POOLED
from .launch import FleetOptions, FleetResult, run_fleet

CENTRAL_EPOCHS = 1  # per round over the pooled clips: it plateaus within a few rounds
NAMES = {"fedavg": "FedAvg", "fedavgm": "FedAvgM", "fedadam": "FedAdam"}
# Chosen with the float64 host simulation of the demo (bench/fleet_sim.py, docs/fleet.md):
# FedAvg ended about 3 points below centralized there, FedAvgM with momentum 0.7-0.9 level.
SERVER_MOMENTUM = 0.7


def baseline(out: Path, name: str, data: Path, initial: ModelSpec, central: CentralTest,
             settings: LocalSettings, rounds: int) -> list[float]:  # fmt: skip
    """Accuracy on the held-out voices after each round's epoch of one board training alone."""
    board = BoardConfig(name, flash=out / name / "flash.img", train_data=data, status=out / name / "status.json")
    spec, accuracies = initial, []
    for r in range(1, rounds + 1):
        t0 = time.monotonic()
        result = train_on_board(board, spec, settings, r)
        assert result.arrays is not None
        spec = ModelSpec(initial.graph, result.arrays, initial.input_shape)
        accuracies.append(central(spec, spec.tensors)["accuracy"])
        print(f"[{name}] round {r}: held-out accuracy {accuracies[-1]:.3f}, train loss "
              f"{result.metrics['train-loss']:.3f} ({time.monotonic() - t0:.0f} s)", flush=True)
    return accuracies


def plot(out: Path, rows: list[dict[str, Any]], boards: int, epochs: int, strategy: str = "fedavg") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for key, label in (("federated", f"federated ({NAMES[strategy]}, {boards} boards)"),
                       ("centralized", "centralized (all boards' clips on one board)"),
                       ("single", "one board alone (its own voices)")):  # fmt: skip
        ax.plot([r["round"] for r in rows], [100 * r[key] for r in rows], marker="o", label=label)
    ax.set_title("Keyword spotting, non-IID by voice (SYNTHETIC speech)\naccuracy on held-out voices")
    ax.set_xlabel(f"round ({epochs} local epoch{'s' if epochs > 1 else ''} a round on the boards; "
                  f"centralized: {CENTRAL_EPOCHS} of the pooled clips)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    path = out / "fleet_kws.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def compare(fed: FleetResult, options: FleetOptions, out: Path) -> dict[str, Any]:
    """Train the two baselines for the fleet run `fed` (in OUT/federated) and write
    OUT/comparison.csv, fleet_kws.png and summary.json; the summary."""
    t0 = time.monotonic()
    fed_dir = fed.out
    initial = read_model(fed_dir / "initial.mtm")
    central = CentralTest(fed_dir / "data" / "central_test.mtd")
    local = LocalSettings(lr=options.lr, lr_decay=options.lr_decay, momentum=options.momentum,
                          epochs=options.epochs, seed=options.seed, timeout=options.board_timeout)  # fmt: skip
    pooled_settings = dataclasses.replace(local, epochs=CENTRAL_EPOCHS)
    # The two baselines are independent boards: one emulator each, side by side.
    with ThreadPoolExecutor(max_workers=2) as pool:
        single_run = pool.submit(baseline, out, "single", fed_dir / "data" / "board-1" / "train.mtd", initial,
                                 central, local, options.rounds)  # fmt: skip
        pooled_run = pool.submit(baseline, out, "centralized", fed_dir / "data" / POOLED, initial, central,
                                 pooled_settings, options.rounds)  # fmt: skip
        single, pooled = single_run.result(), pooled_run.result()
    rows = [{"round": r["round"], "federated": r["central_accuracy"], "single": single[r["round"] - 1],
             "centralized": pooled[r["round"] - 1]} for r in fed.rounds if r["round"] > 0]  # fmt: skip
    with open(out / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["round", "federated", "single", "centralized"])
        writer.writeheader()
        writer.writerows(rows)
    last = rows[-1]
    summary = {
        "boards": options.boards, "rounds": options.rounds, "strategy": options.strategy,
        **({"server_momentum": options.server_momentum} if options.strategy == "fedavgm" else {}),
        **({"server_lr": options.server_lr} if options.strategy == "fedadam" else {}),
        "local_epochs": options.epochs,
        "centralized_epochs_per_round": CENTRAL_EPOCHS, "samples_per_class": options.samples_per_class,
        "lr": options.lr, "lr_decay": options.lr_decay, "momentum": options.momentum, "seed": options.seed,
        "voices": {f"board-{b + 1}": read_dataset(fed_dir / "data" / f"board-{b + 1}" / "train.mtd").meta["voices"]
                   for b in range(options.boards)},
        "held_out_voices": read_dataset(fed_dir / "data" / "central_test.mtd").meta["voices"],
        "final": last,
        "federated_minus_centralized_points": round(100 * (last["federated"] - last["centralized"]), 1),
        "federated_minus_single_points": round(100 * (last["federated"] - last["single"]), 1),
        "model_bytes_down_per_board_per_round": fed.rounds[-1]["bytes_down"] // options.boards,
        "federated_seconds": round(fed.seconds), "baseline_seconds": round(time.monotonic() - t0),
        "synthetic": True,
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(out, rows, options.boards, options.epochs, options.strategy)
    return summary


def table(out: Path) -> str:
    """comparison.csv as a Markdown table."""
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    lines = ["| round | federated | one board alone | centralized |", "|---:|---:|---:|---:|"]
    for r in rows:
        cells = " | ".join(f"{100 * float(r[k]):.1f}%" for k in ("federated", "single", "centralized"))
        lines.append(f"| {r['round']} | {cells} |")
    return "\n".join(lines)


def demo_options(boards: int = 4, rounds: int = 10, samples_per_class: int = 40, seed: int = 1) -> FleetOptions:
    """The demo's settings: FedAvgM; two local epochs of plain SGD a round at 0.01, x0.85 a round."""
    return FleetOptions(data="kws", boards=boards, rounds=rounds, strategy="fedavgm",
                        server_momentum=SERVER_MOMENTUM, epochs=2, lr=0.01, lr_decay=0.85,
                        momentum=0.0, fraction_evaluate=0.0, samples_per_class=samples_per_class, seed=seed,
                        board_timeout=900.0)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--samples-per-class", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/fleet-kws"))
    args = parser.parse_args(argv)
    out = args.out.resolve()
    options = demo_options(args.boards, args.rounds, args.samples_per_class, args.seed)
    fed = run_fleet(out / "federated", options)
    summary = compare(fed, options, out)
    print(table(out))
    print(f"federated - centralized: {summary['federated_minus_centralized_points']:+.1f} points; "
          f"federated - one board: {summary['federated_minus_single_points']:+.1f} points; "
          f"{summary['federated_seconds'] + summary['baseline_seconds']} s; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
