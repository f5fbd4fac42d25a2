"""Early halting measured: examples/train_distill.py with and without it on the emulated M4F.

Data: scikit-learn's digits (8x8, /16 to [0, 1]), the split of mcutrain.digits (a stratified
20% test set) with a further stratified 20% of the training part held out for validation
(EarlyStop's metric). Teacher: a small PyTorch CNN trained on the host on the training part,
saved as TorchScript; its logits go into digits_train.mtd as `push-dataset --teacher` puts
them (mcutrain.push.prepare_dataset, the command's own conversion).

    python bench/halting.py [--target qemu-m4f] [--student mlp|cnn] [--seeds 1 2 3]
                            [--out results/halting.json]

Each seed runs up to four configurations of the same script (--configs): `none` (MAX_SKIP=0,
PATIENCE=None: plain distillation for EPOCHS), `skip` (per-sample skipping only), `stop` (the
patience stop only) and `skip+stop`. Instruction counts are exact under QEMU -icount.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))
sys.path.insert(0, str(ROOT / "bench"))

from learning import script_with  # noqa: E402
from mcutrain.digits import split_digits  # noqa: E402
from mcutrain.runner import UnixTarget, open_target  # noqa: E402

SCRIPT = ROOT / "examples" / "train_distill.py"
CONFIGS = {
    "none": {"MAX_SKIP": "0.0", "PATIENCE": "None"},
    "skip": {"PATIENCE": "None"},
    "stop": {"MAX_SKIP": "0.0"},
    "skip+stop": {},
}


def _stratified(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        held[members[: round(len(members) * fraction)]] = True
    return held


def train_teacher(x: np.ndarray, y: np.ndarray, path: Path, epochs: int = 30, seed: int = 0) -> float:
    """A small CNN on (N, 8, 8, 1) samples, saved as TorchScript; its training accuracy."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(32 * 2 * 2, 10))
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    yt = torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(yt), generator=gen).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(xt).argmax(1) == yt).float().mean())
    torch.jit.script(model).save(str(path))
    return accuracy


def prepare(data: Path) -> dict:
    """digits_{train,val,test}.mtd (train with teacher logits) and teacher.pt in data."""
    import torch
    from mcutrain.push import prepare_dataset

    data.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = split_digits()
    val = _stratified(y_train, 0.2, seed=1)
    splits = {"train": (x_train[~val], y_train[~val]), "val": (x_train[val], y_train[val]),
              "test": (x_test, y_test)}
    arrays = {k: ((x.astype(np.float32) / 16)[..., None], y.astype(np.uint8)) for k, (x, y) in splits.items()}
    teacher = data / "teacher.pt"
    teacher_train = train_teacher(*arrays["train"], teacher)
    for name, (x, y) in arrays.items():
        np.savez(data / f"digits_{name}.npz", x=x, y=y)
        prepare_dataset(data / f"digits_{name}.npz", data / f"digits_{name}.mtd",
                        teacher=teacher if name == "train" else None)
    with torch.no_grad():
        model = torch.jit.load(str(teacher))
        xt = torch.from_numpy(np.moveaxis(arrays["test"][0], -1, 1).copy())
        teacher_test = float((model(xt).argmax(1).numpy() == arrays["test"][1]).mean())
    return {"teacher_train_accuracy": teacher_train, "teacher_test_accuracy": teacher_test,
            "samples": {k: len(v[1]) for k, v in arrays.items()}}


def copy_data(target, data: Path) -> str:
    """Where the board reads the .mtd files: the unix port reads the host's, a board gets
    copies in /flash (reading over `mpremote mount` would cost a UART round trip a record)."""
    if isinstance(target, UnixTarget):
        return str(data)
    for name in ("train", "val", "test"):
        target.mpremote("fs", "cp", str(data / f"digits_{name}.mtd"), f":digits_{name}.mtd", timeout=600)
    return "/flash"


def run_config(target, data: Path, where: str, config: str, seed: int,
               overrides: dict[str, str] | None = None) -> dict:
    settings = {**CONFIGS[config], "SEED": str(seed), "DATA": repr(where), **(overrides or {})}
    script = data / f"distill_{config.replace('+', '_')}_{seed}.py"
    script.write_text(script_with(settings, SCRIPT))
    result = json.loads(target.run_file(script, timeout=1800).strip().splitlines()[-1])
    result.update(config=config, seed=seed)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="qemu-m4f")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--student", choices=("mlp", "cnn"), default="mlp",
                        help="train_distill.py's STUDENT")
    parser.add_argument("--data", type=Path, help="keep the data here (default: a temporary folder)")
    parser.add_argument("--prepare", action="store_true", help="only write the data")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "halting.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp)
        info = prepare(data)
        print(f"teacher: {info['teacher_test_accuracy']:.1%} test accuracy; samples {info['samples']}")
        if args.prepare:
            return 0
        runs = []
        with open_target(args.target) as target:
            where = copy_data(target, data)
            for seed in args.seeds:
                for config in args.configs:
                    r = run_config(target, data, where, config, seed,
                                   {"STUDENT": repr(args.student)})
                    runs.append(r)
                    print(f"seed {seed} {config:10} test {r['test_accuracy']:.3f}  epochs {r['epochs']}  "
                          f"skipped {r['skip_fraction']:.1%}  stop {r['stop']}  "
                          f"step instr {r['step_instructions']:,}  train instr {r['train_instructions']:,}",
                          flush=True)
    table = {}
    for config in args.configs:
        rs = [r for r in runs if r["config"] == config]
        table[config] = {
            "test_accuracy": statistics.mean(r["test_accuracy"] for r in rs),
            "step_instructions": statistics.mean(r["step_instructions"] for r in rs),
            "train_instructions": statistics.mean(r["train_instructions"] for r in rs),
            "skip_fraction": statistics.mean(r["skip_fraction"] for r in rs),
            "epochs": statistics.mean(r["epochs"] for r in rs),
        }
    base = table.get("none") or next(iter(table.values()))
    for config, row in table.items():
        row["step_saved"] = 1 - row["step_instructions"] / base["step_instructions"]
        row["train_saved"] = 1 - row["train_instructions"] / base["train_instructions"]
        row["accuracy_change"] = row["test_accuracy"] - base["test_accuracy"]
        print(f"{config:10} test {row['test_accuracy']:.3f} ({row['accuracy_change']:+.3f})  "
              f"epochs {row['epochs']:.1f}  skipped {row['skip_fraction']:.1%}  "
              f"step instructions saved {row['step_saved']:.1%}  training saved {row['train_saved']:.1%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"target": args.target, "student": args.student, **info, "mean": table,
                                    "runs": runs}, indent=1) + "\n")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
