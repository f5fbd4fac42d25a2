"""Pretrain the digits CNN on the host (numpy reference) on some classes only, and save it
as an .mtm for fine-tuning on the board (examples/train_digits.py with PRETRAINED set).

    python -m mcutrain.pretrain data/pretrained.mtm --classes 0-6

This is the setting of the partial-update learning check: a model that knows part of a task
is fine-tuned on the device on the whole task, with a full or a partial (top-k) update.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .digits import split_digits
from .export import spec_from_arrays
from .formats import layer, sequential, write_model
from .reference import functional as F
from .reference import nn as R

# The same network as examples/train_digits.py's "cnn".
GRAPH = sequential(
    layer("Conv2d", in_channels=1, out_channels=8, kernel_size=3, padding=1), layer("ReLU"),
    layer("MaxPool2d", kernel_size=2),
    layer("Conv2d", in_channels=8, out_channels=16, kernel_size=3, padding=1), layer("ReLU"),
    layer("MaxPool2d", kernel_size=2),
    layer("Flatten"), layer("Linear", in_features=64, out_features=10))


def build_cnn(seed: int) -> R.Sequential:
    R.seed(seed)
    return R.Sequential(R.Conv2d(1, 8, 3, padding=1), R.ReLU(), R.MaxPool2d(2),
                        R.Conv2d(8, 16, 3, padding=1), R.ReLU(), R.MaxPool2d(2),
                        R.Flatten(), R.Linear(64, 10))


def pretrain(out: Path, classes: list[int], epochs: int = 20, lr: float = 0.02, seed: int = 0,
             batch: int = 8) -> dict[str, float]:
    """Train on the training split's samples of `classes`; write the model to `out`."""
    x_train, y_train, x_test, y_test = split_digits()
    keep = np.isin(y_train, classes)
    x = x_train[keep].astype(np.float64)[..., None] / 16.0
    y = y_train[keep].astype(np.int64)
    model = build_cnn(seed)
    opt = R.SGD(model, lr=lr, momentum=0.9)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for i in range(0, len(y), batch):
            idx = order[i:i + batch]
            model.train_step(x[idx], y[idx], F.cross_entropy, opt)
    state = {k: np.asarray(v, np.float32) for k, v in model.state_dict().items()}
    write_model(out, spec_from_arrays(GRAPH, state, input_shape=(8, 8, 1),
                                      meta={"pretrained_on_classes": classes}))
    seen = np.isin(y_test, classes)
    pred = model.predict(x_test.astype(np.float64)[..., None] / 16.0).argmax(axis=1)
    return {"test_accuracy_seen_classes": float((pred[seen] == y_test[seen]).mean()),
            "test_accuracy_all_classes": float((pred == y_test).mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--classes", default="0-6", help="e.g. 0-6 or 0,1,2 (default 0-6)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if "-" in args.classes:
        lo, hi = (int(v) for v in args.classes.split("-"))
        classes = list(range(lo, hi + 1))
    else:
        classes = [int(v) for v in args.classes.split(",")]
    print(pretrain(args.out, classes, args.epochs, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
