"""Dataset sources: .npz, MNIST/Fashion-MNIST idx files, CSV, and folders of WAV files.

Each loader returns a DatasetArrays with channels-last float32 samples (idx images become
(N, 28, 28, 1) in [0, 1]; audio (N, samples, 1) in [-1, 1)), ready for write_arrays().
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import struct
import wave
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

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
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


# ---------------------------------------------------------------------------------------------
# .npz


def load_npz(path: PathLike) -> DatasetArrays:
    """x, y and optional teacher_logits (or "teacher") and class_names arrays from an .npz."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        empty = Path(path).stat().st_size == 0
        raise SourceError(f"{path}: {'empty file' if empty else f'not an .npz archive ({e})'}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise SourceError(f"{path}: a single .npy array, not an .npz with x and y")
    with z:
        missing = [k for k in ("x", "y") if k not in z]
        if missing:
            raise SourceError(f"{path}: .npz lacks {missing} (has {sorted(z.files)})")
        teacher = next((z[k] for k in ("teacher_logits", "teacher") if k in z), None)
        names = [str(n) for n in z["class_names"]] if "class_names" in z else None
        x = z["x"]
        if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number):
            raise SourceError(f"{path}: x holds {x.dtype} values, not numbers")
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

# Header names taken as the label column when --label-column is not given.
LABEL_NAMES = ("label", "labels", "class", "target", "y", "category")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _column_numbers(row: list[str]) -> bool:
    """Whether a row reads 0,1,2,... or 1,2,3,...: a header of column numbers (pandas writes
    one for unnamed columns), not data."""
    try:
        values = [int(c) for c in row]
    except ValueError:
        return False
    return len(values) >= 3 and values in (list(range(len(values))), list(range(1, len(values) + 1)))


def _has_header(p: Path, rows: list[tuple[int, list[str]]], header: bool | None) -> bool:
    """Whether the first row names the columns (header=None: decide from the data)."""
    first = rows[0][1]
    names = [i for i, c in enumerate(first) if not _is_number(c)]
    if header is not None:
        if not header and len(names) > 1:
            raise SourceError(f"{p}:{rows[0][0]}: --no-header, but the first row has names "
                              f"{[first[i] for i in names][:4]}")  # fmt: skip
        return header
    if len(names) > 1:
        return True
    if len(names) == 1:
        # One name: a class name in a data row, or the one named column of a header whose other
        # columns are numbered. The next row tells: a data row has a name in that column too.
        nxt = rows[1][1] if len(rows) > 1 else []
        return names[0] < len(nxt) and _is_number(nxt[names[0]])
    if _column_numbers(first) and len(rows) > 1 and not _column_numbers(rows[1][1]):
        raise SourceError(
            f"{p}:{rows[0][0]}: the first row ({','.join(first[:4])},...) looks like a header of "
            "column numbers, not data: pass --header to skip it, or --no-header to read it as data"
        )
    return False


def _label_index(p: Path, label_column: int | str | None, header: list[str] | None,
                 width: int) -> int:  # fmt: skip
    if label_column is None:
        found = [i for i, h in enumerate(header or []) if h.lower() in LABEL_NAMES]
        return found[0] if len(found) == 1 else width - 1
    if isinstance(label_column, str):
        if header is None:
            raise SourceError(f"{p}: no header row, so no column named {label_column!r}: give the "
                              "label column's index (0 is the first, -1 the last)")  # fmt: skip
        if label_column not in header:
            raise SourceError(f"{p}: no column named {label_column!r} (columns: "
                              f"{', '.join(header[:12])}{', ...' if len(header) > 12 else ''})")
        return header.index(label_column)
    if not -width <= label_column < width:
        raise SourceError(f"{p}: label column {label_column} is out of range: rows have {width} "
                          f"columns (0..{width - 1}, or -{width}..-1)")  # fmt: skip
    return label_column % width


def _describe_column(col: int, header: list[str] | None, width: int) -> str:
    """E.g. "'species' (column 4, the last)", or "0 (the first)" without a header."""
    where = "the first" if col == 0 else "the last" if col == width - 1 else ""
    if header:
        return f"{header[col]!r} (column {col}{', ' + where if where else ''})"
    return f"{col} ({where})" if where else str(col)


