"""Model specs: the layer graph of docs/device-api.md as JSON-ready dicts, plus named tensors.

A graph node is one of
    {"type": "Conv2d", "config": {...constructor arguments...}, "dtype": "float32",
     "trainable": True, "quant_range": (min, max)}   (dtype, trainable, quant_range optional)
    {"type": "Sequential", "layers": [node, ...]}
    {"type": "Residual", "body": node, "shortcut": node or None}
Tensor names follow the device's state_dict: "0.weight", "3.body.1.running_mean".
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .common import NUMPY_DTYPES

Node = dict[str, Any]
Shape = tuple[int, ...]

LAYER_DTYPES = ("float32", "float16", "int8", "mixed")
_CONV = {"stride": 1, "padding": 0, "groups": 1, "bias": True}
_POOL = {"stride": None, "padding": 0}
# type -> (required config keys, defaults); order is the constructor's argument order
LAYERS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
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
# Layers kept in int8 (or mixed) with a per-output-channel weight_scale tensor and a quant_range.
QUANT_LAYERS = ("Linear", "Conv2d", "Conv1d")
QUANT_DTYPES = ("int8", "mixed")
CONVERT_DTYPES = ("float32", "float16", "int8")
CONTAINERS = ("Sequential", "Residual")
EPS_RANGE = (1e-30, 1e30)  # BatchNorm2d eps, kept well inside float32's normal range
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


class SpecError(ValueError):
    """A model graph or its tensors do not describe a valid mcutrain model."""


# Limits of docs/formats.md, as the device constructors have them: a shape dim or Linear's
# in/out features at most MAX_SIZE, every other size in a layer config at most MAX_LAYER_SIZE.
MAX_SIZE = 2**24 - 1
MAX_LAYER_SIZE = 2**16 - 1
# Parameterless layers (and BatchNorm2d, whose tensors stay float32) run in their input's dtype.
PLAIN_DTYPES = ("float32", "float16", "int8")


def check_size(value: Any, where: str, lo: int = 1, hi: int = MAX_SIZE) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if lo <= value <= hi:
            return int(value)
        raise SpecError(f"{where}: {value} is outside {lo}..{hi}")
    raise SpecError(f"{where}: expected an int, got {value!r}")


def _pair(value: Any, where: str, lo: int = 1) -> tuple[int, int]:
    hi = MAX_LAYER_SIZE
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return check_size(value[0], where, lo, hi), check_size(value[1], where, lo, hi)
    if isinstance(value, (list, tuple)):
        raise SpecError(f"{where}: expected an int or an (h, w) pair, got {value!r}")
    v = check_size(value, where, lo, hi)
    return v, v


def _single(value: Any, where: str, lo: int = 1, hi: int = MAX_LAYER_SIZE) -> int:
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    return check_size(value, where, lo, hi)


def _number(value: Any, where: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SpecError(f"{where}: expected a number, got {value!r}")
    if not lo <= value <= hi:  # compared as given: a huge int never becomes a float here
        raise SpecError(f"{where}: {value} is outside [{lo}, {hi}]")
    return float(value)


def layer(type_: str, dtype: str = "float32", trainable: bool = True, **config: Any) -> Node:
    """A leaf node, e.g. layer("Conv2d", in_channels=1, out_channels=8, kernel_size=3);
    layer("Convert", dtype="int8") converts to dtype."""
    if type_ == "Convert":
        config["dtype"], dtype = dtype, "float32"
    node: Node = {"type": type_, "config": config}
    if dtype != "float32":
        node["dtype"] = dtype
    if not trainable:
        node["trainable"] = False
    return normalize_node(node)


def sequential(*layers: Node) -> Node:
    return normalize_node({"type": "Sequential", "layers": list(layers)})


def residual(body: Node, shortcut: Node | None = None) -> Node:
    """y = body(x) + shortcut(x); the identity shortcut when None."""
    return normalize_node({"type": "Residual", "body": body, "shortcut": shortcut})


def normalize_node(node: Node, where: str = "model") -> Node:
    """A checked copy with defaults filled in and sizes as ints or (h, w) tuples."""
    if not isinstance(node, Mapping) or "type" not in node:
        raise SpecError(f"{where}: a layer must be an object with a 'type', got "
                        f"{type(node).__name__}")  # fmt: skip
    kind = node["type"]
    if kind == "Sequential":
        layers = node.get("layers")
        if not isinstance(layers, list):
            raise SpecError(f"{where}: Sequential needs a 'layers' list")
        return {"type": kind, "layers": [
            normalize_node(n, f"{where}[{i}]") for i, n in enumerate(layers)]}  # fmt: skip
    if kind == "Residual":
        if "body" not in node:
            raise SpecError(f"{where}: Residual needs a 'body'")
        short = node.get("shortcut")
        return {
            "type": kind,
            "body": normalize_node(node["body"], f"{where}.body"),
            "shortcut": None if short is None else normalize_node(short, f"{where}.shortcut"),
        }
    if kind == "Add":
        raise SpecError(f"{where}: write a residual Add as Residual(body, shortcut)")
    if not isinstance(kind, str) or kind not in LAYERS:
        known = ", ".join([*LAYERS, *CONTAINERS])
        raise SpecError(f"{where}: unknown layer type {kind!r} (known: {known})")
    required, defaults = LAYERS[kind]
    config = node.get("config")
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise SpecError(f"{where}: {kind} config must be an object, got {config!r}")
    config = dict(config)
    # A device layer's config() may hold its dtype; Convert's config dtype is what it converts to.
    dtype = "float32" if kind == "Convert" else config.pop("dtype", node.get("dtype", "float32"))
    missing = [k for k in required if k not in config]
    unknown = sorted(set(config) - set(required) - set(defaults))
    if missing or unknown:
        raise SpecError(f"{where}: {kind} config missing {missing}, unknown {unknown}")
    merged = {**defaults, **config}
    cfg = {k: merged[k] for k in (*required, *defaults)}  # constructor order
    here = f"{where} ({kind})"
    if kind in ("Conv2d", "MaxPool2d", "AvgPool2d"):
        cfg["kernel_size"] = _pair(cfg["kernel_size"], f"{here} kernel_size")
        cfg["stride"] = (cfg["kernel_size"] if cfg["stride"] is None
                         else _pair(cfg["stride"], f"{here} stride"))  # fmt: skip
        cfg["padding"] = _pair(cfg["padding"], f"{here} padding", 0)
    elif kind == "Conv1d":
        for key in ("kernel_size", "stride", "padding"):
            cfg[key] = _single(cfg[key], f"{here} {key}", 0 if key == "padding" else 1)
    if kind in ("MaxPool2d", "AvgPool2d") and any(
        2 * p > k for p, k in zip(cfg["padding"], cfg["kernel_size"])
    ):
        raise SpecError(f"{here}: padding {cfg['padding']} is more than half the kernel")
    for key in ("in_features", "out_features", "in_channels", "out_channels", "groups",
                "num_features"):  # fmt: skip
        if key in cfg:
            hi = MAX_SIZE if key.endswith("_features") and kind == "Linear" else MAX_LAYER_SIZE
            cfg[key] = _single(cfg[key], f"{here} {key}", 1, hi)
    if "bias" in cfg:
        if not isinstance(cfg["bias"], (bool, np.bool_)):
            raise SpecError(f"{here}: bias must be true or false, got {cfg['bias']!r}")
        cfg["bias"] = bool(cfg["bias"])
    if kind in ("Conv2d", "Conv1d") and (
        cfg["in_channels"] % cfg["groups"] or cfg["out_channels"] % cfg["groups"]
    ):
        raise SpecError(f"{here}: channels {cfg['in_channels']}->{cfg['out_channels']} "
                        f"not divisible by groups {cfg['groups']}")  # fmt: skip
    if kind == "BatchNorm2d":
        cfg["eps"] = _number(cfg["eps"], f"{here} eps", EPS_RANGE[0], EPS_RANGE[1])
        cfg["momentum"] = _number(cfg["momentum"], f"{here} momentum", 0.0, 1.0)
    if kind == "Convert" and cfg["dtype"] not in CONVERT_DTYPES:
        raise SpecError(f"{here}: converts to {cfg['dtype']!r}, not one of "
                        f"{', '.join(CONVERT_DTYPES)}")  # fmt: skip
    out: Node = {"type": kind, "config": cfg}
    allowed = LAYER_DTYPES if kind in QUANT_LAYERS else PLAIN_DTYPES
    if not isinstance(dtype, str) or dtype not in allowed:
        raise SpecError(f"{here}: dtype {dtype!r} not one of {', '.join(allowed)}")
    if dtype != "float32":
        out["dtype"] = dtype
    trainable = node.get("trainable", True)
    if not isinstance(trainable, (bool, np.bool_)):
        raise SpecError(f"{here}: trainable must be true or false, got {trainable!r}")
    if not trainable:
        out["trainable"] = False
    if node.get("quant_range") is not None:
        if not has_quant_range(out):
            raise SpecError(f"{here}: quant_range is only for int8/mixed Linear/Conv and "
                            f"Convert to int8, not a {dtype} {kind}")  # fmt: skip
        out["quant_range"] = parse_quant_range(node["quant_range"], node.get("quant_range_bits"),
                                               here)  # fmt: skip
    return out


def is_quantized(node: Node) -> bool:
    """Whether a leaf stores an int8 weight and a weight_scale (an int8/mixed Linear/Conv)."""
    return node["type"] in QUANT_LAYERS and node.get("dtype") in QUANT_DTYPES


def has_quant_range(node: Node) -> bool:
    """Whether a leaf tracks the real range it quantizes (its output; Convert: its input)."""
    if node["type"] == "Convert":
        return bool(node["config"]["dtype"] == "int8")
    return is_quantized(node)


def float32_bits(value: float) -> int:
    return int(np.array(value, dtype=np.float32).view(np.uint32))


def parse_quant_range(value: Any, bits: Any = None, where: str = "model") -> tuple[float, float]:
    """(min, max) as float32 values from a graph's "quant_range" (and "quant_range_bits", the
    exact binary32 patterns that win when present: see docs/formats.md)."""

    def pair(v: Any, what: str) -> tuple[Any, Any]:
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise SpecError(f"{where}: {what} must be [min, max], got {v!r}")
        return v[0], v[1]

    lo, hi = pair(value, "quant_range")
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise SpecError(f"{where}: quant_range must hold two numbers, got {value!r}")
    with np.errstate(over="ignore"):
        got = [float(np.float32(lo)), float(np.float32(hi))]
    if bits is not None:
        exact = []
        for b in pair(bits, "quant_range_bits"):
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 0 <= b < 2**32:
                raise SpecError(f"{where}: quant_range_bits must be two u32 numbers, got {bits!r}")
            exact.append(float(np.array(b, dtype=np.uint32).view(np.float32)))
        # The bits are exact; the numbers are for people (a board prints 6 digits) and must
        # say the same to 1e-5.
        if not all(np.isfinite(exact)) or not np.allclose(exact, got, rtol=1e-5, atol=1e-30):
            raise SpecError(f"{where}: quant_range_bits {bits!r} do not match "
                            f"quant_range {value!r}")  # fmt: skip
        got = exact
    if not (np.isfinite(got[0]) and np.isfinite(got[1]) and got[0] <= got[1]):
        raise SpecError(f"{where}: quant_range must be finite float32 [min, max] with "
                        f"min <= max, got {value!r}")  # fmt: skip
    return got[0], got[1]


def children(node: Node) -> list[tuple[str, Node]]:
    """(state_dict name part, child) of a container, as the device names them."""
    if node["type"] == "Sequential":
        return [(str(i), n) for i, n in enumerate(node["layers"])]
    if node["type"] == "Residual":
        kids = [("body", node["body"])]
        if node.get("shortcut") is not None:
            kids.append(("shortcut", node["shortcut"]))
        return kids
    return []


def leaves(node: Node, prefix: str = "") -> Iterator[tuple[str, Node]]:
    """(name prefix such as "3.body.0.", leaf node) depth-first, in state_dict order."""
    if node["type"] in CONTAINERS:
        for name, child in children(node):
            yield from leaves(child, f"{prefix}{name}.")
    else:
        yield prefix, node


def parameter_shapes(node: Node) -> dict[str, Shape]:
    """Tensor name (weight, bias, ...) -> shape in the device layout, for one leaf layer."""
    kind, c = node["type"], node["config"]
    shapes: dict[str, tuple[int, ...]]
    if kind == "Linear":
        shapes = {"weight": (c["out_features"], c["in_features"])}
    elif kind == "Conv2d":
        shapes = {"weight": (c["out_channels"], *c["kernel_size"], c["in_channels"] // c["groups"])}
    elif kind == "Conv1d":
        shapes = {"weight": (c["out_channels"], c["kernel_size"], c["in_channels"] // c["groups"])}
    elif kind == "BatchNorm2d":
        return {name: (c["num_features"],) for name in BN_TENSORS}
    else:
        return {}
    if c["bias"]:
        shapes["bias"] = (shapes["weight"][0],)
    if is_quantized(node):
        shapes["weight_scale"] = (shapes["weight"][0],)
    return shapes


def parameter_dtypes(node: Node) -> dict[str, str]:
    """Tensor name -> the dtype the device stores it in, for one leaf layer: float16 layers
    keep float16 tensors, int8/mixed ones an int8 weight; everything else is float32."""
    dtype = node.get("dtype", "float32")
    out = {}
    for name in parameter_shapes(node):
        if node["type"] == "BatchNorm2d" or name == "weight_scale":
            out[name] = "float32"
        elif is_quantized(node):
            out[name] = "int8" if name == "weight" else "float32"
        else:
            out[name] = dtype
    return out


def expected_tensors(graph: Node) -> dict[str, Shape]:
    """Every tensor a graph needs: state_dict name -> device-layout shape."""
    return {prefix + name: shape for prefix, node in leaves(graph)
            for name, shape in parameter_shapes(node).items()}  # fmt: skip


def expected_dtypes(graph: Node) -> dict[str, str]:
    """Every tensor a graph needs: state_dict name -> the dtype the device stores it in."""
    return {prefix + name: dtype for prefix, node in leaves(graph)
            for name, dtype in parameter_dtypes(node).items()}  # fmt: skip


def _window(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def output_shape(node: Node, shape: Shape, where: str = "model") -> Shape:
    """The output shape (no batch dim) of node for an input of `shape`, checking that they fit."""
    kind = node["type"]
    here = f"{where} ({kind})"
    if kind == "Sequential":
        for name, child in children(node):
            shape = output_shape(child, shape, f"{where}.{name}" if where else name)
        return shape
    if kind == "Residual":
        main = output_shape(node["body"], shape, f"{where}.body")
        short = shape
        if node.get("shortcut") is not None:
            short = output_shape(node["shortcut"], shape, f"{where}.shortcut")
        if main != short:
            raise SpecError(f"{here}: body gives {main} but the shortcut gives {short}")
        return main
    c = node.get("config", {})

    def need(ndim: int, what: str) -> None:
        if len(shape) != ndim:
            raise SpecError(f"{here}: needs {what} input, got shape {shape}")

    if kind == "Linear":
        need(1, "(features,)")
        if shape[0] != c["in_features"]:
            raise SpecError(f"{here}: in_features {c['in_features']} but input has {shape[0]}")
        return (c["out_features"],)
    if kind in ("Conv2d", "Conv1d"):
        spatial = 2 if kind == "Conv2d" else 1
        need(spatial + 1, "(H, W, C)" if spatial == 2 else "(L, C)")
        if shape[-1] != c["in_channels"]:
            raise SpecError(f"{here}: in_channels {c['in_channels']} but input has {shape[-1]}")
        k, s, p = (c[key] if spatial == 2 else (c[key],) for key in ("kernel_size", "stride",
                                                                    "padding"))  # fmt: skip
        out = tuple(_window(shape[i], k[i], s[i], p[i]) for i in range(spatial))
        if min(out) < 1:
            raise SpecError(f"{here}: input {shape} smaller than kernel {k}")
        return (*out, c["out_channels"])
    if kind in ("MaxPool2d", "AvgPool2d"):
        need(3, "(H, W, C)")
        k, s, p = c["kernel_size"], c["stride"], c["padding"]
        out = tuple(_window(shape[i], k[i], s[i], p[i]) for i in range(2))
        if min(out) < 1:
            raise SpecError(f"{here}: input {shape} smaller than kernel {k}")
        return (*out, shape[2])
    if kind == "BatchNorm2d":
        if shape[-1] != c["num_features"]:
            raise SpecError(f"{here}: num_features {c['num_features']} but input has {shape[-1]}")
        return shape
    if kind == "GlobalAvgPool":
        if len(shape) < 2:
            raise SpecError(f"{here}: needs (..., C) input with positions, got {shape}")
        return (shape[-1],)
    if kind == "Flatten":
        return (math.prod(shape),)
    return shape  # ReLU, ReLU6, Softmax, Convert


@dataclass
class ModelSpec:
    """A model to write as .mtm: graph, tensors by state_dict name (device layouts).

    input_shape is one sample's shape without the batch dim, channels-last (optional, but it
    lets readers check the graph and plan buffers). quant holds (scale, zero_point) of int8
    tensors by name. meta is free JSON (class names, training settings, ...).
    """

    graph: Node
    tensors: dict[str, np.ndarray]
    input_shape: Shape | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    quant: dict[str, tuple[float, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.graph.get("type") != "Sequential":
            self.graph = sequential(self.graph)
        self.graph = normalize_node(self.graph)
        if self.input_shape is not None:
            self.input_shape = tuple(int(d) for d in self.input_shape)

    def validate(self) -> None:
        """SpecError unless the tensors are exactly the graph's, with the right shapes/dtypes."""
        want = expected_tensors(self.graph)
        missing = [n for n in want if n not in self.tensors]
        extra = [n for n in self.tensors if n not in want]
        if missing or extra:
            raise SpecError(
                f"tensors do not match the graph: missing {missing}, unexpected {extra}"
            )
        for name, shape in want.items():
            t = np.asarray(self.tensors[name])
            if t.shape != shape:
                raise SpecError(f"tensor {name} has shape {t.shape}, the graph needs {shape}")
            if t.dtype.name not in ("float32", "float16", "int8", "float64"):
                raise SpecError(f"tensor {name} has dtype {t.dtype}, not float32/float16/int8")
            if t.dtype == np.int8 and name not in self.quant:
                raise SpecError(f"int8 tensor {name} needs quant[{name!r}] = (scale, zero_point)")
        for prefix, node in leaves(self.graph):
            if not is_quantized(node):
                continue
            w, s = np.asarray(self.tensors[prefix + "weight"]), np.asarray(
                self.tensors[prefix + "weight_scale"])  # fmt: skip
            if w.dtype != np.int8 or s.dtype.kind != "f":
                raise SpecError(f"{node['dtype']} layer {prefix}{node['type']} needs an int8 "
                                f"weight and float weight_scale, got {w.dtype} and {s.dtype}")
            if not np.all(np.isfinite(s) & (s > 0)):
                raise SpecError(f"{prefix}weight_scale must be finite and > 0")
        if self.input_shape is not None:
            output_shape(self.graph, self.input_shape, "")

    def output_shape(self) -> Shape | None:
        return None if self.input_shape is None else output_shape(self.graph, self.input_shape, "")

    def stored_tensors(self) -> dict[str, np.ndarray]:
        """Tensors as they are written: float64 becomes float32, little-endian, contiguous."""
        out = {}
        for name in expected_tensors(self.graph):
            t = np.asarray(self.tensors[name])
            if t.dtype == np.float64:
                t = t.astype(np.float32)
            out[name] = np.ascontiguousarray(t.astype(NUMPY_DTYPES[t.dtype.name]))
        return out

    def copy(self) -> ModelSpec:
        tensors = {k: np.array(v) for k, v in self.tensors.items()}
        return ModelSpec(copy.deepcopy(self.graph), tensors, self.input_shape,
                         copy.deepcopy(self.meta), dict(self.quant))  # fmt: skip


def layer_rows(spec: ModelSpec) -> list[dict[str, Any]]:
    """One row per leaf: name, type, dtype, config, quant_range, parameter count (for `info`)."""
    rows = []
    for prefix, node in leaves(spec.graph):
        names = [prefix + n for n in parameter_shapes(node)]
        dtype = node["config"]["dtype"] if node["type"] == "Convert" else node.get("dtype",
                                                                                  "float32")
        rows.append({"name": prefix.rstrip("."), "type": node["type"], "dtype": dtype,
                     "config": {k: v for k, v in node["config"].items() if k != "dtype"},
                     "trainable": node.get("trainable", True),
                     "quant_range": node.get("quant_range"),
                     "parameters": sum(int(np.asarray(spec.tensors[n]).size) for n in names
                                       if n in spec.tensors)})  # fmt: skip
    return rows
