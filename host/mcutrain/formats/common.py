"""What both file formats share: dtype codes, CRC32, alignment and the error type."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .strict_json import json_problem

# One code table for both formats (docs/formats.md). Codes are stable: new dtypes get new codes.
DTYPE_CODES: dict[str, int] = {
    "float32": 1,
    "float16": 2,
    "int8": 3,
    "uint8": 4,
    "uint16": 5,
    "int32": 6,
}
DTYPE_NAMES: dict[int, str] = {code: name for name, code in DTYPE_CODES.items()}
NUMPY_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "int32": np.dtype("<i4"),
}
# int8 scales (a dataset's x_scale, an int8 tensor's scale): well inside float32's normal range,
# so every target holds them as the same non-zero number.
SCALE_RANGE = (1e-30, 1e30)
# What a dataset's samples and a model's tensors may hold.
SAMPLE_DTYPES = ("float32", "float16", "int8")


class FormatError(ValueError):
    """A .mtd or .mtm file that cannot be read: truncated, bad magic, unknown version, CRC..."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


def crc32(data: bytes | bytearray | memoryview | np.ndarray, crc: int = 0) -> int:
    """CRC-32 as zlib, binascii and MicroPython's binascii.crc32 compute it (init 0)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).view(np.uint8).reshape(-1).data
    return zlib.crc32(data, crc) & 0xFFFFFFFF


def align(n: int, to: int) -> int:
    """n rounded up to a multiple of `to`."""
    return (n + to - 1) // to * to


def dtype_name(code: int, path: str | os.PathLike[str], what: str) -> str:
    """The dtype name for a code read from a file, or a FormatError naming the field."""
    try:
        return DTYPE_NAMES[code]
    except KeyError:
        raise FormatError(path, f"unknown {what} dtype code {code}") from None


def read_exact(f: BinaryIO, n: int, path: str | os.PathLike[str], what: str) -> bytes:
    """Exactly n bytes, or a FormatError saying the file is truncated in `what`."""
    data = f.read(n)
    if len(data) != n:
        raise FormatError(path, f"truncated: {what} needs {n} bytes, only {len(data)} left")
    return data


def parse_json_section(data: bytes, path: str | os.PathLike[str], what: str) -> Any:
    """A JSON object from a file section that passes the strict check (strict_json.py)."""
    problem = json_problem(data)
    if problem is not None:
        raise FormatError(path, f"{what} is not valid JSON: {problem}")
    doc = json.loads(data.decode("utf-8"))
    if not isinstance(doc, dict):
        raise FormatError(path, f"{what} is not a JSON object")
    return doc


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A file to write that replaces `path` only once complete (temp file + rename)."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
