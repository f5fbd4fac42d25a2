# .mtm models on the device: build the layers a file lists and read its tensors straight into
# their parameters; save a model so that a power cut never leaves a broken file behind.
# Byte layout: docs/formats.md; host side: mcutrain.formats.
import binascii
import json
import os
import struct

from .dataset import (  # noqa: F401  FormatError is raised here too
    _MAX_SIZE,
    _SCALE_MAX,
    _SCALE_MIN,
    FormatError,
    _fail,
    parse_json,
    readinto_all,
)

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
    return parse_json(graph, path, "graph section"), data_offset, data_size


# -- the graph's rules (docs/formats.md; the host's mcutrain/formats/spec.py and mtm.py) ----

_CONV = {"stride": 1, "padding": 0, "groups": 1, "bias": True}
_POOL = {"stride": None, "padding": 0}
_LAYERS = {  # type -> (required config keys, defaults), in constructor order
    "Linear": (("in_features", "out_features"), {"bias": True}),
    "Conv2d": (("in_channels", "out_channels", "kernel_size"), _CONV),
    "Conv1d": (("in_channels", "out_channels", "kernel_size"), _CONV),
    "BatchNorm2d": (("num_features",), {"eps": 1e-5, "momentum": 0.1}),
    "ReLU": ((), {}),
    "ReLU6": ((), {}),
    "MaxPool2d": (("kernel_size",), _POOL),
    "AvgPool2d": (("kernel_size",), _POOL),
    "GlobalAvgPool": ((), {}),
    "Flatten": ((), {}),
    "Softmax": ((), {}),
    "Convert": (("dtype",), {}),
}
_ORDER = ("kernel_size", "stride", "padding", "groups", "bias", "eps", "momentum")
_QUANT = ("Linear", "Conv2d", "Conv1d")
_PLAIN_DTYPES = ("float32", "float16", "int8")


class _Bad(Exception):
    pass


_MAX_LAYER_SIZE = 0xFFFF  # every config size but Linear's features (those: _MAX_SIZE)


def _size(v, what, lo=1, hi=_MAX_SIZE):
    if type(v) is int and lo <= v <= hi:
        return v
    raise _Bad("%s must be an int in %d..%d" % (what, lo, hi))


def _pair(v, what, lo=1):
    hi = _MAX_LAYER_SIZE
    if type(v) is list:
        if len(v) != 2:
            raise _Bad("%s must be an int or an (h, w) pair" % what)
        return (_size(v[0], what, lo, hi), _size(v[1], what, lo, hi))
    v = _size(v, what, lo, hi)
    return (v, v)


def _single(v, what, lo=1, hi=_MAX_LAYER_SIZE):
    if type(v) is list and len(v) == 1:
        v = v[0]
    return _size(v, what, lo, hi)


def _number(v, what, lo, hi):
    if type(v) not in (int, float) or not lo <= v <= hi:
        raise _Bad("%s must be a number in [%g, %g]" % (what, lo, hi))
    return v


def _f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def _finite(v):
    return v - v == 0


def _quant_range(r, bits):
    # (min, max) as float32 values, the exact bit patterns winning (see docs/formats.md).
    if type(r) is not list or len(r) != 2 or type(r[0]) not in (int, float) or type(
            r[1]) not in (int, float):
        raise _Bad("quant_range must be [min, max] numbers")
    got = (_f32(r[0]), _f32(r[1]))
    if bits is not None:
        ok = type(bits) is list and len(bits) == 2
        for b in bits if ok else ():
            ok = ok and type(b) is int and 0 <= b < (1 << 32)
        if not ok:
            raise _Bad("quant_range_bits must be two u32 numbers")
        exact = struct.unpack("<2f", struct.pack("<2I", bits[0], bits[1]))
        for e, g in zip(exact, got):
            if not (_finite(e) and _finite(g) and abs(e - g) <= 1e-30 + 1e-5 * abs(g)):
                raise _Bad("quant_range_bits do not match quant_range")
        got = exact
    if not (_finite(got[0]) and _finite(got[1]) and got[0] <= got[1]):
        raise _Bad("quant_range must be finite [min, max] with min <= max")
    return got


