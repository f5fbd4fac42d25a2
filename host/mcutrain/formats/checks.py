"""Dataset sources checked before they become an .mtd: wrong data is refused with a message
that says what is wrong and which option fixes it, never turned into something that trains on
nonsense (a feature column read as 296 classes, channels-first images read as 3-pixel-wide).

    checked = load_checked("pets.npz", layout="nchw")   # a CheckedDataset, or SourceError
    print(describe(checked))
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .arrays import DatasetArrays
from .mtd import MAX_SAMPLE_DIMS, DatasetHeader, read_dataset
from .sources import SourceError, load_csv, load_source, reshape_samples

LAYOUTS = ("nchw", "nhwc")
# Fewer samples than this per class on average, and the label column is more likely a feature.
MIN_SAMPLES_PER_CLASS = 2
MAX_CLASSES_LISTED = 12
# Up to this many classes are plausible in any set, however small (a label 9 in 4 samples).
MIN_CLASSES_CHECKED = 16


@dataclass
class CheckedDataset:
    """A source's arrays after the checks, channels-last; `notes` say what was converted."""

    source: Path
    data: DatasetArrays
    kind: str  # "npz", "csv", "idx", "wav", "mtd"
    notes: list[str] = field(default_factory=list)


def _kind(p: Path) -> str:
    if p.suffix == ".mtd":
        return "mtd"
    if p.is_dir():
        return "folder"
    name = p.name.lower()
    return "npz" if name.endswith(".npz") else "csv" if name.endswith(".csv") else "idx"


def load_checked(
    src: str | os.PathLike[str],
    *,
    label_column: int | str | None = None,
    shape: tuple[int, ...] | None = None,
    layout: str | None = None,
    header: bool | None = None,
) -> CheckedDataset:
    """Load a dataset source (see sources.load_source, or an .mtd), apply `shape` (each sample's
    shape in the source, e.g. C,H,W with layout "nchw") and `layout` (nchw: channels-first,
    converted to the device's channels-last; nhwc: already channels-last), and check it.
    label_column and header are for CSV files."""
    p = Path(src)
    if layout is not None and layout not in LAYOUTS:
        raise SourceError(f"layout must be nchw or nhwc, got {layout!r}")
    kind = _kind(p)
    if kind != "csv" and not p.exists():
        raise SourceError(f"{p}: no such file or folder")
    for option, value in (("--label-column", label_column), ("--header", header)):
        if value is not None and kind != "csv":
            raise SourceError(f"{p}: {option} is for CSV files")
    if kind == "mtd":
        if shape is not None or layout is not None:
            raise SourceError(f"{p} is already an .mtd (channels-last): --shape and --layout "
                              "apply to the source it was made from")  # fmt: skip
        return CheckedDataset(p, read_dataset(p), kind)
    if kind == "csv":
        if not p.is_file():
            raise SourceError(f"{p}: no such file")
        data = load_csv(p, label_column=label_column, header=header)
    else:
        data = load_source(p)
        kind = str(data.meta.get("source", kind))
    checked = CheckedDataset(p, data, kind)
    if shape is not None:
        data.x = reshape_samples(data.x, shape, str(p))
    if layout == "nchw":
        _to_channels_last(checked)
    _check(checked, layout_given=layout is not None)
    return checked


def _to_channels_last(checked: CheckedDataset) -> None:
    x = checked.data.x
    if x.ndim not in (3, 4):
        raise SourceError(
            f"{checked.source}: --layout nchw needs samples with channels first, (C, H, W) or "
            f"(C, L); these are {tuple(x.shape[1:])}" + ("; give --shape C,H,W too" if x.ndim == 2 else "")
        )  # fmt: skip
    checked.data.x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    checked.notes.append(f"layout: channels-first {tuple(x.shape[1:])} converted to "
                         f"channels-last {tuple(checked.data.x.shape[1:])}")  # fmt: skip


def _looks_channels_first(shape: tuple[int, ...]) -> bool:
    """(C, H, W) with few channels and an image-sized H, W, where (H, W, C) would have an
    image-sized last axis: what NCHW images (PyTorch, torchvision) look like."""
    return len(shape) == 3 and shape[0] in (1, 2, 3, 4) and min(shape[1:]) > 4 and shape[2] > 4


def _check(checked: CheckedDataset, layout_given: bool) -> None:
    data, where = checked.data, str(checked.source)
    x = data.x
    n = len(x)
    if n == 0:
        raise SourceError(f"{where}: no samples")
    if x.ndim < 2:
        raise SourceError(f"{where}: x has shape {x.shape}: one number per sample? store it as "
                          "(N, 1), or give --shape 1")  # fmt: skip
    if x.ndim > MAX_SAMPLE_DIMS + 1:
        raise SourceError(f"{where}: samples of shape {x.shape[1:]}: the board takes up to "
                          f"{MAX_SAMPLE_DIMS} dims per sample")  # fmt: skip
    if 0 in x.shape[1:]:
        raise SourceError(f"{where}: samples of shape {x.shape[1:]} are empty")
    if not layout_given and _looks_channels_first(x.shape[1:]):
        c, h, w = x.shape[1:]
        raise SourceError(
            f"{where}: samples of shape {x.shape[1:]} look channels-first ({c} channels of "
            f"{h}x{w}); the board wants channels-last (H, W, C). Pass --layout nchw to convert "
            f"them to ({h}, {w}, {c}), or --layout nhwc if they really are {c} rows of {h} "
            f"pixels with {w} channels"
        )
    if data.x.dtype != np.int8:
        finite = np.isfinite(x)
        if not finite.all():
            bad = int(np.argmin(finite.reshape(n, -1).all(axis=1)))
            raise SourceError(f"{where}: x has {int((~finite).sum())} NaN or infinite values "
                              f"(the first in sample {bad})")  # fmt: skip
    _check_labels(checked)
    if data.teacher_logits is not None:
        t = data.teacher_logits
        if t.ndim != 2 or t.shape[0] != n:
            raise SourceError(f"{where}: teacher logits of shape {t.shape}, want ({n}, classes)")