def _class_labels(p: Path, labels: list[tuple[int, str]], what: str) -> tuple[np.ndarray, list[str] | None]:
    """Class indices from a label column of whole numbers or of names; anything else is refused."""
    numbers = [(line, v) for line, v in labels if _is_number(v)]
    if not numbers:
        names = sorted({v for _, v in labels})
        index = {n: i for i, n in enumerate(names)}
        return np.array([index[v] for _, v in labels], dtype=np.int64), names
    if len(numbers) != len(labels):
        line, name = next((line, v) for line, v in labels if not _is_number(v))
        raise SourceError(f"{p}: label column {what} mixes numbers ({numbers[0][1]!r} on line "
                          f"{numbers[0][0]}) and names ({name!r} on line {line})")  # fmt: skip
    values = np.array([float(v) for _, v in labels])
    fractional = [(line, v) for line, v in labels if not float(v).is_integer()]
    if fractional or not np.isfinite(values).all():
        line, v = fractional[0] if fractional else labels[int(np.argmin(np.isfinite(values)))]
        raise SourceError(
            f"{p}: label column {what} holds numbers that are not class indices ({v!r} on "
            f"line {line}): it looks like a feature. Name the label column with --label-column "
            "(for regression targets, save x and a float y of shape (N, k) as .npz)"
        )
    return values.astype(np.int64), None


def load_csv(
    path: PathLike,
    label_column: int | str | None = None,
    sample_shape: tuple[int, ...] | None = None,
    header: bool | None = None,
) -> DatasetArrays:
    """Numeric feature columns plus one label column (whole numbers, or names mapped to class
    indices in sorted order).

    header: whether the first row names the columns (None: decided from the data; a row of
    column numbers 0,1,2,... is refused as ambiguous). label_column is an index or a header
    name; by default a column named label/class/target/y/category, else the last one.
    sample_shape reshapes each row's features (channels-last), default (F,).
    """
    p = Path(path)
    with open(p, newline="", encoding="utf-8-sig") as f:  # a BOM is not part of a name
        try:
            rows = [(n, [c.strip() for c in r]) for n, r in enumerate(csv.reader(f), start=1)
                    if r and any(c.strip() for c in r)]  # fmt: skip
        except (csv.Error, UnicodeDecodeError) as e:
            raise SourceError(f"{p}: not a readable CSV file ({e})") from None
    if not rows:
        raise SourceError(f"{p}: empty CSV (no rows)")
    names = None
    if _has_header(p, rows, header):
        names, rows = rows[0][1], rows[1:]
        if not rows:
            raise SourceError(f"{p}: a header row and no data rows")
    width = len(names) if names else len(rows[0][1])
    for line, r in rows:
        if len(r) != width:
            first = "the header" if names else f"line {rows[0][0]}"
            raise SourceError(f"{p}:{line}: {len(r)} columns, but {first} has {width}")
    if width < 2:
        raise SourceError(f"{p}: one column only: a label column and at least one feature needed")
    col = _label_index(p, label_column, names, width)
    what = _describe_column(col, names, width)
    features = np.empty((len(rows), width - 1), dtype=np.float32)
    for n, (line, r) in enumerate(rows):
        cells = r[:col] + r[col + 1 :]
        try:
            features[n] = [float(c) for c in cells]
        except ValueError:
            i, bad = next((i, c) for i, c in enumerate(cells) if not _is_number(c))
            i += i >= col
            where = f"column {names[i]!r}" if names else f"column {i}"
            raise SourceError(f"{p}:{line}: {where} is {bad!r}, not a number (features must be "
                              f"numbers; the label column is {what})") from None  # fmt: skip
    y, class_names = _class_labels(p, [(line, r[col]) for line, r in rows], what)
    x = features
    if sample_shape is not None:
        x = reshape_samples(x, sample_shape, str(p))
    meta: dict[str, Any] = {"source": "csv", "file": p.name, "label_column": what}
    if names:
        meta["columns"] = [h for i, h in enumerate(names) if i != col]
    return DatasetArrays(x=x, y=y, class_names=class_names, meta=meta)


def reshape_samples(x: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """x (N, ...) as (N, *shape), or a SourceError saying why the sizes differ."""
    size, have = math.prod(shape), math.prod(x.shape[1:])
    if size != have or not shape or min(shape) < 1:
        raise SourceError(f"{where}: --shape {','.join(map(str, shape))} holds {size} values, but "
                          f"each sample has {have} (shape {tuple(x.shape[1:])})")  # fmt: skip
    return x.reshape(len(x), *shape)


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
