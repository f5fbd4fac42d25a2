"""`.mtm` models: a JSON graph (layers, configs, tensor table) and CRC-checked raw tensors.

The byte layout is in docs/formats.md; the device side is micropython_lib's
mcutrain/model_io.py. Tensors are stored in the device layouts (OHWI convolutions).
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import numpy as np

from .common import NUMPY_DTYPES, FormatError, align, atomic_write, crc32, read_exact
from .spec import ModelSpec, Node, SpecError, expected_tensors, float32_bits

MAGIC = b"MTM\0"
VERSION = 1
# magic, version, header_size, graph_size, graph_crc, data_offset, data_size, flags, header_crc
HEADER = struct.Struct("<4sHH6I")
HEADER_SIZE = HEADER.size  # 32
TENSOR_ALIGN = 16
TENSOR_DTYPES = ("float32", "float16", "int8")


def _json_ready(value: Any) -> Any:
    """Tuples become lists, numpy scalars Python numbers (json.dumps refuses numpy types)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _file_graph(node: Node) -> Node:
    """The graph as written: each quant_range also as its exact float32 bit patterns, which
    readers with single-precision float parsing (MicroPython on the boards) need."""
    if node["type"] == "Sequential":
        return {**node, "layers": [_file_graph(n) for n in node["layers"]]}
    if node["type"] == "Residual":
        short = node.get("shortcut")
        return {**node, "body": _file_graph(node["body"]),
                "shortcut": None if short is None else _file_graph(short)}  # fmt: skip
    if node.get("quant_range") is None:
        return node
    lo, hi = node["quant_range"]
    return {**node, "quant_range": [lo, hi], "quant_range_bits": [float32_bits(lo),
                                                                  float32_bits(hi)]}


def model_bytes(spec: ModelSpec) -> bytes:
    """The .mtm file for spec, as bytes."""
    spec.validate()
    tensors = spec.stored_tensors()
    table, offset = [], 0
    for name, t in tensors.items():
        entry: dict[str, Any] = {
            "name": name, "dtype": t.dtype.name, "shape": list(t.shape), "offset": offset,
            "nbytes": t.nbytes, "crc": crc32(t),
        }  # fmt: skip
        if t.dtype == np.int8:
            scale, zero_point = spec.quant[name]
            entry.update(scale=float(scale), zero_point=int(zero_point))
        table.append(entry)
        offset = align(offset + t.nbytes, TENSOR_ALIGN)
    doc: dict[str, Any] = {"model": _file_graph(spec.graph), "tensors": table}
    if spec.input_shape is not None:
        doc["input_shape"] = spec.input_shape
    if spec.meta:
        doc["meta"] = spec.meta
    graph = json.dumps(_json_ready(doc), ensure_ascii=False, separators=(",", ":")).encode()
    data_offset = align(HEADER_SIZE + len(graph), TENSOR_ALIGN)
    data_size = table[-1]["offset"] + table[-1]["nbytes"] if table else 0
    head = HEADER.pack(MAGIC, VERSION, HEADER_SIZE, len(graph), crc32(graph), data_offset,
                       data_size, 0, 0)[:-4]  # fmt: skip
    out = bytearray(data_offset + data_size)
    out[: HEADER_SIZE - 4] = head
    out[HEADER_SIZE - 4 : HEADER_SIZE] = struct.pack("<I", crc32(head))
    out[HEADER_SIZE : HEADER_SIZE + len(graph)] = graph
    for entry, t in zip(table, tensors.values()):
        start = data_offset + entry["offset"]
        out[start : start + t.nbytes] = t.tobytes()
    return bytes(out)


def write_model(path: str | os.PathLike[str], spec: ModelSpec) -> None:
    """Write spec as an .mtm file, replacing `path` atomically."""
    data = model_bytes(spec)
    with atomic_write(path) as f:
        f.write(data)