def _check_labels(checked: CheckedDataset) -> None:
    data, where = checked.data, str(checked.source)
    n, y = len(data.x), np.asarray(data.y)
    if y.shape[:1] != (n,):
        raise SourceError(f"{where}: {n} samples but labels of shape {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.number):
        raise SourceError(f"{where}: labels are {y.dtype}, not class indices or float targets")
    classification = data.class_names is not None or data.teacher_logits is not None
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            raise SourceError(f"{where}: labels include NaN or infinite values")
        whole = bool(np.all(y == np.round(y)))
        if y.ndim == 1 and whole and classification:
            data.y = y.astype(np.int64)
            checked.notes.append("labels: float in the source, all whole numbers: class indices")
        elif classification:
            bad = y.ravel()[int(np.argmax(y.ravel() != np.round(y.ravel())))]
            raise SourceError(f"{where}: class labels must be whole numbers, found {bad:g} (the "
                              "dataset has class names or teacher logits, so it is a "
                              "classification set)")  # fmt: skip
        elif y.ndim == 1 and whole:
            lo, hi = int(y.min()), int(y.max())
            raise SourceError(
                f"{where}: y is {y.dtype} but holds only whole numbers ({lo}..{hi}): save class "
                "labels as integers (y.astype(int)), or regression targets as shape (N, 1)"
            )
        else:
            return  # float targets: regression (MSE on the board)
    if not np.issubdtype(data.y.dtype, np.integer):
        return
    y = np.asarray(data.y)
    if y.ndim != 1:
        raise SourceError(f"{where}: class labels must be (N,), got shape {y.shape}")
    if y.min() < 0:
        raise SourceError(f"{where}: class labels must be 0 or more, found {int(y.min())}")
    top = int(y.max())
    names = data.class_names
    if names is not None and top >= len(names):
        raise SourceError(f"{where}: a label is {top}, but there are {len(names)} class names")
    classes = len(names) if names is not None else top + 1
    used = len(np.unique(y))
    column = data.meta.get("label_column")
    what = f"label column {column}" if column else "y"
    hint = " (choose the label column with --label-column)" if column else ""
    if classes > max(n, MIN_CLASSES_CHECKED):
        raise SourceError(f"{where}: {classes} classes for {n} samples: is {what} really a "
                          f"class label?{hint}")  # fmt: skip
    if n >= 10 and used > n / MIN_SAMPLES_PER_CLASS:
        raise SourceError(
            f"{where}: {used} different labels in {n} samples, fewer than "
            f"{MIN_SAMPLES_PER_CLASS} samples per class: {what} looks like a feature or an id, "
            f"not a class{hint}"
        )


def class_counts(data: DatasetArrays) -> list[tuple[str, int]]:
    """(class name or index, samples) for every class, empty ones included."""
    y = np.asarray(data.y).ravel()
    names = data.class_names or [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]
    counts = np.bincount(y.astype(np.int64), minlength=len(names))
    return [(str(name), int(c)) for name, c in zip(names, counts)]


def describe(checked: CheckedDataset, header: DatasetHeader | None = None,
             size: int | None = None) -> str:  # fmt: skip
    """A few lines for a person: samples, shape, dtype (on the board, from `header` when
    written), classes with their counts, and what was converted."""
    from ..progress import human_bytes

    data = checked.data
    shape, n = tuple(data.x.shape[1:]), len(data.x)
    if header is not None:
        first = f"dataset: {header.count} samples of {tuple(header.sample_shape)} {header.dtype}"
        if header.dtype == "int8":
            first += f" (scale {header.scale:.6g}, zero point {header.zero_point})"
    else:
        first = f"dataset: {n} samples of {shape} {data.x.dtype}"
    if size is not None:
        first += f", {human_bytes(size)}"
    lines = [first]
    source = f"  source:  {checked.source.name} ({checked.kind})"
    if checked.kind == "csv":
        source += f", label column {data.meta.get('label_column')}"
    lines.append(source)
    y = np.asarray(data.y)
    if np.issubdtype(y.dtype, np.integer):
        counts = class_counts(data)
        listed = ", ".join(f"{name} {c}" for name, c in counts[:MAX_CLASSES_LISTED])
        more = f", ... ({len(counts) - MAX_CLASSES_LISTED} more)" if len(counts) > MAX_CLASSES_LISTED else ""
        empty = [name for name, c in counts if c == 0]
        lines.append(f"  classes: {len(counts)}: {listed}{more}")
        if empty:
            lines.append(f"  note:    no samples of class {', '.join(empty[:8])}"
                         + (" ..." if len(empty) > 8 else ""))  # fmt: skip
    else:
        width = 1 if y.ndim == 1 else y.shape[1]
        lines.append(f"  targets: {width} float per sample (regression: train with mt.mse)")
    if data.teacher_logits is not None:
        lines.append(f"  teacher: {data.teacher_logits.shape[1]} logits per sample")
    lines.extend(f"  note:    {note}" for note in checked.notes)
    return "\n".join(lines)


__all__ = ["LAYOUTS", "CheckedDataset", "class_counts", "describe", "load_checked"]