def _leaf(node, kind):
    # (constructor keyword arguments, layer dtype) of a leaf, checked as the host's
    # spec.normalize_node checks it.
    required, defaults = _LAYERS[kind]
    config = node.get("config")
    if config is None:
        config = {}
    if type(config) is not dict:
        raise _Bad("config must be an object")
    dtype = node.get("dtype", "float32")
    if kind != "Convert" and "dtype" in config:
        dtype = config["dtype"]
    for k in config:
        if k not in required and k not in defaults and (k != "dtype" or kind == "Convert"):
            raise _Bad("config has unknown key %r" % k)
    kw = {}
    for k in required:
        if k not in config:
            raise _Bad("config misses %r" % k)
        kw[k] = config[k]
    for k in defaults:
        kw[k] = config.get(k, defaults[k])
    if kind in ("Conv2d", "MaxPool2d", "AvgPool2d"):
        kw["kernel_size"] = _pair(kw["kernel_size"], "kernel_size")
        s = kw["stride"]
        kw["stride"] = kw["kernel_size"] if s is None else _pair(s, "stride")
        kw["padding"] = _pair(kw["padding"], "padding", 0)
        if kind != "Conv2d" and (2 * kw["padding"][0] > kw["kernel_size"][0]
                                 or 2 * kw["padding"][1] > kw["kernel_size"][1]):
            raise _Bad("padding is more than half the kernel")
    elif kind == "Conv1d":
        for k in ("kernel_size", "stride", "padding"):
            kw[k] = _single(kw[k], k, 0 if k == "padding" else 1)
    for k in ("in_features", "out_features", "in_channels", "out_channels", "groups",
              "num_features"):
        if k in kw:
            kw[k] = _single(kw[k], k, 1, _MAX_SIZE if kind == "Linear" else _MAX_LAYER_SIZE)
    if "bias" in kw and type(kw["bias"]) is not bool:
        raise _Bad("bias must be true or false")
    if kind in ("Conv2d", "Conv1d") and (kw["in_channels"] % kw["groups"]
                                        or kw["out_channels"] % kw["groups"]):
        raise _Bad("channels not divisible by groups")
    if kind == "BatchNorm2d":
        _number(kw["eps"], "eps", 1e-30, 1e30)
        _number(kw["momentum"], "momentum", 0, 1)
    if kind == "Convert":
        if kw["dtype"] not in _PLAIN_DTYPES:
            raise _Bad("Convert to %r" % (kw["dtype"],))
        dtype = "float32"
    allowed = _PLAIN_DTYPES + ("mixed",) if kind in _QUANT else _PLAIN_DTYPES
    if type(dtype) is not str or dtype not in allowed:
        raise _Bad("dtype %r not one of %s" % (dtype, ", ".join(allowed)))
    if dtype != "float32":
        kw["dtype"] = dtype
    if type(node.get("trainable", True)) is not bool:
        raise _Bad("trainable must be true or false")
    return kw, dtype


