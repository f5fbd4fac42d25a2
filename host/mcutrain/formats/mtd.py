"""`.mtd` datasets: fixed-size records in CRC-checked chunks, seekable to any sample in O(1).

The byte layout is in docs/formats.md; the device reader is micropython_lib's
mcutrain/dataset.py. Samples are stored channels-last, as the device consumes them.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import ArrayLike

from .arrays import DatasetArrays
from .common import (
    DTYPE_CODES,
    NUMPY_DTYPES,
    SAMPLE_DTYPES,
    SCALE_RANGE,
    FormatError,
    align,
    atomic_write,
    crc32,
    dtype_name,
    parse_json_section,
    read_exact,
)
from .quant import int8_params, quantize_int8
from .spec import MAX_SIZE
from .strict_json import json_problem

MAGIC = b"MTD\0"
VERSION = 1
# magic, version, header_size, count, record_size, chunk_records, data_offset, info_size,
# info_crc, x_dtype, x_ndim, label_dtype, teacher_dtype, x_shape[3], x_scale, x_zero_point,
# num_classes, label_size, chunk_count, table_offset, table_crc, header_crc
HEADER = struct.Struct("<4sHH6I4B3Ifi6I")
HEADER_SIZE = HEADER.size  # 80
DEFAULT_CHUNK_BYTES = 4096
MAX_SAMPLE_DIMS = 3  # the device's tensors have up to 4 dims, one of them the batch
CLASS_DTYPES = ("uint8", "uint16", "int32")
MAX_RECORD = 2**30  # bytes per record


@dataclass(frozen=True)
class DatasetHeader:
    """Everything the fixed header of an .mtd file says (offsets in bytes from the file start)."""

    count: int
    sample_shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int
    label_dtype: str
    label_size: int
    num_classes: int
    teacher_dtype: str | None
    record_size: int
    chunk_records: int
    chunk_count: int
    info_size: int
    table_offset: int
    data_offset: int

    @property
    def sample_bytes(self) -> int:
        return math.prod(self.sample_shape) * NUMPY_DTYPES[self.dtype].itemsize

    @property
    def label_bytes(self) -> int:
        return self.label_size * NUMPY_DTYPES[self.label_dtype].itemsize

    @property
    def teacher_bytes(self) -> int:
        if self.teacher_dtype is None:
            return 0
        return self.num_classes * NUMPY_DTYPES[self.teacher_dtype].itemsize

    @property
    def file_size(self) -> int:
        return self.data_offset + self.count * self.record_size

    def record_dtype(self) -> np.dtype:
        """numpy structured dtype of one record: fields x, y and (with teacher logits) t."""
        names = ["x", "y"]
        formats = [(NUMPY_DTYPES[self.dtype], self.sample_shape),
                   (NUMPY_DTYPES[self.label_dtype], (self.label_size,))]  # fmt: skip
        offsets = [0, self.sample_bytes]
        if self.teacher_dtype is not None:
            names.append("t")
            formats.append((NUMPY_DTYPES[self.teacher_dtype], (self.num_classes,)))
            offsets.append(self.sample_bytes + self.label_bytes)
        return np.dtype(
            {"names": names, "formats": formats, "offsets": offsets, "itemsize": self.record_size}
        )


# ---------------------------------------------------------------------------------------------
# writing


def _labels(
    y: ArrayLike, count: int, num_classes: int | None, class_names: list[str] | None
) -> tuple[np.ndarray, str, int, int]:
    """(labels (N, label_size), label dtype, label_size, num_classes) for the header."""
    a = np.asarray(y)
    if a.shape[:1] != (count,):
        raise ValueError(f"labels have shape {a.shape}, expected ({count}, ...) to match x")
    if a.dtype == np.bool_:
        raise ValueError("labels must be class indices (integers) or float targets, not bool")
    if np.issubdtype(a.dtype, np.integer):
        if a.ndim != 1:
            raise ValueError(f"class labels must be (N,), got shape {a.shape}")
        if class_names is not None:
            num_classes = len(class_names)
        elif num_classes is None:
            num_classes = int(a.max()) + 1 if count else 0
        if count and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got {a.min()}..{a.max()}")
        kind = "uint8" if num_classes <= 256 else "uint16" if num_classes <= 65536 else "int32"
        return a.reshape(count, 1).astype(NUMPY_DTYPES[kind]), kind, 1, num_classes
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"labels must be integers or floats, got dtype {a.dtype}")
    if a.ndim > 2:
        raise ValueError(f"float targets must be (N,) or (N, k), got shape {a.shape}")
    if class_names is not None:
        raise ValueError("class_names need integer class labels, got float targets")
    size = 1 if a.ndim == 1 else a.shape[1]
    return a.reshape(count, size).astype("<f4"), "float32", size, 0


def _samples(
    x: np.ndarray, dtype: str, scale: float | None, zero_point: int | None
) -> tuple[np.ndarray, float, int]:
    """(x converted to dtype, scale, zero point); scale/zero point are 1.0/0 unless int8."""
    if dtype not in SAMPLE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(SAMPLE_DTYPES)}, got {dtype!r}")
    if dtype == "int8":
        if x.dtype == np.int8:
            if scale is None:
                raise ValueError("int8 samples need their scale (and zero_point)")
            scale, zp = float(scale), int(zero_point or 0)
        else:
            if scale is None:
                scale, zero_point = int8_params(x)
            zp = int(zero_point or 0)
            x = quantize_int8(x, scale, zp)
        if not (SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] and -128 <= zp <= 127):
            raise ValueError(f"int8 scale {scale} must be in {SCALE_RANGE}, zero_point "
                             f"{zp} in -128..127")  # fmt: skip
        return x, float(scale), zp
    if scale is not None or zero_point is not None:
        raise ValueError(f"scale and zero_point are for int8 samples, not {dtype}")
    if x.dtype == np.int8 and dtype != "int8":
        raise ValueError("int8 samples can only be stored as int8 (give dtype='int8' and scale)")
    with np.errstate(over="ignore"):  # float16 overflow is reported below
        out = x.astype(NUMPY_DTYPES[dtype])
    if dtype == "float16" and not np.isfinite(out).all() and np.isfinite(x).all():
        raise ValueError("samples overflow float16 (|x| > 65504); rescale them or use float32")
    return out, 1.0, 0


def write_dataset(
    path: str | os.PathLike[str],
    x: ArrayLike,
    y: ArrayLike,
    *,
    dtype: str = "float32",
    class_names: list[str] | None = None,
    teacher_logits: ArrayLike | None = None,
    meta: dict[str, Any] | None = None,
    scale: float | None = None,
    zero_point: int | None = None,
    num_classes: int | None = None,
    teacher_dtype: str = "float32",
    chunk_records: int | None = None,
) -> DatasetHeader:
    """Write samples x (N, *sample_shape), channels-last, and labels y as an .mtd file.

    y: class indices (N,) or float targets (N,) / (N, k). dtype "int8" quantizes float x with
    one per-dataset scale and zero point (computed from x's range unless given). teacher_logits
    (N, num_classes) are stored as teacher_dtype for distillation; meta is free JSON (e.g. the
    MFCC parameters that produced x). The file is replaced atomically.
    """
    xa = np.asarray(x)
    if xa.ndim < 2 or xa.ndim > MAX_SAMPLE_DIMS + 1:
        raise ValueError(f"x must be (N, ...) with 1 to 3 sample dims, got shape {xa.shape}")
    if 0 in xa.shape[1:]:
        raise ValueError(f"x has an empty sample shape {xa.shape[1:]}")
    count = xa.shape[0]
    labels, label_dtype, label_size, n_classes = _labels(y, count, num_classes, class_names)
    samples, q_scale, q_zero = _samples(xa, dtype, scale, zero_point)
    teacher = None
    if teacher_logits is not None:
        if teacher_dtype not in ("float32", "float16"):
            raise ValueError(f"teacher_dtype must be float32 or float16, got {teacher_dtype!r}")
        if label_dtype == "float32":
            raise ValueError("teacher logits need class labels (their width is num_classes)")
        teacher = np.asarray(teacher_logits, dtype=np.float64)
        if teacher.shape != (count, n_classes):
            raise ValueError(
                f"teacher_logits have shape {teacher.shape}, expected ({count}, {n_classes})"
            )
        teacher = teacher.astype(NUMPY_DTYPES[teacher_dtype])
    info: dict[str, Any] = {}
    if class_names is not None:
        info["class_names"] = [str(c) for c in class_names]
    if meta:
        info["meta"] = meta
    info_bytes = json.dumps(info, ensure_ascii=False, separators=(",", ":"),
                            allow_nan=False).encode()  # fmt: skip
    problem = json_problem(info_bytes)
    if problem is not None:
        raise ValueError(f"class_names/meta do not make a valid info section: {problem}")

    sample_bytes = samples[0].nbytes if count else math.prod(xa.shape[1:]) * samples.itemsize
    label_bytes = label_size * NUMPY_DTYPES[label_dtype].itemsize
    teacher_bytes = 0 if teacher is None else n_classes * teacher.itemsize
    record_size = align(sample_bytes + label_bytes + teacher_bytes, 4)
    if chunk_records is None:
        chunk_records = max(1, DEFAULT_CHUNK_BYTES // record_size)
    if chunk_records < 1:
        raise ValueError(f"chunk_records must be >= 1, got {chunk_records}")
    chunk_count = -(-count // chunk_records)
    table_offset = align(HEADER_SIZE + len(info_bytes), 4)
    data_offset = align(table_offset + 4 * chunk_count, 16)
    header = DatasetHeader(
        count=count, sample_shape=tuple(xa.shape[1:]), dtype=dtype, scale=q_scale,
        zero_point=q_zero, label_dtype=label_dtype, label_size=label_size,
        num_classes=n_classes, teacher_dtype=None if teacher is None else teacher_dtype,
        record_size=record_size, chunk_records=chunk_records, chunk_count=chunk_count,
        info_size=len(info_bytes), table_offset=table_offset, data_offset=data_offset,
    )  # fmt: skip
    rec = header.record_dtype()
    with atomic_write(path) as f:
        f.write(bytes(data_offset))
        crcs = []
        for start in range(0, count, chunk_records):
            stop = min(start + chunk_records, count)
            chunk = np.zeros(stop - start, dtype=rec)
            chunk["x"] = samples[start:stop]
            chunk["y"] = labels[start:stop]
            if teacher is not None:
                chunk["t"] = teacher[start:stop]
            data = chunk.tobytes()
            crcs.append(crc32(data))
            f.write(data)
        table = struct.pack(f"<{chunk_count}I", *crcs)
        f.seek(0)
        f.write(_pack_header(header, crc32(info_bytes), crc32(table)))
        f.write(info_bytes)
        f.seek(table_offset)
        f.write(table)
    return header


def write_arrays(
    path: str | os.PathLike[str], data: DatasetArrays, *, dtype: str | None = None, **options: Any
) -> DatasetHeader:
    """write_dataset for a DatasetArrays (as the source loaders return); dtype defaults to
    int8 for int8 data, else float32."""
    if dtype is None:
        dtype = "int8" if data.x.dtype == np.int8 else "float32"
    if data.x.dtype == np.int8 and dtype == "int8":
        options.setdefault("scale", data.scale)
        options.setdefault("zero_point", data.zero_point)
        x: np.ndarray = data.x
    else:
        x = data.float_x()
    return write_dataset(
        path, x, data.y, dtype=dtype, class_names=data.class_names,
        teacher_logits=data.teacher_logits, meta=data.meta, **options,
    )  # fmt: skip


def _pack_header(h: DatasetHeader, info_crc: int, table_crc: int) -> bytes:
    shape = list(h.sample_shape) + [0] * (MAX_SAMPLE_DIMS - len(h.sample_shape))
    fields = HEADER.pack(
        MAGIC, VERSION, HEADER_SIZE, h.count, h.record_size, h.chunk_records, h.data_offset,
        h.info_size, info_crc, DTYPE_CODES[h.dtype], len(h.sample_shape),
        DTYPE_CODES[h.label_dtype], DTYPE_CODES[h.teacher_dtype] if h.teacher_dtype else 0,
        *shape, h.scale, h.zero_point, h.num_classes, h.label_size, h.chunk_count,
        h.table_offset, table_crc, 0,
    )  # fmt: skip
    return fields[:-4] + struct.pack("<I", crc32(fields[:-4]))


# ---------------------------------------------------------------------------------------------
# reading


def _check_magic(data: bytes, path: str | os.PathLike[str]) -> None:
    if len(data) >= 4 and data[:4] != MAGIC:
        hint = " (that is an .mtm model file)" if data[:4] == b"MTM\0" else ""
        raise FormatError(
            path, f"not an .mtd dataset: magic {data[:4]!r}, expected {MAGIC!r}{hint}"
        )
    if len(data) < HEADER_SIZE:
        raise FormatError(
            path, f"truncated: header needs {HEADER_SIZE} bytes, file has {len(data)}"
        )


def parse_header(data: bytes, path: str | os.PathLike[str] = "<bytes>") -> tuple[
    DatasetHeader, int, int
]:
    """(header, info_crc, table_crc) from the first HEADER_SIZE bytes of a file; validates
    magic, version, header CRC and that the fields agree with each other."""
    _check_magic(data, path)
    (
        _, version, header_size, count, record_size, chunk_records, data_offset, info_size,
        info_crc, x_code, ndim, label_code, teacher_code, s0, s1, s2, scale, zero_point,
        num_classes, label_size, chunk_count, table_offset, table_crc, header_crc,
    ) = HEADER.unpack_from(data)  # fmt: skip
    if version != VERSION:
        raise FormatError(path, f"unsupported .mtd version {version} (this reader reads {VERSION})")
    if crc32(data[: HEADER_SIZE - 4]) != header_crc:
        raise FormatError(path, "header CRC mismatch: the header is corrupted")
    if header_size != HEADER_SIZE:
        raise FormatError(path, f"header size {header_size}, expected {HEADER_SIZE}")
    dtype = dtype_name(x_code, path, "sample")
    label_dtype = dtype_name(label_code, path, "label")
    teacher_dtype = dtype_name(teacher_code, path, "teacher") if teacher_code else None
    if not 1 <= ndim <= MAX_SAMPLE_DIMS:
        raise FormatError(path, f"sample ndim {ndim} out of range 1..{MAX_SAMPLE_DIMS}")
    h = DatasetHeader(
        count=count, sample_shape=(s0, s1, s2)[:ndim], dtype=dtype, scale=scale,
        zero_point=zero_point, label_dtype=label_dtype, label_size=label_size,
        num_classes=num_classes, teacher_dtype=teacher_dtype, record_size=record_size,
        chunk_records=chunk_records, chunk_count=chunk_count, info_size=info_size,
        table_offset=table_offset, data_offset=data_offset,
    )  # fmt: skip
    problems = []
    if dtype not in SAMPLE_DTYPES:
        problems.append(f"sample dtype {dtype} not allowed")
    if label_dtype == "float32":
        if num_classes != 0 or teacher_dtype is not None:
            problems.append("float targets need num_classes 0 and no teacher logits")
    elif label_dtype not in CLASS_DTYPES or label_size != 1:
        problems.append(f"labels must be one {'/'.join(CLASS_DTYPES)} class index or "
                        f"float32 targets, got {label_size} {label_dtype}")  # fmt: skip
    if teacher_dtype not in (None, "float32", "float16"):
        problems.append(f"teacher dtype {teacher_dtype} not allowed")
    if (0 in h.sample_shape or any((s0, s1, s2)[ndim:]) or label_size < 1
            or max(h.sample_shape) > MAX_SIZE):  # fmt: skip
        problems.append(f"sample shape {(s0, s1, s2)} (ndim {ndim}) or label size {label_size}")
    elif problems:
        pass
    elif record_size % 4 or not (
        h.sample_bytes + h.label_bytes + h.teacher_bytes <= record_size <= MAX_RECORD
    ):
        problems.append(f"record size {record_size} is not a multiple of 4 holding its fields "
                        f"(at most {MAX_RECORD})")  # fmt: skip
    if dtype == "int8" and not (
        SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] and -128 <= zero_point <= 127
    ):
        problems.append(f"int8 scale {scale} / zero point {zero_point} out of range")
    if chunk_records < 1 or chunk_count != -(-count // chunk_records):
        problems.append(f"{chunk_count} chunks of {chunk_records} do not hold {count} records")
    if table_offset < HEADER_SIZE + info_size or data_offset < table_offset + 4 * chunk_count:
        problems.append("sections overlap")
    if problems:
        raise FormatError(path, "inconsistent header: " + "; ".join(problems))
    return h, info_crc, table_crc


def check_info(info: dict[str, Any], num_classes: int, path: str | os.PathLike[str]) -> None:
    """The info section's known keys: class_names a list of num_classes strings, meta an
    object (null or absent: none)."""
    names = info.get("class_names")
    if names is not None and (
        not isinstance(names, list) or len(names) != num_classes
        or not all(isinstance(n, str) for n in names)
    ):  # fmt: skip
        raise FormatError(path, f"info: class_names must be {num_classes} strings")
    if info.get("meta") is not None and not isinstance(info["meta"], dict):
        raise FormatError(path, "info: meta must be a JSON object")


class DatasetReader:
    """An open .mtd file read lazily: samples come from a memory map, not loaded up front.

    Opening checks the header, the info section and the chunk CRC table; verify=True (or a
    later verify()) also checks every chunk of records against its CRC.
    """

    def __init__(self, path: str | os.PathLike[str], verify: bool = False) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            self.header, info_crc, table_crc = parse_header(f.read(HEADER_SIZE), self.path)
            self.info = self._read_info(f, info_crc)
            self.chunk_crcs = self._read_table(f, table_crc)
            size = f.seek(0, os.SEEK_END)
        h = self.header
        if size < h.file_size:
            have = max(0, size - h.data_offset) // h.record_size
            raise FormatError(
                self.path, f"truncated: {h.count} records need {h.file_size} bytes, file has "
                f"{size} ({have} whole records)",
            )  # fmt: skip
        if size > h.file_size:
            raise FormatError(self.path, f"{size - h.file_size} unexpected bytes after the records")
        self._records: np.ndarray = (
            np.memmap(self.path, dtype=h.record_dtype(), mode="r", offset=h.data_offset,
                      shape=(h.count,))
            if h.count else np.zeros(0, dtype=h.record_dtype())
        )  # fmt: skip
        if verify:
            self.verify()

    def _read_info(self, f: BinaryIO, info_crc: int) -> dict[str, Any]:
        data = read_exact(f, self.header.info_size, self.path, "info section")
        if crc32(data) != info_crc:
            raise FormatError(self.path, "info section CRC mismatch: class names/meta corrupted")
        info = parse_json_section(data, self.path, "info section") if data else {}
        check_info(info, self.header.num_classes, self.path)
        return info

    def _read_table(self, f: BinaryIO, table_crc: int) -> tuple[int, ...]:
        h = self.header
        f.seek(h.table_offset)
        data = read_exact(f, 4 * h.chunk_count, self.path, "chunk CRC table")
        if crc32(data) != table_crc:
            raise FormatError(self.path, "chunk CRC table is corrupted (its CRC does not match)")
        return struct.unpack(f"<{h.chunk_count}I", data)

    # -- what the file holds
    def __len__(self) -> int:
        return self.header.count

    @property
    def class_names(self) -> list[str] | None:
        names = self.info.get("class_names")
        return None if names is None else [str(n) for n in names]

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.info.get("meta") or {})

    def __getitem__(self, i: int) -> tuple[np.ndarray, int | np.ndarray]:
        """(x, y) of sample i: x in the stored dtype, y an int (class) or a float32 array."""
        n = self.header.count
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for {n} samples")
        rec = self._records[i]
        y = rec["y"]
        return np.array(rec["x"]), int(y[0]) if self.header.label_dtype != "float32" else y.copy()

    def __iter__(self) -> Iterator[tuple[np.ndarray, int | np.ndarray]]:
        for i in range(len(self)):
            yield self[i]

    def chunk(self, k: int) -> bytes:
        """The raw bytes of chunk k, after checking them against the chunk's CRC."""
        h = self.header
        start = k * h.chunk_records
        data = self._records[start : start + h.chunk_records].tobytes()
        if crc32(data) != self.chunk_crcs[k]:
            first, last = start, min(start + h.chunk_records, h.count) - 1
            raise FormatError(self.path, f"CRC mismatch in chunk {k} (records {first}..{last})")
        return data

    def verify(self) -> None:
        """Check every chunk against its CRC; FormatError names the first bad chunk."""
        for k in range(self.header.chunk_count):
            self.chunk(k)

    def read_all(self) -> DatasetArrays:
        """Everything, loaded into memory (x in the stored dtype)."""
        h = self.header
        recs = np.array(self._records)
        y = recs["y"]
        y = y[:, 0].astype(np.int64) if h.label_dtype != "float32" else y.astype(np.float32)
        if h.label_dtype == "float32" and h.label_size == 1:
            y = y[:, 0]
        return DatasetArrays(
            x=recs["x"].copy(), y=y, class_names=self.class_names,
            teacher_logits=recs["t"].astype(np.float32) if h.teacher_dtype else None,
            meta=self.meta, scale=h.scale if h.dtype == "int8" else None,
            zero_point=h.zero_point if h.dtype == "int8" else None,
        )  # fmt: skip

    def close(self) -> None:
        self._records = np.zeros(0, dtype=self.header.record_dtype())

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_dataset(path: str | os.PathLike[str], verify: bool = True) -> DatasetArrays:
    """A whole .mtd file in memory, every chunk CRC-checked unless verify=False."""
    with DatasetReader(path, verify=verify) as r:
        return r.read_all()


def read_dataset_header(path: str | os.PathLike[str]) -> DatasetHeader:
    """Just the validated header (fast: for `info`-style listings)."""
    with open(path, "rb") as f:
        return parse_header(f.read(HEADER_SIZE), path)[0]
