"""scikit-learn's bundled digits (1797 real 8x8 handwritten digits) as small device files.

Each file is `DIG1`, a little-endian uint16 sample count n, n * 64 pixel bytes (values 0..16,
row-major) and n label bytes: small enough to read whole on a 256 KB board, simple enough to
parse without a library. `python -m mcutrain.digits DIR` writes DIR/digits_train.u8 and
DIR/digits_test.u8 (a fixed, class-stratified 80/20 split).
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

MAGIC = b"DIG1"


def split_digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): uint8 images (n, 8, 8) and labels, stratified."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        test[members[: round(len(members) * test_fraction)]] = True
    return images[~test], labels[~test], images[test], labels[test]


def write_file(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    path.write_bytes(MAGIC + struct.pack("<H", len(labels)) + images.astype(np.uint8).tobytes()
                     + labels.astype(np.uint8).tobytes())


def write_digits(out_dir: Path, test_fraction: float = 0.2, seed: int = 0) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = split_digits(test_fraction, seed)
    train, test = out_dir / "digits_train.u8", out_dir / "digits_test.u8"
    write_file(train, x_train, y_train)
    write_file(test, x_test, y_test)
    return train, test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write scikit-learn's digits as device files.")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    for path in write_digits(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