def _params(kind, kw, dtype):
    # {name: (shape, dtype)} of a leaf's tensors, as the device stores them.
    if kind == "Linear":
        w = (kw["out_features"], kw["in_features"])
    elif kind == "Conv2d":
        w = (kw["out_channels"],) + kw["kernel_size"] + (kw["in_channels"] // kw["groups"],)
    elif kind == "Conv1d":
        w = (kw["out_channels"], kw["kernel_size"], kw["in_channels"] // kw["groups"])
    elif kind == "BatchNorm2d":
        n = (kw["num_features"],)
        return {k: (n, "float32") for k in ("weight", "bias", "running_mean", "running_var")}
    else:
        return {}
    quant = dtype in ("int8", "mixed")
    out = {"weight": (w, "int8" if quant else dtype)}
    if kw["bias"]:
        out["bias"] = ((w[0],), "float32" if quant else dtype)
    if quant:
        out["weight_scale"] = ((w[0],), "float32")
    return out


def _check_node(node, prefix, want):
    # A checked copy of the layer tree ("kw", "dtype" added to leaves); collects the tensors
    # every leaf needs into want.
    if type(node) is not dict or type(node.get("type")) is not str:
        raise _Bad("%s: a layer must be an object with a 'type'" % (prefix or "model"))
    kind = node["type"]
    if kind == "Sequential":
        layers = node.get("layers")
        if type(layers) is not list:
            raise _Bad("%s: Sequential needs a 'layers' list" % (prefix or "model"))
        return {"type": kind, "layers": [_check_node(n, "%s%d." % (prefix, i), want)
                                         for i, n in enumerate(layers)]}
    if kind == "Residual":
        if "body" not in node:
            raise _Bad("%s: Residual needs a 'body'" % prefix)
        short = node.get("shortcut")
        return {"type": kind, "body": _check_node(node["body"], prefix + "body.", want),
                "shortcut": None if short is None else _check_node(short, prefix + "shortcut.",
                                                                   want)}
    if kind not in _LAYERS:
        raise _Bad("%s: unknown layer type %r" % (prefix, kind))
    try:
        kw, dtype = _leaf(node, kind)
        r = node.get("quant_range")
        if r is not None:
            if not ((kind == "Convert" and kw["dtype"] == "int8")
                    or (kind in _QUANT and dtype in ("int8", "mixed"))):
                raise _Bad("quant_range is only for int8/mixed Linear/Conv and Convert to int8")
            r = _quant_range(r, node.get("quant_range_bits"))
    except _Bad as e:
        raise _Bad("%s (%s): %s" % (prefix.rstrip(".") or "model", kind, e.args[0]))
    for name, spec in _params(kind, kw, dtype).items():
        want[prefix + name] = spec
    return {"type": kind, "kw": kw, "trainable": node.get("trainable", True), "range": r}


def _check_doc(doc):
    # (checked layer tree, {name: (shape, dtype)}, tensor table) of a graph section.
    for key in ("model", "tensors"):
        if key not in doc:
            raise _Bad("the graph section has no %r" % key)
    model = doc["model"]
    if type(model) is not dict or model.get("type") != "Sequential":
        raise _Bad("the top layer must be a Sequential")
    want = {}
    tree = _check_node(model, "", want)
    shape = doc.get("input_shape")
    if shape is not None:
        if type(shape) is not list or not 1 <= len(shape) <= 3:
            raise _Bad("input_shape must be a list of 1 to 3 sizes")
        for d in shape:
            _size(d, "input_shape")
    if doc.get("meta") is not None and type(doc["meta"]) is not dict:
        raise _Bad("meta must be a JSON object")
    return tree, want, doc["tensors"]


def _check_table(table, want, data_size):
    if type(table) is not list:
        raise _Bad("'tensors' must be a list")
    seen = {}
    for i, e in enumerate(table):
        if type(e) is not dict:
            raise _Bad("tensor entry %d is not an object" % i)
        name = e.get("name")
        if type(name) is not str or name not in want:
            raise _Bad("tensor entry %d: %r is not a tensor of the layers" % (i, name))
        if name in seen:
            raise _Bad("tensor %s is listed twice" % name)
        seen[name] = True
        shape, dtype = want[name]
        got = e.get("shape")
        ok = type(got) is list and len(got) == len(shape)
        for a, b in zip(got, shape) if ok else ():
            ok = ok and type(a) is int and a == b
        if not ok:
            raise _Bad("tensor %s: shape %r, the layer needs %r" % (name, got, list(shape)))
        if e.get("dtype") != dtype:
            raise _Bad("tensor %s: dtype %r, the layer stores %s" % (name, e.get("dtype"), dtype))
        for key in ("offset", "nbytes", "crc"):
            v = e.get(key)
            if type(v) is not int or not 0 <= v < (1 << 32):
                raise _Bad("tensor %s: %s must be a u32" % (name, key))
        nbytes = _ITEMSIZE[dtype]
        for d in shape:
            nbytes *= d
        if e["nbytes"] != nbytes or e["offset"] + nbytes > data_size:
            raise _Bad("tensor %s: its bytes do not fit the data section" % name)
        if dtype == "int8":
            scale, zp = e.get("scale"), e.get("zero_point")
            if type(scale) not in (int, float) or not _SCALE_MIN <= scale <= _SCALE_MAX:
                raise _Bad("tensor %s: scale %r is out of range" % (name, scale))
            if type(zp) is not int or not -128 <= zp <= 127:
                raise _Bad("tensor %s: zero_point %r is not in -128..127" % (name, zp))
    for name in want:
        if name not in seen:
            raise _Bad("the tensor table lacks %s" % name)


def _build(node, mt, path):
    kind = node["type"]
    if kind == "Sequential":
        return mt.Sequential(*[_build(n, mt, path) for n in node["layers"]])
    if kind == "Residual":
        short = node["shortcut"]
        return mt.Residual(_build(node["body"], mt, path),
                           None if short is None else _build(short, mt, path))
    cls = getattr(mt, kind, None)
    if cls is None:
        _fail(path, "layer type %s is not in this firmware" % kind)
    try:
        layer = cls(**node["kw"])
        if node["trainable"] is False:
            layer.trainable = False
        if node["range"] is not None:
            layer.quant_range = node["range"]
    except (TypeError, ValueError) as e:  # what the host's rules let through but C refuses
        _fail(path, "%s layer: %s" % (kind, e))
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


def _load_tensor(f, path, model, e, data_offset):
    name, nbytes = e["name"], e["nbytes"]
    t = _find(model, name, path)
    if list(t.shape) != e["shape"] or t.dtype != e["dtype"]:
        _fail(path, "tensor %s is %s %s in the file but %s %s in the layer"
              % (name, e["dtype"], e["shape"], t.dtype, tuple(t.shape)))
    f.seek(data_offset + e["offset"])
    if readinto_all(f, t, nbytes) != nbytes:
        _fail(path, "truncated in tensor %s" % name)
    if binascii.crc32(t) != e["crc"]:
        _fail(path, "tensor %s: CRC mismatch (its data is corrupted)" % name)
    if e["dtype"] == "int8":
        t.scale = e["scale"]
        t.zero_point = e["zero_point"]


def load(path):
    """The model in an .mtm file: layers built by name and config, tensors read into their
    parameters, every section CRC-checked. The whole graph and tensor table are checked
    against docs/formats.md before any layer is built, so a damaged or crafted file gives a
    FormatError saying what is wrong, never another exception or an oversized allocation."""
    import mcutrain as mt

    f = open(path, "rb")
    try:
        doc, data_offset, data_size = _read_graph(f, path)
        try:
            tree, want, table = _check_doc(doc)
            _check_table(table, want, data_size)
        except _Bad as e:
            _fail(path, "invalid model: %s" % e.args[0])
        del doc, want
        model = _build(tree, mt, path)
        for e in table:
            _load_tensor(f, path, model, e, data_offset)
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
    over path only when complete, so an interrupted save or a power cut leaves the old model
    or the new one, never a mix (a stale .tmp is removed by the next save and at boot).
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
    _remove(tmp)  # a stale one from an earlier, interrupted save
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
        f.flush()
        f.close()  # littlefs commits the file here
        _sync()
        os.rename(tmp, path)  # atomic on littlefs: path is the old or the new model
        _sync()
    except BaseException:
        f.close()
        _remove(tmp)
        raise


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _sync():
    sync = getattr(os, "sync", None)
    if sync is not None:
        sync()
