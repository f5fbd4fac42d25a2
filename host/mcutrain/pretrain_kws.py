"""Pretrain the keyword-spotting DS-CNN on the host with PyTorch (CPU) and export it as an
.mtm for fine-tuning on the board (examples/train_kws.py with PRETRAINED set).

    python -m mcutrain.pretrain_kws DATA_DIR OUT.mtm [--fraction 0.5] [--epochs 10]

The host trains with BatchNorm, batches and Adam on a fraction of the SYNTHETIC training
set; the export folds BatchNorm into the convolutions, so the board fine-tunes a plain
conv/ReLU network with batch 1 and SGD on the whole training set. The network is the one
examples/train_kws.py builds from scratch (a 10x4 stride-2 conv, two depthwise-separable
blocks, average pooling over frequency, a linear classifier on the 5x5 time-frequency map).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .formats import read_dataset


def dscnn(classes: int, width: int = 32):  # -> torch.nn.Sequential
    import torch.nn as nn

    def block(i: int, o: int, k, s=1, p=0, g=1) -> list:
        return [nn.Conv2d(i, o, k, s, p, groups=g), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(
        *block(1, width, (10, 4), 2, (5, 1)),
        *block(width, width, 3, 1, 1, width), *block(width, width, 1),
        *block(width, width, 3, 1, 1, width), *block(width, width, 1),
        nn.AvgPool2d((5, 1)), nn.Flatten(), nn.Linear(5 * 5 * width, classes))


def _mask(x, generator):  # -> torch.Tensor
    """SpecAugment-style masking (Park et al. 2019): zero a random band of up to 8 frames and
    of up to 2 coefficients per sample, so the net cannot lean on any one of them; it is
    what carries the host model over to voices it never heard."""
    import torch

    n, _, frames, coeffs = x.shape
    x = x.clone()
    t0 = torch.randint(0, frames, (n,), generator=generator)
    tw = torch.randint(0, 9, (n,), generator=generator)
    f0 = torch.randint(0, coeffs, (n,), generator=generator)
    fw = torch.randint(0, 3, (n,), generator=generator)
    t = torch.arange(frames)[None, :]
    f = torch.arange(coeffs)[None, :]
    time_mask = (t >= t0[:, None]) & (t < (t0 + tw)[:, None])
    freq_mask = (f >= f0[:, None]) & (f < (f0 + fw)[:, None])
    x[time_mask[:, None, :, None].expand_as(x)] = 0.0
    x[freq_mask[:, None, None, :].expand_as(x)] = 0.0
    return x


def _tensors(path: Path):
    import torch

    ds = read_dataset(path)
    x = ds.x.astype(np.float32)
    if ds.x.dtype == np.int8 and ds.scale is not None and ds.zero_point is not None:
        x = (x - ds.zero_point) * ds.scale
    return torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(ds.y.astype(np.int64)), ds


def pretrain_kws(data: Path, out: Path, *, fraction: float = 0.5, epochs: int = 10,
                 seed: int = 0, width: int = 32, log=print) -> dict[str, float]:
    """Train on the first `fraction` of a shuffled kws_train.mtd; export to `out`."""
    import torch
    import torch.nn.functional as F

    from .export import export_torch

    torch.manual_seed(seed)
    x, y, ds = _tensors(data / "kws_train.mtd")
    x_test, y_test, _ = _tensors(data / "kws_test.mtd")
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[: int(len(y) * fraction)]
    x, y = x[keep], y[keep]
    model = dscnn(len(ds.class_names), width)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    generator = torch.Generator().manual_seed(seed)
    t0 = time.monotonic()
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=generator).split(32):
            opt.zero_grad()
            F.cross_entropy(model(_mask(x[idx], generator)), y[idx]).backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        log(f"pretrain_kws: epoch {epoch + 1}/{epochs}, held-out voices {acc:.1%} "
            f"({time.monotonic() - t0:.0f} s)")
    export_torch(model, out, input_shape=(1, 49, 10), fold_bn=True)
    return {"test_accuracy": acc, "train_samples": len(y)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(pretrain_kws(args.data, args.out, fraction=args.fraction, epochs=args.epochs, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
