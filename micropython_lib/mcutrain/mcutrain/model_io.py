# .mtm models on the device: build the layers a file lists and read its tensors straight into
# their parameters; save a model so that a power cut never leaves a broken file behind.
# Byte layout: docs/formats.md; host side: mcutrain.formats.
import binascii
import json
import os
import struct

from .dataset import FormatError, _fail, readinto_all  # noqa: F401  FormatError is raised here too

MAGIC = b"MTM\0"
VERSION = 1
_HEADER = "<4sHH6I"
_HEADER_SIZE = 32
_ITEMSIZE = {"float32": 4, "float16": 2, "int8": 1}
_TENSORS = ("weight", "bias", "running_mean", "running_var", "weight_scale")  # int8 layers: per-row scales
_ALIGN = 16


def _read_graph(f, path):
    head = f.read(_HEADER_SIZE)
    if len(head) >= 4 and head[:4] != MAGIC:
        _fail(path, "not an .mtm model: magic %r, expected %r" % (head[:4], MAGIC))
    if len(head) < _HEADER_SIZE:
        _fail(path, "truncated: header needs %d bytes, file has %d" % (_HEADER_SIZE, len(head)))
    h = struct.unpack(_HEADER, head)
    if h[1] != VERSION:
        _fail(path, "unsupported .mtm version %d (this reader reads %d)" % (h[1], VERSION))
    if binascii.crc32(memoryview(head)[: _HEADER_SIZE - 4]) != h[8]:
        _fail(path, "header CRC mismatch: the header is corrupted")
    graph_size, graph_crc, data_offset, data_size = h[3:7]
    if h[2] != _HEADER_SIZE or data_offset < _HEADER_SIZE + graph_size:
        _fail(path, "inconsistent header: sections overlap")
    end = data_offset + data_size
    have = f.seek(0, 2)
    if have < end:
        _fail(path, "truncated: the model needs %d bytes, file has %d" % (end, have))
    if have > end:
        _fail(path, "%d unexpected bytes after the tensors" % (have - end))
    f.seek(_HEADER_SIZE)
    graph = f.read(graph_size)
    if binascii.crc32(graph) != graph_crc:
        _fail(path, "graph section CRC mismatch: the layer list is corrupted")
    try:
        doc = json.loads(graph)
    except ValueError:
        _fail(path, "graph section is not JSON")
    return doc, data_offset, data_size


def _build(node, mt, path):
    kind = node["type"]
    if kind == "Sequential":
        return mt.Sequential(*[_build(n, mt, path) for n in node["layers"]])
    if kind == "Residual":
        short = node.get("shortcut")
        return mt.Residual(_build(node["body"], mt, path),
                           None if short is None else _build(short, mt, path))
    cls = getattr(mt, kind, None)
    if cls is None:
        _fail(path, "layer type %s is not in this firmware" % kind)
    kw = {}
    for k, v in node.get("config", {}).items():
        kw[k] = tuple(v) if isinstance(v, list) else v
    dtype = node.get("dtype", "float32")
    if dtype != "float32" and "dtype" not in kw:
        kw["dtype"] = dtype
    layer = cls(**kw)
    if node.get("trainable", True) is False:
        layer.trainable = False
    r = node.get("quant_range")
    if r is not None:
        # The bit patterns are exact; a single-precision float parser is not.
        b = node.get("quant_range_bits")
        try:
            if b is not None:
                r = struct.unpack("<2f", struct.pack("<2I", b[0], b[1]))
            layer.quant_range = (r[0], r[1])
        except (AttributeError, TypeError, ValueError, IndexError, OverflowError):
            _fail(path, "%s layer: bad quant_range %r" % (kind, node["quant_range"]))
    return layer


def _find(model, name, path):
    # "3.body.0.weight" -> model[3].body[0].weight, as the device's state_dict names it.
    obj = model
    parts = name.split(".")
    try:
        for p in parts[:-1]:
            obj = obj[int(p)] if p.isdigit() else getattr(obj, p)
        t = getattr(obj, parts[-1])
    except (AttributeError, IndexError, TypeError):
        t = None
    if t is None:
        _fail(path, "tensor %s has no place in the model" % name)
    return t


