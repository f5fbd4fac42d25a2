"""Each board's own data for a fleet run: scikit-learn's digits split across boards, IID
(every board a random share of every class) or non-IID by label (each board a few classes),
written as .mtd files; the held-out test split stays on the host for central evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..digits import split_digits
from ..formats import write_dataset

SPLITS = ("iid", "label")


@dataclass
class Shard:
    train: Path
    test: Path
    samples: int
    classes: list[int]


def digits_shards(out: Path | str, boards: int, *, split: str = "iid", samples: int | None = None,
                  classes_per_board: int = 3, seed: int = 0) -> tuple[list[Shard], Path]:  # fmt: skip
    """Write OUT/board-I/{train,test}.mtd for each board (int8, as the boards store them) and
    OUT/central_test.mtd; `samples` caps each board's training samples (each board's test
    file is a fifth of that, from its own classes)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if boards < 1:
        raise ValueError("a fleet needs at least one board")
    out = Path(out)
    x_train, y_train, x_test, y_test = split_digits()
    rng = np.random.default_rng(seed)
    if split == "iid":
        parts = np.array_split(rng.permutation(len(y_train)), boards)
        board_classes = [list(range(10))] * boards
    else:
        board_classes = [[(b * classes_per_board + k) % 10 for k in range(classes_per_board)] for b in range(boards)]
        # A class held by several boards is dealt out between them.
        holders = {c: [b for b in range(boards) if c in board_classes[b]] for c in range(10)}
        parts_l: list[list[int]] = [[] for _ in range(boards)]
        for c, owners in holders.items():
            if not owners:
                continue
            members = rng.permutation(np.flatnonzero(y_train == c))
            for i, chunk in enumerate(np.array_split(members, len(owners))):
                parts_l[owners[i]] += chunk.tolist()
        parts = [rng.permutation(np.array(p, dtype=np.int64)) for p in parts_l]
    shards = []
    for b, idx in enumerate(parts):
        idx = idx[:samples] if samples else idx
        folder = out / f"board-{b + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        test_idx = np.flatnonzero(np.isin(y_test, board_classes[b]))
        test_idx = rng.permutation(test_idx)[: max(10, len(idx) // 5)]
        # One fixed scale for every file (pixels 0..16): the boards' int8 samples all mean the same.
        write_dataset(folder / "train.mtd", _images(x_train[idx]), y_train[idx], dtype="int8",
                      scale=1 / 255, zero_point=-128, num_classes=10)  # fmt: skip
        write_dataset(folder / "test.mtd", _images(x_test[test_idx]), y_test[test_idx], dtype="int8",
                      scale=1 / 255, zero_point=-128, num_classes=10)  # fmt: skip
        shards.append(Shard(folder / "train.mtd", folder / "test.mtd", len(idx), board_classes[b]))
    central = out / "central_test.mtd"
    write_dataset(central, _images(x_test), y_test, dtype="int8", scale=1 / 255, zero_point=-128, num_classes=10)
    return shards, central


def _images(x: np.ndarray) -> np.ndarray:
    """uint8 digits (N, 8, 8), values 0..16, as float images in [0, 1] (N, 8, 8, 1)."""
    return (x.astype(np.float32) / 16.0)[..., None]
