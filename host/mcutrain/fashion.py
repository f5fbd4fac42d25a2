"""A balanced subset of Fashion-MNIST (Debian's dataset-fashion-mnist) as small device files.

Fashion-MNIST is 70,000 real 28x28 grayscale photos of clothing in ten classes (60k training,
10k test). Moving data into the emulated board goes through its UART at a few tens of KB/s,
so the device files hold a fixed, class-balanced subset (3000 training / 1000 test images by
default), by default averaged 2x2 down to 14x14.

Each file is `FSH1`, a little-endian uint16 sample count n, uint8 height h, uint8 width w,
a little-endian uint32 CRC-32 of the rest of the file (so a board can tell a cached copy is
current), n * h * w pixel bytes (0..255, row-major) and n label bytes.
`python -m mcutrain.fashion DIR` writes DIR/fashion_train.u8 and DIR/fashion_test.u8.
"""

from __future__ import annotations

import argparse
import binascii
import struct
import sys
from pathlib import Path

import numpy as np

from mcutrain.formats.sources import FASHION_MNIST_DIR as SOURCE_DIR
from mcutrain.formats.sources import find_idx, read_idx

MAGIC = b"FSH1"
HEADER = struct.Struct("<4sHBBI")


def load_split(split: str, source: Path = SOURCE_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) uint8, labels (n,)) of Fashion-MNIST's "train" or "t10k" split."""
    images = read_idx(find_idx(Path(source), f"{split}-images-idx3-ubyte"))
    labels = read_idx(find_idx(Path(source), f"{split}-labels-idx1-ubyte"))
    if images.dtype != np.uint8 or images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"{source}: {split} images {images.shape} do not match labels {labels.shape}")
    return images, labels


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of n samples, n // 10 from each class, in a shuffled order."""
    if n % 10:
        raise ValueError(f"a balanced subset needs a multiple of 10 samples, not {n}")
    picks = [rng.choice(np.flatnonzero(labels == c), n // 10, replace=False) for c in range(10)]
    return rng.permutation(np.concatenate(picks))


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """Average-pool (n, 28, 28) uint8 images down to (n, size, size); size divides 28."""
    if size <= 0 or 28 % size:
        raise ValueError(f"size must divide 28, not {size}")
    f = 28 // size
    pooled = images.reshape(len(images), size, f, size, f).mean(axis=(2, 4))
    return np.rint(pooled).astype(np.uint8)


def encode(images: np.ndarray, labels: np.ndarray) -> bytes:
    n, h, w = images.shape
    if n != len(labels) or n > 0xFFFF:
        raise ValueError(f"{n} images and {len(labels)} labels (at most 65535)")
    body = images.astype(np.uint8).tobytes() + labels.astype(np.uint8).tobytes()
    return HEADER.pack(MAGIC, n, h, w, binascii.crc32(body)) + body


def decode(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of encode(), with the same checks the device script makes."""
    if len(data) < HEADER.size:
        raise ValueError("too short for a fashion file header")
    magic, n, h, w, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not a fashion file")
    if len(data) != HEADER.size + n * (h * w + 1):
        raise ValueError(f"size {len(data)} does not match {n} samples of {h}x{w}")
    body = data[HEADER.size:]
    if binascii.crc32(body) != crc:
        raise ValueError("CRC mismatch")
    images = np.frombuffer(body, np.uint8, n * h * w).reshape(n, h, w)
    return images, np.frombuffer(body, np.uint8, n, offset=n * h * w)


def write_fashion(out_dir: Path, n_train: int = 3000, n_test: int = 1000, size: int = 14,
                  seed: int = 0, source: Path = SOURCE_DIR) -> tuple[Path, Path]:
    """DIR/fashion_train.u8 and DIR/fashion_test.u8: balanced subsets of Fashion-MNIST's own
    training and test splits (the test images are never trained on)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for split, n, name in (("train", n_train, "fashion_train.u8"), ("t10k", n_test, "fashion_test.u8")):
        images, labels = load_split(split, source)
        keep = balanced_subset(labels, n, rng)
        path = out_dir / name
        path.write_bytes(encode(downsample(images[keep], size), labels[keep]))
        paths.append(path)
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a balanced Fashion-MNIST subset as device files.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train", type=int, default=3000, help="training images (multiple of 10)")
    parser.add_argument("--test", type=int, default=1000, help="test images (multiple of 10)")
    parser.add_argument("--size", type=int, default=14, help="image side: 28 (original), 14, 7 or 4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", type=Path, default=SOURCE_DIR, help="the idx files' directory")
    args = parser.parse_args(argv)
    for path in write_fashion(args.out_dir, args.train, args.test, args.size, args.seed, args.source):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
