"""The fleet demo: keyword spotting across emulated M4F boards, split non-IID by voice.

    python -m mcutrain.fleet.demo [--boards 4] [--rounds 10] [--out results/fleet-kws]

1. `mcutrain fleet --data kws`: each board holds the SYNTHETIC clips of its own two training
   voices (fleet/kws_data.py); FedAvg for ROUNDS rounds of one local epoch, plain SGD; the
   host evaluates the global model on the held-out voices (heard by no board) every round.
2. One board alone: the same initial model, trained on board-1's clips only, one epoch per
   round at the same rates, on an emulated board (board_round.train_on_board).
3. Centralized: the same, on every board's clips pooled on one board.
All three start from the same weights and see their data at the same per-round rate;
out/comparison.csv and fleet_kws.png hold the accuracy per round, summary.json the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..formats import ModelSpec, read_dataset, read_model
from .board_round import BoardConfig, LocalSettings, train_on_board
from .central import CentralTest
from .kws_data import POOLED
from .launch import FleetOptions, run_fleet


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


def plot(out: Path, rows: list[dict[str, Any]], boards: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for key, label in (("federated", f"federated (FedAvg, {boards} boards)"),
                       ("centralized", "centralized (all boards' clips on one board)"),
                       ("single", "one board alone (its own voices)")):  # fmt: skip
        ax.plot([r["round"] for r in rows], [100 * r[key] for r in rows], marker="o", label=label)
    ax.set_title("Keyword spotting, non-IID by voice (SYNTHETIC speech)\naccuracy on held-out voices")
    ax.set_xlabel("round (one local epoch each)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    path = out / "fleet_kws.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--samples-per-class", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--lr-decay", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/fleet-kws"))
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    out = args.out.resolve()
    fed_dir = out / "federated"
    options = FleetOptions(data="kws", boards=args.boards, rounds=args.rounds, lr=args.lr, lr_decay=args.lr_decay,
                           momentum=0.0, fraction_evaluate=0.0, samples_per_class=args.samples_per_class,
                           seed=args.seed, board_timeout=900.0)  # fmt: skip
    fed = run_fleet(fed_dir, options)
    initial = read_model(fed_dir / "initial.mtm")
    central = CentralTest(fed_dir / "data" / "central_test.mtd")
    settings = LocalSettings(lr=args.lr, lr_decay=args.lr_decay, momentum=0.0, seed=args.seed, timeout=900.0)
    single = baseline(out, "single", fed_dir / "data" / "board-1" / "train.mtd", initial, central, settings,
                      args.rounds)  # fmt: skip
    pooled = baseline(out, "centralized", fed_dir / "data" / POOLED, initial, central, settings, args.rounds)
    rows = [{"round": r["round"], "federated": r["central_accuracy"], "single": single[r["round"] - 1],
             "centralized": pooled[r["round"] - 1]} for r in fed.rounds if r["round"] > 0]  # fmt: skip
    with open(out / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["round", "federated", "single", "centralized"])
        writer.writeheader()
        writer.writerows(rows)
    last = rows[-1]
    summary = {
        "boards": args.boards, "rounds": args.rounds, "samples_per_class": args.samples_per_class,
        "lr": args.lr, "lr_decay": args.lr_decay, "seed": args.seed,
        "voices": {f"board-{b + 1}": read_dataset(fed_dir / "data" / f"board-{b + 1}" / "train.mtd").meta["voices"]
                   for b in range(args.boards)},
        "held_out_voices": read_dataset(fed_dir / "data" / "central_test.mtd").meta["voices"],
        "final": last,
        "federated_minus_centralized_points": round(100 * (last["federated"] - last["centralized"]), 1),
        "federated_minus_single_points": round(100 * (last["federated"] - last["single"]), 1),
        "bytes_per_board_per_round": fed.rounds[-1]["bytes_down"] // args.boards,
        "seconds": round(time.monotonic() - t0),
        "synthetic": True,
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(out, rows, args.boards)
    print("| round | federated | one board alone | centralized |\n|---:|---:|---:|---:|")
    for r in rows:
        cells = " | ".join(f"{100 * r[k]:.1f}%" for k in ("federated", "single", "centralized"))
        print(f"| {r['round']} | {cells} |")
    print(f"federated - centralized: {summary['federated_minus_centralized_points']:+.1f} points; "
          f"federated - one board: {summary['federated_minus_single_points']:+.1f} points; "
          f"{summary['seconds']} s; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
