"""Why early halting meets its target on some of `make students`' cells and not others:
per-epoch curves of the students' distillation runs on the unix port, and what stop rules
and sample skipping make of them.

For each cell that bench/students.py has prepared (results/students-data/TASK/BUDGET: the
data, at the student's resolution, and the board's runs) and each seed, the cell's designed
student (fresh weights of that seed, as bench/students.py writes them) trains --epochs (30) with
mt.distillation as in examples/train_student.py (the task's rate and its decay per epoch, or
--lr and --decay), without skipping and with mt.SampleSkip at each --skip setting, and after
every epoch is scored on the validation and the test set. The unix port runs the same device
code as the board in seconds (its floating point can differ in the last bits, so its curves
are the board's in kind, not bit for bit).

On those curves a stop rule is replayed after the fact: it ends the run at some epoch S, the
checkpoint is the best validation accuracy up to S, and the run scores that epoch's test
accuracy. Its saving is priced with the board's measured costs (make students' runs.json and
cell.json): an epoch of distillation, less, per skipped step, the measured train step less
the measured inference.

    python bench/halting_curves.py [--cells kws/64k ...] [--seeds 1 2 3 4] [--skip 0.3]
                                   [--epochs 30] [--lr 0.03] [--decay 0.85]
                                   [--out bench/halting_curves.json]

Prints, per cell, the mean over seeds of the test-accuracy change against the seed's
distillation run (all epochs, no skipping) and the share of its instructions saved. An
existing --out made with the same seeds, epochs and skip settings keeps the cells not rerun.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))
sys.path.insert(0, str(ROOT / "bench"))

import students  # noqa: E402
from learning import script_with  # noqa: E402
from mcutrain.design import design_student, write_student  # noqa: E402
from mcutrain.design.profiles import get_profile  # noqa: E402
from mcutrain.runner import open_target  # noqa: E402

CELLS = ["kws/64k", "kws/256k", "fashion/64k", "fashion/256k"]
EPOCHS = 30

# examples/train_student.py's distillation, one epoch per fit call (the same sample order:
# fit shuffles epoch e with seed + e), scored on val and test after each.
CURVE = '''
import json
import mcutrain as mt

CELL = ""
MODEL = ""
SEED = 1
EPOCHS = 30
LR = 0.01
DECAY = 1.0  # each epoch's rate is LR * DECAY**epoch (fit's schedule=DECAY)
SKIP = 0.0  # SampleSkip's q and max_skip; 0: no skipping
train = mt.Dataset(CELL + "/train.mtd", teacher=True, verify=False)
val = mt.Dataset(CELL + "/val.mtd", verify=False)
test = mt.Dataset(CELL + "/test.mtd", verify=False)
model = mt.load(MODEL)
mt.seed(SEED)
opt = mt.SGD(model, lr=LR)
loss = mt.distillation(temperature=4.0, alpha=0.3)
skip = mt.SampleSkip(q=SKIP, warmup=200, max_skip=SKIP) if SKIP else None
for e in range(EPOCHS):
    opt.lr = LR * DECAY ** e
    mt.fit(model, train, opt, loss, epochs=1, seed=SEED + e, skip=skip, metrics=False, train_accuracy=False)
    val_loss, val_acc = mt.evaluate(model, val, batch=1)
    test_loss, test_acc = mt.evaluate(model, test, batch=1)
    print(json.dumps([val_loss, val_acc, test_acc, skip.fraction if skip else 0.0]))
'''


def curve(target: Any, folder: Path, student: Path, seed: int, skip: float, work: Path,
          epochs: int, lr: float, decay: float) -> list[list[float]]:
    """[val_loss, val_accuracy, test_accuracy, skip_fraction so far] after each epoch."""
    source = work / "curve.py"
    source.write_text(CURVE)
    script = work / f"curve_{seed}_{skip}.py"
    script.write_text(script_with({"CELL": repr(str(folder)), "MODEL": repr(str(student)), "SEED": str(seed),
                                   "EPOCHS": str(epochs), "SKIP": repr(skip), "LR": repr(lr),
                                   "DECAY": repr(decay)}, source))
    out = target.run_file(script, timeout=1800)
    return [[round(v, 5) for v in json.loads(line)] for line in out.strip().splitlines()]


def board_costs(folder: Path) -> tuple[float, float]:
    """From the board: the instructions of one distillation epoch (its runs, runs.json), and
    those one skipped step saves: the measured train step less the measured inference (its
    backward pass and update; cell.json)."""
    runs = json.loads((folder / "runs.json").read_text())
    distill = [r for r in runs if r["variant"] == "distill"]
    epoch = sum(r["train_instructions"] for r in distill) / sum(r["epochs"] for r in distill)
    measured = json.loads((folder / "cell.json").read_text())["measured"]
    return epoch, measured["step_instructions"] - measured["infer_instructions"]


Rule = Callable[[list[float]], int]  # validation accuracies -> the epoch the run ends


def patience(p: int) -> Rule:
    def rule(acc: list[float]) -> int:
        best, since = None, 0
        for e, a in enumerate(acc, 1):
            if best is None or a > best:
                best, since = a, 0
            else:
                since += 1
                if since >= p:
                    return e
        return len(acc)
    return rule


def trend(w: int, min_delta: float = 0.0) -> Rule:  # mt.EarlyStop(window=w, min_delta=min_delta)
    def rule(acc: list[float]) -> int:
        for e in range(2 * w, len(acc) + 1):
            if (sum(acc[e - w:e]) - sum(acc[e - 2 * w:e - w])) / w <= min_delta:
                return e
        return len(acc)
    return rule


def fixed(s: int) -> Rule:
    return lambda acc: min(s, len(acc))


RULES: dict[str, Rule] = {"patience 4": patience(4), "window 5": trend(5), "window 4": trend(4),
                          "window 4 +0.3": trend(4, 0.003), "stop at 20": fixed(20), "stop at 30": fixed(30)}


def replay(rows: list[list[float]], stop_at: int) -> float:
    """The test accuracy of the best validation epoch up to stop_at (the first, on a tie)."""
    best = max(range(stop_at), key=lambda i: (rows[i][1], -i))
    return rows[best][2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=CELLS, choices=CELLS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--skip", type=float, nargs="+", default=[0.3], help="SampleSkip q = max_skip settings")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--lr", type=float, help="SGD's rate in the first epoch (default: the task's)")
    parser.add_argument("--decay", type=float, help="the rate's factor per epoch (default: the task's)")
    parser.add_argument("--data", type=Path, default=ROOT / "results" / "students-data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "halting_curves.json")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    if args.out.exists():  # keep the cells not rerun, when they were made the same way
        kept = json.loads(args.out.read_text())
        if (kept["seeds"], kept["epochs"], kept["skip"]) == (args.seeds, args.epochs, args.skip):
            results = {c: v for c, v in kept["cells"].items() if c not in args.cells}
    with open_target("unix", heap=16 * 1024 * 1024) as target:
        for cell in args.cells:
            name, budget_name = cell.split("/")
            task, budget = students.TASKS[name](args.data), students.BUDGETS[budget_name]
            prep = students.prepare_task(task, args.data)
            profile = get_profile(budget.profile)
            design = design_student(prep["teacher"], budget.profile, task.family,
                                    ram=profile.heap - budget.script_reserve, max_infer_ms=budget.max_infer_ms,
                                    max_step_ms=budget.max_step_ms,
                                    input_shape=(task.x_train.shape[-1],) + task.x_train.shape[1:3])
            folder = args.data / cell
            work = folder / "curves"
            work.mkdir(exist_ok=True)
            epoch, per_skip = board_costs(folder)
            runs: dict[str, dict[int, list[list[float]]]] = {}
            lr = task.lr if args.lr is None else args.lr
            decay = task.decay if args.decay is None else args.decay
            for seed in args.seeds:
                student = work / f"student_{seed}.mtm"
                write_student(design.ranked[0], student, None, design.teacher, seed=seed, board=budget.profile)
                for skip in [0.0, *args.skip]:
                    runs.setdefault(f"skip {skip:g}", {})[seed] = curve(target, folder, student, seed, skip, work,
                                                                   args.epochs, lr, decay)
            table: dict[str, dict[str, list[float]]] = {}
            for setting, by_seed in runs.items():
                for rule_name, rule in RULES.items():
                    change, saved, stops = [], [], []
                    for seed, rows in by_seed.items():
                        s = rule([r[1] for r in rows])
                        base = runs["skip 0"][seed]
                        change.append(replay(rows, s) - replay(base, args.epochs))
                        cost = s * epoch - rows[s - 1][3] * s * task.board_train * per_skip
                        saved.append(1 - cost / (args.epochs * epoch))
                        stops.append(s)
                    table.setdefault(setting, {})[rule_name] = [statistics.mean(change), statistics.mean(saved),
                                                                statistics.mean(stops)]
            results[cell] = {"lr": lr, "decay": decay, "curves": runs, "table": table, "epoch_instructions": epoch,
                             "skipped_step_saves": per_skip}
            print(f"{cell}: test-accuracy change vs distill (points) / instructions saved / stop epoch, "
                  f"means over seeds {args.seeds}")
            for setting, rows in table.items():
                print(f"  {setting:9}" + "  ".join(f"{k}: {100 * v[0]:+.1f} / {100 * v[1]:.0f}% / {v[2]:.0f}"
                                                   for k, v in rows.items()), flush=True)
    # one line per epoch: the file stays readable and small
    results = {c: results[c] for c in CELLS if c in results}
    text = json.dumps({"seeds": args.seeds, "epochs": args.epochs, "skip": args.skip, "cells": results}, indent=1)
    args.out.write_text(re.sub(r"\[\s+([-\d.e, \n]+?)\s+\]", lambda m: "[" + " ".join(m[1].split()) + "]", text) + "\n")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
