"""`.mtm` models: a JSON graph (layers, configs, tensor table) and CRC-checked raw tensors.

The byte layout is in docs/formats.md; the device side is micropython_lib's
mcutrain/model_io.py. Tensors are stored in the device layouts (OHWI convolutions).
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any, TypeGuard

import numpy as np

from .common import (
    NUMPY_DTYPES,
    SCALE_RANGE,
    FormatError,
    align,
    atomic_write,
    crc32,
    parse_json_section,
    read_exact,
)
from .spec import (
    ModelSpec,
    Node,
    Shape,
    SpecError,
    check_size,
    expected_dtypes,
    expected_tensors,
    float32_bits,
    normalize_node,
)
from .strict_json import json_problem

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
    graph = json.dumps(_json_ready(doc), ensure_ascii=False, separators=(",", ":"),
                       allow_nan=False).encode()  # fmt: skip
    problem = json_problem(graph)
    if problem is not None:
        raise SpecError(f"the model does not make a valid graph section: {problem}")
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
    """The ModelSpec in the bytes of an .mtm file, checked by the rules of docs/formats.md."""
    graph_size, graph_crc, data_offset, data_size = _header(data[:HEADER_SIZE], path)
    end = data_offset + data_size
    if len(data) < end:
        raise FormatError(path, f"truncated: the model needs {end} bytes, file has {len(data)}")
    if len(data) > end:
        raise FormatError(path, f"{len(data) - end} unexpected bytes after the tensors")
    graph = data[HEADER_SIZE : HEADER_SIZE + graph_size]
    if crc32(graph) != graph_crc:
        raise FormatError(path, "graph section CRC mismatch: the layer list is corrupted")
    doc = parse_json_section(graph, path, "graph section")
    try:
        model, input_shape, meta = _check_document(doc)
        want = expected_tensors(model)
        dtypes = expected_dtypes(model)
        entries = _check_table(doc["tensors"], want, dtypes, data_size)
    except SpecError as e:
        raise FormatError(path, f"invalid model: {e}") from None
    tensors, quant = {}, {}
    for entry in entries:
        name = entry["name"]
        start = data_offset + entry["offset"]
        raw = data[start : start + entry["nbytes"]]
        if crc32(raw) != entry["crc"]:
            raise FormatError(path, f"tensor {name}: CRC mismatch (its data is corrupted)")
        t = np.frombuffer(raw, dtype=NUMPY_DTYPES[entry["dtype"]]).reshape(want[name]).copy()
        tensors[name] = t
        if entry["dtype"] == "int8":
            quant[name] = (float(entry["scale"]), int(entry["zero_point"]))
    return ModelSpec(model, tensors, input_shape, meta, quant)


def _check_document(doc: dict[str, Any]) -> tuple[Node, Shape | None, dict[str, Any]]:
    """(normalized layer tree, input shape, meta) of a graph section; SpecError if invalid."""
    for key in ("model", "tensors"):
        if key not in doc:
            raise SpecError(f"the graph section has no {key!r}")
    if not isinstance(doc["model"], dict) or doc["model"].get("type") != "Sequential":
        raise SpecError("the top layer must be a Sequential")
    model = normalize_node(doc["model"])
    input_shape = doc.get("input_shape")
    if input_shape is not None:
        if not isinstance(input_shape, list) or not 1 <= len(input_shape) <= 3:
            raise SpecError(f"input_shape must be a list of 1 to 3 sizes, got {input_shape!r}")
        input_shape = tuple(check_size(d, "input_shape") for d in input_shape)
    meta = doc.get("meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise SpecError("meta must be a JSON object")
    return model, input_shape, meta


def _check_table(
    table: Any, want: dict[str, Shape], dtypes: dict[str, str], data_size: int
) -> list[dict[str, Any]]:
    """The tensor table's entries, each checked: exactly the layers' tensors, in their shapes
    and dtypes, inside the data section; SpecError names the first entry that is wrong."""
    if not isinstance(table, list):
        raise SpecError("'tensors' must be a list")
    seen: set[str] = set()
    for i, e in enumerate(table):
        if not isinstance(e, dict):
            raise SpecError(f"tensor entry {i} is not an object")
        name = e.get("name")
        if not isinstance(name, str) or name not in want:
            raise SpecError(f"tensor entry {i}: {name!r} is not a tensor of the layers")
        if name in seen:
            raise SpecError(f"tensor {name} is listed twice")
        seen.add(name)
        shape = e.get("shape")
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape) or (
            tuple(shape) != want[name]
        ):
            raise SpecError(f"tensor {name}: shape {shape!r}, the layer needs {list(want[name])}")
        if e.get("dtype") != dtypes[name]:
            raise SpecError(f"tensor {name}: dtype {e.get('dtype')!r}, the layer stores "
                            f"{dtypes[name]}")  # fmt: skip
        for key in ("offset", "nbytes", "crc"):
            if not _is_int(e.get(key)) or not 0 <= e[key] < 2**32:
                raise SpecError(f"tensor {name}: {key} must be a u32, got {e.get(key)!r}")
        nbytes = math.prod(want[name]) * NUMPY_DTYPES[dtypes[name]].itemsize
        if e["nbytes"] != nbytes or e["offset"] + nbytes > data_size:
            raise SpecError(f"tensor {name}: {e['nbytes']} bytes at {e['offset']} do not hold "
                            f"{dtypes[name]} {list(want[name])} inside {data_size}")  # fmt: skip
        if dtypes[name] == "int8":
            scale, zp = e.get("scale"), e.get("zero_point")
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
                SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]
            ):
                raise SpecError(f"tensor {name}: scale {scale!r} is not in "
                                f"[{SCALE_RANGE[0]}, {SCALE_RANGE[1]}]")  # fmt: skip
            if not _is_int(zp) or not -128 <= zp <= 127:
                raise SpecError(f"tensor {name}: zero_point {zp!r} is not in -128..127")
    missing = sorted(set(want) - seen)
    if missing:
        raise SpecError(f"the tensor table lacks {missing}")
    return list(table)


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def read_model_graph(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Just the JSON graph section (layers, tensor table, input shape, meta), checked."""
    with open(path, "rb") as f:
        graph_size, graph_crc, _, _ = _header(f.read(HEADER_SIZE), path)
        graph = read_exact(f, graph_size, path, "graph section")
    if crc32(graph) != graph_crc:
        raise FormatError(path, "graph section CRC mismatch: the layer list is corrupted")
    return parse_json_section(graph, path, "graph section")
