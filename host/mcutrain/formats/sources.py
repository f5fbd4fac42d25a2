"""Dataset sources: .npz, MNIST/Fashion-MNIST idx files, CSV, and folders of WAV files.

Each loader returns a DatasetArrays with channels-last float32 samples (idx images become
(N, 28, 28, 1) in [0, 1]; audio (N, samples, 1) in [-1, 1)), ready for write_arrays().
"""

from __future__ import annotations

import csv
import gzip
import os
import struct
import wave
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from .arrays import DatasetArrays

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MNIST_CLASSES = [str(d) for d in range(10)]
# Where Debian's dataset-fashion-mnist package puts the files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

PathLike = str | os.PathLike[str]


class SourceError(ValueError):
    """A dataset source that cannot be loaded; the message names the file and the problem."""


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


# ---------------------------------------------------------------------------------------------
# .npz


def load_npz(path: PathLike) -> DatasetArrays:
    """x, y and optional teacher_logits (or "teacher") and class_names arrays from an .npz."""
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("x", "y") if k not in z]
        if missing:
            raise SourceError(f"{path}: .npz lacks {missing} (has {sorted(z.files)})")
        teacher = next((z[k] for k in ("teacher_logits", "teacher") if k in z), None)
        names = [str(n) for n in z["class_names"]] if "class_names" in z else None
        x = z["x"]
        return DatasetArrays(
            x=x if x.dtype == np.int8 else x.astype(np.float32), y=z["y"],
            class_names=names,
            teacher_logits=None if teacher is None else teacher.astype(np.float32),
            meta={"source": "npz"},
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# idx (MNIST, Fashion-MNIST)


def read_idx(path: PathLike) -> np.ndarray:
    """The array in an idx file (optionally .gz), as numpy."""
    p = Path(path)
    with _open(p) as f:
        head = f.read(4)
        if len(head) != 4 or head[:2] != b"\0\0" or head[2] not in _IDX_TYPES:
            raise SourceError(f"{p}: not an idx file (magic {head!r})")
        ndim = head[3]
        dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        dtype = np.dtype(_IDX_TYPES[head[2]])
        data = f.read()
    need = int(np.prod(dims)) * dtype.itemsize
    if len(data) < need:
        raise SourceError(f"{p}: truncated idx file: {dims} needs {need} bytes, has {len(data)}")
    return np.frombuffer(data[:need], dtype=dtype).reshape(dims)


def find_idx(folder: Path, stem: str) -> Path:
    """The idx file `stem` in `folder`, gzipped or not, under either naming of the mirrors."""
    dotted = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise SourceError(f"{folder}: no {stem} or {stem}.gz")


def load_idx(
    images: PathLike, labels: PathLike | None = None, class_names: list[str] | None = None
) -> DatasetArrays:
    """MNIST-style idx images (N, H, W) and labels (N,) as (N, H, W, 1) float32 in [0, 1].

    `images` may also be a folder holding train-images-idx3-ubyte(.gz) and
    train-labels-idx1-ubyte(.gz) (see load_mnist_folder for the test split). Class names
    default to Fashion-MNIST's when the path mentions "fashion", else the digits.
    """
    img_path = Path(images)
    if img_path.is_dir():
        return load_mnist_folder(img_path, "train", class_names)
    if labels is None:
        guess = img_path.name.replace("images-idx3", "labels-idx1")
        guess = guess.replace("images.idx3", "labels.idx1")
        if guess == img_path.name or not (img_path.parent / guess).is_file():
            raise SourceError(f"{img_path}: give the labels file too (no {guess} next to it)")
        labels = img_path.parent / guess
    x = read_idx(img_path)
    y = read_idx(labels)
    if x.ndim not in (3, 4) or y.ndim != 1 or len(x) != len(y):
        raise SourceError(f"{img_path}: images {x.shape} and labels {y.shape} do not match")
    if x.ndim == 3:
        x = x[..., None]
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    if class_names is None:
        fashion = "fashion" in str(img_path).lower()
        class_names = FASHION_MNIST_CLASSES if fashion else MNIST_CLASSES
    return DatasetArrays(
        x=(x.astype(np.float32) / scale), y=y.astype(np.int64), class_names=list(class_names),
        meta={"source": "idx", "file": img_path.name, "scaled_by": 1 / scale},
    )  # fmt: skip


def load_mnist_folder(
    folder: PathLike = FASHION_MNIST_DIR, split: str = "train", class_names: list[str] | None = None
) -> DatasetArrays:
    """The "train" or "t10k" (test) split of an MNIST/Fashion-MNIST idx folder."""
    if split not in ("train", "t10k", "test"):
        raise SourceError(f"split must be 'train' or 't10k', got {split!r}")
    split = "t10k" if split == "test" else split
    d = Path(folder)
    if not d.is_dir():
        hint = " (apt-get install dataset-fashion-mnist)" if d == FASHION_MNIST_DIR else ""
        raise SourceError(f"{d}: no such folder{hint}")
    return load_idx(find_idx(d, f"{split}-images-idx3-ubyte"), find_idx(d, f"{split}-labels-idx1-ubyte"),
                    class_names)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# CSV


def load_csv(
    path: PathLike, label_column: int | str = -1, sample_shape: tuple[int, ...] | None = None
) -> DatasetArrays:
    """Numeric feature columns plus one label column (ints, or names mapped to class indices).

    A first row that is not numeric is taken as the header; label_column is an index or a
    header name. sample_shape reshapes each row's features (channels-last), default (F,).
    """
    p = Path(path)
    with open(p, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise SourceError(f"{p}: empty CSV")
    header = None
    if not _numeric(rows[0]):
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    if isinstance(label_column, str):
        if header is None or label_column not in header:
            raise SourceError(f"{p}: no column named {label_column!r} (header {header})")
        col = header.index(label_column)
    else:
        col = label_column % len(rows[0])
    features, labels = [], []
    for line, r in enumerate(rows, start=2 if header else 1):
        try:
            features.append([float(c) for i, c in enumerate(r) if i != col])
        except ValueError:
            raise SourceError(f"{p}:{line}: non-numeric feature in {r}") from None
        labels.append(r[col].strip())
    if len({len(f) for f in features}) != 1:
        raise SourceError(f"{p}: rows have different numbers of columns")
    try:
        y = np.array([int(v) for v in labels], dtype=np.int64)
        names = None
    except ValueError:
        names = sorted(set(labels))
        y = np.array([names.index(v) for v in labels], dtype=np.int64)
    x = np.array(features, dtype=np.float32)
    if sample_shape is not None:
        x = x.reshape(len(x), *sample_shape)
    meta: dict[str, Any] = {"source": "csv", "file": p.name}
    if header:
        meta["columns"] = [h for i, h in enumerate(header) if i != col]
    return DatasetArrays(x=x, y=y, class_names=names, meta=meta)


def _numeric(row: list[str]) -> bool:
    """Whether every cell but possibly one (a class name) is a number: a data row, not a header."""
    bad = 0
    for cell in row:
        try:
            float(cell)
        except ValueError:
            bad += 1
    return bad <= 1 and len(row) > 1


# ---------------------------------------------------------------------------------------------
# WAV folders (keyword spotting)


def read_wav(path: PathLike) -> tuple[np.ndarray, int]:
    """(mono float32 samples in [-1, 1), sample rate) of a 16-bit PCM WAV file."""
    try:
        with wave.open(os.fspath(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise SourceError(f"{path}: {8 * w.getsampwidth()}-bit WAV, need 16-bit PCM")
            frames = w.readframes(w.getnframes())
            channels, rate = w.getnchannels(), w.getframerate()
    except (wave.Error, EOFError) as e:
        raise SourceError(f"{path}: not a PCM WAV file ({e})") from None
    audio = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        audio = audio.reshape(-1, channels).mean(axis=1)
    return audio, rate


FeatureFn = Callable[[np.ndarray, int], np.ndarray]


def load_wav_folder(
    folder: PathLike, length: int | None = None, features: FeatureFn | None = None
) -> DatasetArrays:
    """A folder with one subfolder of .wav files per class (sorted names are the classes).

    Clips are zero-padded or cut to `length` samples (default: the longest clip) and stored as
    (N, length, 1); or `features(audio, sample_rate)` maps each padded clip to a feature array
    (e.g. MFCCs as (frames, coefficients)), which becomes the sample.
    """
    root = Path(folder)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    files = [(c, f) for c in classes for f in sorted((root / c).glob("*.wav"))]
    if not files:
        raise SourceError(f"{root}: no class subfolders with .wav files")
    clips, labels, rates = [], [], set()
    for c, f in files:
        audio, rate = read_wav(f)
        clips.append(audio)
        labels.append(classes.index(c))
        rates.add(rate)
    if len(rates) != 1:
        raise SourceError(f"{root}: clips have different sample rates {sorted(rates)}")
    rate = rates.pop()
    n = length or max(len(a) for a in clips)
    padded = np.zeros((len(clips), n), dtype=np.float32)
    for i, a in enumerate(clips):
        padded[i, : min(n, len(a))] = a[:n]
    meta: dict[str, Any] = {"source": "wav", "sample_rate": rate, "length": n}
    if features is None:
        x = padded[..., None]
    else:
        x = np.stack([np.asarray(features(a, rate), dtype=np.float32) for a in padded])
        meta["features"] = getattr(features, "__name__", "custom")
    return DatasetArrays(x=x, y=np.array(labels, dtype=np.int64), class_names=classes, meta=meta)


# ---------------------------------------------------------------------------------------------


def _is_wav_folder(p: Path) -> bool:
    return any(d.is_dir() and any(d.glob("*.wav")) for d in p.iterdir())


def load_source(path: PathLike, **options: Any) -> DatasetArrays:
    """Load any supported source, recognized by what `path` is:
    .npz, .csv, an idx images file, a folder of idx files, a folder of per-class WAV folders."""
    p = Path(path)
    if not p.exists():
        raise SourceError(f"{p}: no such file or folder")
    if p.is_dir():
        if _is_wav_folder(p):
            return load_wav_folder(p, **options)
        if any("idx3" in f.name for f in p.iterdir()):
            return load_mnist_folder(p, **options)
        raise SourceError(f"{p}: neither class subfolders of .wav files nor idx files")
    name = p.name.lower()
    if name.endswith(".npz"):
        return load_npz(p, **options)
    if name.endswith(".csv"):
        return load_csv(p, **options)
    if "idx" in name:
        return load_idx(p, **options)
    raise SourceError(f"{p}: unknown dataset source (want .npz, .csv, idx files or a WAV folder)")