def _header(data: bytes, path: str | os.PathLike[str]) -> tuple[int, int, int, int]:
    if len(data) >= 4 and data[:4] != MAGIC:
        hint = " (that is an .mtd dataset file)" if data[:4] == b"MTD\0" else ""
        raise FormatError(path, f"not an .mtm model: magic {data[:4]!r}, expected {MAGIC!r}{hint}")
    if len(data) < HEADER_SIZE:
        raise FormatError(
            path, f"truncated: header needs {HEADER_SIZE} bytes, file has {len(data)}"
        )
    _, version, header_size, graph_size, graph_crc, data_offset, data_size, _flags, header_crc = (
        HEADER.unpack_from(data)
    )
    if version != VERSION:
        raise FormatError(path, f"unsupported .mtm version {version} (this reader reads {VERSION})")
    if crc32(data[: HEADER_SIZE - 4]) != header_crc:
        raise FormatError(path, "header CRC mismatch: the header is corrupted")
    if header_size != HEADER_SIZE or data_offset < HEADER_SIZE + graph_size:
        raise FormatError(path, "inconsistent header: sections overlap")
    return graph_size, graph_crc, data_offset, data_size


def read_model(path: str | os.PathLike[str]) -> ModelSpec:
    """The ModelSpec in an .mtm file, every section and tensor checked against its CRC."""
    with open(path, "rb") as f:
        return parse_model(f.read(), path)


def parse_model(data: bytes, path: str | os.PathLike[str] = "<bytes>") -> ModelSpec:
    """The ModelSpec in the bytes of an .mtm file."""
    graph_size, graph_crc, data_offset, data_size = _header(data[:HEADER_SIZE], path)
    end = data_offset + data_size
    if len(data) < end:
        raise FormatError(path, f"truncated: the model needs {end} bytes, file has {len(data)}")
    if len(data) > end:
        raise FormatError(path, f"{len(data) - end} unexpected bytes after the tensors")
    graph = data[HEADER_SIZE : HEADER_SIZE + graph_size]
    if crc32(graph) != graph_crc:
        raise FormatError(path, "graph section CRC mismatch: the layer list is corrupted")
    try:
        doc = json.loads(graph.decode())
        table = doc["tensors"]
        tensors, quant = {}, {}
        for entry in table:
            name, t = _tensor(data, data_offset, data_size, entry, path)
            tensors[name] = t
            if "scale" in entry:
                quant[name] = (float(entry["scale"]), int(entry.get("zero_point", 0)))
        spec = ModelSpec(doc["model"], tensors, doc.get("input_shape"), doc.get("meta", {}),
                         quant)  # fmt: skip
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise FormatError(path, f"graph section is malformed: {type(e).__name__}: {e}") from None
    except SpecError as e:
        raise FormatError(path, f"invalid model: {e}") from None
    want = expected_tensors(spec.graph)
    if set(want) != set(tensors):
        raise FormatError(
            path, f"tensors {sorted(tensors)} do not match the layers' {sorted(want)}"
        )
    return spec


def _tensor(
    data: bytes, data_offset: int, data_size: int, entry: dict[str, Any],
    path: str | os.PathLike[str],
) -> tuple[str, np.ndarray]:  # fmt: skip
    name, dtype, shape = entry["name"], entry["dtype"], tuple(entry["shape"])
    if dtype not in TENSOR_DTYPES:
        raise FormatError(path, f"tensor {name}: unknown dtype {dtype!r}")
    nbytes, offset = int(entry["nbytes"]), int(entry["offset"])
    if math.prod(shape) * NUMPY_DTYPES[dtype].itemsize != nbytes:
        raise FormatError(path, f"tensor {name}: {nbytes} bytes do not hold {dtype} {shape}")
    if offset < 0 or offset + nbytes > data_size:
        raise FormatError(path, f"tensor {name}: bytes {offset}..{offset + nbytes} outside data")
    raw = data[data_offset + offset : data_offset + offset + nbytes]
    if crc32(raw) != entry["crc"]:
        raise FormatError(path, f"tensor {name}: CRC mismatch (its data is corrupted)")
    return name, np.frombuffer(raw, dtype=NUMPY_DTYPES[dtype]).reshape(shape).copy()


def read_model_graph(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Just the JSON graph section (layers, tensor table, input shape, meta), checked."""
    with open(path, "rb") as f:
        graph_size, graph_crc, _, _ = _header(f.read(HEADER_SIZE), path)
        graph = read_exact(f, graph_size, path, "graph section")
    if crc32(graph) != graph_crc:
        raise FormatError(path, "graph section CRC mismatch: the layer list is corrupted")
    doc: dict[str, Any] = json.loads(graph.decode())
    return doc
