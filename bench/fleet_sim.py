"""The fleet demo simulated on the host in float64 (the numpy reference), to try settings
before spending emulator time: the demo's own data shares and initial weights, the same
rounds, local epochs, rates and aggregation (FedAvg, FedAvgM, FedAdam as Flower computes
them), one board alone, or all boards' clips pooled (one epoch a round).

    python bench/fleet_sim.py RUN [--mode fed|single|central] [--strategy fedavgm]
                              [--server-momentum 0.7] [--epochs 2] [--rounds 10] [--seed 0]

RUN is a kws fleet run's folder (`mcutrain fleet --data kws -o RUN`, or the demo's
results/fleet-kws/federated): its data/ and initial.mtm. Prints the held-out accuracy after
each round. The boards shuffle differently from the device (numpy's generator), so a run
here is one more draw of the same experiment, not a replay: docs/fleet.md compares the two.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from mcutrain.fleet.central import CentralTest  # noqa: E402
from mcutrain.fleet.kws_data import POOLED  # noqa: E402
from mcutrain.formats import ModelSpec, build_reference_model, read_dataset, read_model  # noqa: E402
from mcutrain.reference import functional as F  # noqa: E402
from mcutrain.reference import nn as R  # noqa: E402

Arrays = dict[str, np.ndarray]


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = read_dataset(path)
    x = (d.scale or 1.0) * (np.asarray(d.x).astype(np.float64) - (d.zero_point or 0))
    return x, np.asarray(d.y).astype(np.int64)


def train(initial: ModelSpec, state: Arrays, data: tuple[np.ndarray, np.ndarray], epochs: int, seed: int,
          lr: float) -> Arrays:  # fmt: skip
    """Plain SGD, batch 1, as the demo's boards train."""
    model = build_reference_model(ModelSpec(initial.graph, dict(state), initial.input_shape))
    opt = R.SGD(model, lr=lr)
    x, y = data
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for i in rng.permutation(len(y)):
            model.train_step(x[i:i + 1], y[i:i + 1], F.cross_entropy, opt)
    return {k: np.asarray(v, np.float64) for k, v in model.state_dict().items()}


class Server:
    """Flower's FedAvg, FedAvgM (server lr 1) and FedAdam (beta1 0.9, beta2 0.99, tau 1e-3)
    on the boards' equally weighted models (every board holds as many clips)."""

    def __init__(self, strategy: str, momentum: float, eta: float) -> None:
        self.strategy, self.momentum, self.eta = strategy, momentum, eta
        self.m: Arrays | None = None
        self.v: Arrays | None = None

    def step(self, w: Arrays, outs: list[Arrays], round_: int) -> Arrays:
        avg = {k: np.mean([o[k] for o in outs], axis=0) for k in w}
        if self.strategy == "fedavg":
            return avg
        if self.strategy == "fedavgm":
            pg = {k: w[k] - avg[k] for k in w}
            self.m = pg if self.m is None else {k: self.momentum * self.m[k] + pg[k] for k in w}
            return {k: w[k] - self.m[k] for k in w}
        delta = {k: avg[k] - w[k] for k in w}
        m, v = self.m or {k: 0.0 * d for k, d in delta.items()}, self.v or {k: 0.0 * d for k, d in delta.items()}
        self.m = {k: 0.9 * m[k] + 0.1 * delta[k] for k in w}
        self.v = {k: 0.99 * v[k] + 0.01 * delta[k] ** 2 for k in w}
        eta = self.eta * np.sqrt(1 - 0.99 ** (round_ + 1)) / (1 - 0.9 ** (round_ + 1))
        return {k: w[k] + eta * self.m[k] / (np.sqrt(self.v[k]) + 1e-3) for k in w}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--mode", default="fed", choices=("fed", "single", "central"))
    p.add_argument("--strategy", default="fedavgm", choices=("fedavg", "fedavgm", "fedadam"))
    p.add_argument("--server-momentum", type=float, default=0.7)
    p.add_argument("--server-lr", type=float, default=0.01, help="FedAdam's eta")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--epochs", type=int, default=2, help="local epochs (centralized: always 1 a round)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--lr-decay", type=float, default=0.85)
    p.add_argument("--seed", type=int, default=0, help="the shuffles' seed")
    args = p.parse_args(argv)
    initial = read_model(args.run / "initial.mtm")
    central = CentralTest(args.run / "data" / "central_test.mtd")
    boards = [load(f) for f in sorted((args.run / "data").glob("board-*/train.mtd"))]
    server = Server(args.strategy, args.server_momentum, args.server_lr)
    w = {k: np.asarray(v, np.float64) for k, v in initial.tensors.items()}
    accuracies = []
    for r in range(1, args.rounds + 1):
        lr, seed = args.lr * args.lr_decay ** (r - 1), 1000 * args.seed
        if args.mode == "single":
            w = train(initial, w, boards[0], args.epochs, seed + r, lr)
        elif args.mode == "central":
            w = train(initial, w, load(args.run / "data" / POOLED), 1, seed + r, lr)
        else:
            outs = [train(initial, w, b, args.epochs, seed + 100 * r + i, lr) for i, b in enumerate(boards)]
            w = server.step(w, outs, r)
        accuracies.append(central(initial, {k: v.astype(np.float32) for k, v in w.items()})["accuracy"])
        print(f"round {r}: held-out accuracy {accuracies[-1]:.3f}", flush=True)
    print(json.dumps({**{k: str(v) for k, v in vars(args).items()}, "accuracy": accuracies}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