def _load_tensor(f, path, model, e, data_offset, data_size):
    name, shape, dtype = e["name"], tuple(e["shape"]), e["dtype"]
    t = _find(model, name, path)
    if tuple(t.shape) != shape or t.dtype != dtype:
        _fail(path, "tensor %s is %s %s in the file but %s %s in the layer"
              % (name, dtype, shape, t.dtype, tuple(t.shape)))
    offset, nbytes = e["offset"], e["nbytes"]
    if nbytes != t.size * _ITEMSIZE[dtype] or offset + nbytes > data_size:
        _fail(path, "tensor %s: inconsistent size or offset" % name)
    f.seek(data_offset + offset)
    if readinto_all(f, t, nbytes) != nbytes:
        _fail(path, "truncated in tensor %s" % name)
    if binascii.crc32(t) != e["crc"]:
        _fail(path, "tensor %s: CRC mismatch (its data is corrupted)" % name)
    if dtype == "int8":
        t.scale = e["scale"]
        t.zero_point = e["zero_point"]


def load(path):
    """The model in an .mtm file: layers built by name and config, tensors read into their
    parameters, every section CRC-checked (FormatError says what is wrong)."""
    import mcutrain as mt

    f = open(path, "rb")
    try:
        doc, data_offset, data_size = _read_graph(f, path)
        try:
            model = _build(doc["model"], mt, path)
            table = doc["tensors"]
        except (KeyError, TypeError) as e:
            _fail(path, "graph section is malformed (%r)" % (e,))
        for e in table:
            _load_tensor(f, path, model, e, data_offset, data_size)
    finally:
        f.close()
    return model


def _describe(layer, prefix, tensors):
    # The graph node of a layer (JSON-ready), collecting (name, Tensor) of its parameters.
    kind = type(layer).__name__
    if kind == "Sequential":
        return {"type": kind, "layers": [_describe(layer[i], "%s%d." % (prefix, i), tensors)
                                         for i in range(len(layer))]}
    if kind == "Residual":
        s = layer.shortcut
        return {"type": kind, "body": _describe(layer.body, prefix + "body.", tensors),
                "shortcut": None if s is None else _describe(s, prefix + "shortcut.", tensors)}
    config = layer.config()
    node = {"type": kind, "config": config}
    # Parameterless layers take their input's dtype (None until they have run).
    dtype = getattr(layer, "dtype", None)
    if dtype not in (None, "float32") and "dtype" not in config:
        node["dtype"] = dtype
    if not getattr(layer, "trainable", True):
        node["trainable"] = False
    r = getattr(layer, "quant_range", None)
    if r is not None:
        node["quant_range"] = [r[0], r[1]]
        node["quant_range_bits"] = list(struct.unpack("<2I", struct.pack("<2f", r[0], r[1])))
    for name in _TENSORS:
        t = getattr(layer, name, None)
        if t is not None:
            tensors.append((prefix + name, t))
    return node


def save(model, path, input_shape=None, meta=None):
    """Write model as an .mtm file. Atomic: the file goes to path + ".tmp" first and is renamed
    over path only when complete, so an interrupted save leaves the old model intact.
    input_shape (one sample, channels-last) defaults to what the model last ran on."""
    tensors = []
    doc = {"model": _describe(model, "", tensors), "tensors": []}
    offset = 0
    for name, t in tensors:
        nbytes = t.size * _ITEMSIZE[t.dtype]
        e = {"name": name, "dtype": t.dtype, "shape": list(t.shape), "offset": offset,
             "nbytes": nbytes, "crc": binascii.crc32(t)}
        if t.dtype == "int8":
            e["scale"] = t.scale
            e["zero_point"] = t.zero_point
        doc["tensors"].append(e)
        offset = (offset + nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
    if input_shape is None and getattr(model, "input_shape", None):
        input_shape = model.input_shape[1:]  # the last batch it planned for, minus the batch
    if input_shape is not None:
        doc["input_shape"] = list(input_shape)
    if meta:
        doc["meta"] = meta
    graph = json.dumps(doc).encode()
    data_offset = (_HEADER_SIZE + len(graph) + _ALIGN - 1) // _ALIGN * _ALIGN
    last = doc["tensors"][-1] if doc["tensors"] else None
    data_size = last["offset"] + last["nbytes"] if last else 0
    head = struct.pack("<4sHH5I", MAGIC, VERSION, _HEADER_SIZE, len(graph),
                       binascii.crc32(graph), data_offset, data_size, 0)
    tmp = path + ".tmp"
    f = open(tmp, "wb")
    try:
        f.write(head)
        f.write(struct.pack("<I", binascii.crc32(head)))
        f.write(graph)
        pos = _HEADER_SIZE + len(graph)
        for (name, t), e in zip(tensors, doc["tensors"]):
            start = data_offset + e["offset"]
            f.write(bytes(start - pos))
            f.write(t)
            pos = start + e["nbytes"]
        f.close()
        os.rename(tmp, path)
    except BaseException:
        f.close()
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
