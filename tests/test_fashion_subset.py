"""mcutrain.fashion: the balanced Fashion-MNIST subset files the board trains on
(examples/train_fashion.py), built from a small synthetic idx folder."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from mcutrain import fashion
from mcutrain.formats import SourceError

RNG = np.random.default_rng(5)


def write_idx(path, array):
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + array.astype(np.uint8).tobytes())


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "idx"
    folder.mkdir()
    for split, n in (("train", 60), ("t10k", 40)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", RNG.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


def test_subsets_are_balanced_downsampled_and_round_trip(source, tmp_path):
    train, test = fashion.write_fashion(tmp_path / "out", 30, 20, size=14, source=source)
    images, labels = fashion.decode(train.read_bytes())
    assert images.shape == (30, 14, 14) and np.bincount(labels, minlength=10).tolist() == [3] * 10
    images, labels = fashion.decode(test.read_bytes())
    assert images.shape == (20, 14, 14) and np.bincount(labels, minlength=10).tolist() == [2] * 10


def test_downsample_is_the_rounded_block_mean():
    images = RNG.integers(0, 256, (2, 28, 28)).astype(np.uint8)
    small = fashion.downsample(images, 7)
    expect = np.rint(images.reshape(2, 7, 4, 7, 4).mean(axis=(2, 4)))
    assert small.dtype == np.uint8 and np.array_equal(small, expect)
    assert np.array_equal(fashion.downsample(images, 28), images)


@pytest.mark.parametrize("size", [0, 5, 29])
def test_sizes_that_do_not_divide_28_are_refused(size):
    with pytest.raises(ValueError):
        fashion.downsample(np.zeros((1, 28, 28), np.uint8), size)


def test_unbalanced_counts_and_oversized_requests_are_refused(source, tmp_path):
    with pytest.raises(ValueError, match="multiple of 10"):
        fashion.write_fashion(tmp_path, 25, 10, source=source)
    with pytest.raises(ValueError):  # 7 per class asked, the split has 6
        fashion.write_fashion(tmp_path, 70, 10, source=source)


def test_corrupt_files_are_refused(source, tmp_path):
    train, _ = fashion.write_fashion(tmp_path, 10, 10, source=source)
    data = bytearray(train.read_bytes())
    with pytest.raises(ValueError, match="CRC"):
        fashion.decode(bytes(data[:-1]) + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match="does not match"):
        fashion.decode(bytes(data[:-1]))
    with pytest.raises(ValueError, match="not a fashion file"):
        fashion.decode(b"XXXX" + bytes(data[4:]))
    with pytest.raises(ValueError, match="too short"):
        fashion.decode(bytes(data[:5]))


def test_missing_or_foreign_source_files_are_refused(tmp_path):
    with pytest.raises(SourceError):
        fashion.load_split("train", tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(SourceError):
        fashion.load_split("train", tmp_path)
