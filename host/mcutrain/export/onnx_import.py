"""ONNX graphs -> mcutrain models: each node mapped to a layer, Add of two branches to a
residual block (dag.py), anything else refused by its position, operator and name.

Supported: Conv (2-D and 1-D; symmetric padding; groups), Gemm, MatMul (+ Add of a constant
bias), Relu, Clip(0, 6), MaxPool, AveragePool, GlobalAveragePool, ReduceMean over the positions,
Flatten(axis 1), Reshape to (batch, -1), BatchNormalization (inference), Add, Softmax over the
classes; Identity and Dropout are dropped. Weights stay named as the graph's initializers.
Importing this imports onnx.
"""

# ruff: noqa: B023 - the per-node helpers (bad, const, emit, layer) run within their own iteration
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..formats.spec import Node, Shape
from .dag import Op, UnsupportedOpError, build_tree, refuse
from .derived import Derived, assemble
from .layout import torch_to_device_shape

SUPPORTED = (
    "Conv, Gemm, MatMul, Add, Relu, Clip(0, 6), MaxPool, AveragePool, GlobalAveragePool, "
    "ReduceMean (positions), Flatten, Reshape (to batch, -1), BatchNormalization, Softmax, "
    "Identity, Dropout"
)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def input_shape_of(model: onnx.ModelProto) -> Shape | None:
    """One sample's shape in the model's own (PyTorch) layout when all its dims are fixed."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    sizes = [d.dim_value if d.HasField("dim_value") else 0 for d in dims][1:]
    return tuple(sizes) if sizes and all(s > 0 for s in sizes) else None


def onnx_to_derived(model: onnx.ModelProto, input_shape: Shape | None = None) -> Derived:
    """The model an ONNX graph computes; input_shape (PyTorch's layout, (C, H, W)) is taken from
    the graph's input when its dims are fixed, and must then agree with it."""
    g = model.graph
    own = input_shape_of(model)
    if own is not None and input_shape is not None and tuple(input_shape) != own:
        raise ValueError(f"the ONNX model's input is {own}, not the given {tuple(input_shape)}")
    shape = own if own is not None else input_shape
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    inputs = [i.name for i in g.input if i.name not in consts]
    if len(inputs) != 1 or len(g.output) != 1:
        raise UnsupportedOpError(f"the ONNX graph has {len(inputs)} inputs and {len(g.output)} "
                                 "outputs: mcutrain models have one of each")  # fmt: skip
    ops: list[Op] = []
    alias: dict[str, str] = {}
    rank: dict[str, int] = {inputs[0]: len(shape) + 1 if shape else 4}
    producer: dict[str, Op] = {}
    # x.view(x.size(0), -1) without constant folding: Shape -> Gather(0) -> Unsqueeze -> Concat
    # with -1 -> Reshape. Values of that chain: "shape", "batch" or a list of "batch" and ints.
    sym: dict[str, Any] = {}

    def val(name: str) -> str:
        return alias.get(name, name)

    for pos, node in enumerate(g.node):
        t, a = node.op_type, _attrs(node)
        name = node.name or (node.output[0] if node.output else "")
        out = node.output[0] if node.output else ""

        def bad(why: str) -> UnsupportedOpError:
            return refuse("node", pos, t, name, why)

        def const(i: int, what: str) -> np.ndarray:
            if len(node.input) <= i or node.input[i] not in consts:
                raise bad(f"is not supported: its {what} must be a constant (an initializer)")
            return consts[node.input[i]]

        def acts() -> list[str]:
            return [val(i) for i in node.input if i and i not in consts]

        def emit(layer: Node, keep_rank: bool = True, new_rank: int = 2) -> None:
            src = acts()
            if len(src) != 1:
                raise bad("is not supported: it must read one activation")
            op = Op(pos, t, name, src, out, [layer])
            ops.append(op)
            producer[out] = op
            rank[out] = rank.get(src[0], 4) if keep_rank else new_rank

        if t == "Constant":
            consts[out] = numpy_helper.to_array(a["value"]) if "value" in a else np.asarray(
                a.get("value_float", a.get("value_int", a.get("value_floats", a.get("value_ints")))))
        elif t in ("Unsqueeze", "Concat") and all(i in consts for i in node.input):
            # Shape arithmetic on constants (the exporter's view(1, -1) with a fixed batch).
            if t == "Concat":
                consts[out] = np.concatenate([consts[i] for i in node.input], a.get("axis", 0))
            else:
                axes = a.get("axes", consts[node.input[1]].tolist() if len(node.input) > 1 else [])
                consts[out] = np.expand_dims(consts[node.input[0]], tuple(axes))
        elif t == "Shape" and node.input[0] not in consts and not a:
            sym[out] = "shape"
        elif t == "Gather" and sym.get(node.input[0]) == "shape" and node.input[1] in consts \
                and consts[node.input[1]].size == 1 and int(consts[node.input[1]]) == 0:
            sym[out] = "batch"
        elif t == "Unsqueeze" and sym.get(node.input[0]) == "batch":
            sym[out] = ["batch"]
        elif t == "Concat" and any(isinstance(sym.get(i), list) for i in node.input) and all(
                isinstance(sym.get(i), list) or i in consts for i in node.input):  # fmt: skip
            sym[out] = [x for i in node.input
                        for x in (sym[i] if i in sym else consts[i].reshape(-1).tolist())]
        elif t == "Cast" and node.input[0] in consts:  # e.g. clamp(x, 0, 6)'s bounds
            consts[out] = consts[node.input[0]].astype(
                onnx.helper.tensor_dtype_to_np_dtype(a["to"]))
        elif t in ("Identity", "Dropout") or (t == "Cast" and a["to"] == onnx.TensorProto.FLOAT):
            if len(node.output) > 1 and node.output[1]:
                raise bad("is not supported: its mask output is used")
            if node.input[0] in consts:
                consts[out] = consts[node.input[0]]
            else:
                alias[out] = val(node.input[0])
                rank[out] = rank.get(val(node.input[0]), 4)
        elif t == "Conv":
            emit(_conv(node, a, const, bad))
        elif t in ("Gemm", "MatMul"):
            w = const(1, "weight")
            if t == "Gemm":
                if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                    raise bad("is not supported with transA, alpha or beta (only x @ W^T + b)")
                w = w if a.get("transB", 0) else w.T
            else:
                w = w.T  # MatMul's (in, out) -> Linear's (out, in)
            if w.ndim != 2:
                raise bad(f"is not supported: a {w.ndim}-D weight (Linear takes 2-D)")
            tensors = {"weight": w}
            names = {"weight": node.input[1]}
            if len(node.input) > 2 and node.input[2]:
                tensors["bias"] = np.broadcast_to(const(2, "bias"), w.shape[:1]).copy()
                names["bias"] = node.input[2]
            emit({"type": "Linear", "config": {"in_features": w.shape[1],
                  "out_features": w.shape[0], "bias": "bias" in tensors},
                  "_tensors": tensors, "_names": names}, keep_rank=False)  # fmt: skip
        elif t == "Add" and any(i in consts for i in node.input):
            src, b = acts(), next(consts[i] for i in node.input if i in consts)
            prev = producer.get(src[0]) if len(src) == 1 else None
            last = prev.layers[-1] if prev is not None and len(prev.layers) == 1 else None
            if last is None or last["type"] != "Linear" or "bias" in last["_tensors"] or b.size != last[
                    "config"]["out_features"]:  # fmt: skip
                raise bad("is not supported: adding a constant other than a Linear's bias")
            last["_tensors"]["bias"] = b.reshape(-1).astype(np.float32)
            last["_names"]["bias"] = next(i for i in node.input if i in consts)
            last["config"]["bias"] = True
            alias[out] = src[0]
            rank[out] = 2
        elif t == "Add":
            src = acts()
            if len(src) != 2:
                raise bad("is not supported: only the sum of two activations (a residual block)")
            op = Op(pos, t, name, src, out, is_add=True)
            ops.append(op)
            producer[out] = op
            rank[out] = rank.get(src[0], 4)
        elif t == "Relu":
            emit({"type": "ReLU", "config": {}})
        elif t == "Clip":
            lo = a.get("min", const(1, "min") if len(node.input) > 1 and node.input[1] else None)
            hi = a.get("max", const(2, "max") if len(node.input) > 2 and node.input[2] else None)
            lo, hi = (None if v is None else float(np.asarray(v)) for v in (lo, hi))
            if lo == 0 and hi == 6:
                emit({"type": "ReLU6", "config": {}})
            elif lo == 0 and hi is None:
                emit({"type": "ReLU", "config": {}})
            else:
                raise bad(f"is not supported with min {lo}, max {hi} (only 0, 6: ReLU6)")
        elif t in ("MaxPool", "AveragePool"):
            emit(_pool(node, a, bad))
        elif t == "GlobalAveragePool":
            emit({"type": "GlobalAvgPool", "config": {}})
        elif t == "ReduceMean":
            axes = a.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                axes = const(1, "axes").tolist()
            r = rank.get(val(node.input[0]), 4)
            if axes is None or sorted(x % r for x in axes) != list(range(2, r)):
                raise bad(f"is not supported over axes {axes} (only all positions: global pooling)")
            emit({"type": "GlobalAvgPool", "config": {}})
        elif t == "Flatten":
            if a.get("axis", 1) != 1:
                raise bad(f"is not supported with axis {a.get('axis')} (only 1: keep the batch)")
            emit({"type": "Flatten", "config": {}}, keep_rank=False)
        elif t == "Reshape":
            target = sym.get(node.input[1]) or const(1, "shape").tolist()
            if not (len(target) == 2 and target[1] == -1 and target[0] in (0, 1, "batch")):
                raise bad(f"is not supported to shape {target} (only (batch, -1): a flatten)")
            emit({"type": "Flatten", "config": {}}, keep_rank=False)
        elif t == "BatchNormalization":
            if a.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
                raise bad("is not supported in training mode (export the model in eval mode)")
            keys = ("weight", "bias", "running_mean", "running_var")
            tensors = {k: const(i + 1, k).astype(np.float32) for i, k in enumerate(keys)}
            emit({"type": "BatchNorm2d", "config": {
                "num_features": int(tensors["weight"].size), "eps": float(a.get("epsilon", 1e-5)),
                "momentum": 1.0 - float(a.get("momentum", 0.9))}, "_tensors": tensors,
                "_names": {k: node.input[i + 1] for i, k in enumerate(keys)}})  # fmt: skip
        elif t == "Softmax":
            axis = a.get("axis", -1 if model.opset_import[0].version >= 13 else 1)
            if not (axis == 1 or (axis == -1 and rank.get(val(node.input[0]), 4) == 2)):
                raise bad(f"is not supported over axis {axis} (only the classes, axis 1)")
            emit({"type": "Softmax", "config": {}})
        else:
            raise bad(f"is not supported: supported are {SUPPORTED}")
    layers = build_tree(ops, inputs[0], val(g.output[0].name))["layers"]
    device_shape = None if shape is None else torch_to_device_shape(shape)
    return assemble(layers, device_shape, {"source": f"onnx {g.name}".strip()})


def _pads(a: dict[str, Any], k: list[int], bad: Any) -> tuple[int, ...]:
    auto = _text(a.get("auto_pad", "NOTSET"))
    if auto == "VALID":
        return (0,) * len(k)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if any(s != 1 for s in a.get("strides", [1] * len(k))) or any(x % 2 == 0 for x in k):
            raise bad(f"is not supported with auto_pad {auto} here (asymmetric padding)")
        return tuple(x // 2 for x in k)
    pads = list(a.get("pads", [0] * 2 * len(k)))
    begin, end = pads[: len(k)], pads[len(k):]
    if begin != end:
        raise bad(f"is not supported with asymmetric pads {pads} (the device pads each side "
                  "equally)")  # fmt: skip
    return tuple(begin)


def _conv(node: onnx.NodeProto, a: dict[str, Any], const: Any, bad: Any) -> Node:
    w = const(1, "weight").astype(np.float32)
    if w.ndim not in (3, 4):
        raise bad(f"is not supported with a {w.ndim - 2}-D kernel (only 1-D and 2-D)")
    k = list(a.get("kernel_shape", w.shape[2:]))
    if any(d != 1 for d in a.get("dilations", [1] * len(k))):
        raise bad(f"is not supported with dilations {a['dilations']} (only 1)")
    pads = _pads(a, k, bad)
    strides = tuple(a.get("strides", [1] * len(k)))
    groups = int(a.get("group", 1))
    one = w.ndim == 3
    tensors = {"weight": w}
    names = {"weight": node.input[1]}
    if len(node.input) > 2 and node.input[2]:
        tensors["bias"] = const(2, "bias").astype(np.float32)
        names["bias"] = node.input[2]
    cfg = {"in_channels": w.shape[1] * groups, "out_channels": w.shape[0],
           "kernel_size": k[0] if one else tuple(k), "stride": strides[0] if one else strides,
           "padding": pads[0] if one else pads, "groups": groups, "bias": "bias" in tensors}
    return {"type": "Conv1d" if one else "Conv2d", "config": cfg, "_tensors": tensors,
            "_names": names}  # fmt: skip


def _pool(node: onnx.NodeProto, a: dict[str, Any], bad: Any) -> Node:
    k = list(a["kernel_shape"])
    if len(k) != 2:
        raise bad(f"is not supported with a {len(k)}-D window (only 2-D)")
    if a.get("ceil_mode", 0):
        raise bad("is not supported with ceil_mode 1 (only floor)")
    if any(d != 1 for d in a.get("dilations", [1, 1])) or a.get("storage_order", 0):
        raise bad("is not supported with dilations or storage_order")
    if len([o for o in node.output if o]) > 1:
        raise bad("is not supported with its indices output")
    pads = _pads(a, k, bad)
    if node.op_type == "AveragePool" and any(pads) and not a.get("count_include_pad", 0):
        raise bad("is not supported with padding and count_include_pad 0 (the device counts "
                  "the zero padding, as PyTorch's default)")  # fmt: skip
    kind = "MaxPool2d" if node.op_type == "MaxPool" else "AvgPool2d"
    return {"type": kind, "config": {"kernel_size": tuple(k),
            "stride": tuple(a.get("strides", k)), "padding": pads}}  # fmt: skip


def load_onnx(data: bytes) -> onnx.ModelProto:
    return onnx.load_from_string(data)
