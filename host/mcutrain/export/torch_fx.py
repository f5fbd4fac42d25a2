"""Layers of a PyTorch module whose forward is not a plain Sequential, found by torch.fx
symbolic tracing: submodules become layers (converted by torch_export), `a + b` of two branches
a residual block, and the usual functional calls (torch.relu, torch.flatten(x, 1),
x.view(x.size(0), -1), x.mean((2, 3)), F.softmax(x, 1), ...) their layers. Imports torch."""

# ruff: noqa: B023 - the per-node helpers (bad, const, emit, layer) run within their own iteration
from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..formats.spec import Node
from .dag import Op, build_tree, refuse

FUNCTIONS = (
    "a + b (residual), relu, relu6, hardtanh(0, 6), clamp(0, 6), flatten(x, 1), "
    "view/reshape(x.size(0), -1), mean over positions, adaptive_avg_pool(x, 1), softmax(dim=1), "
    "dropout"
)
_ADD = (operator.add, operator.iadd, torch.add, "add", "add_")
_RELU = (torch.relu, F.relu, torch.relu_, "relu", "relu_")


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def traced_layers(
    module: nn.Module, where: str, convert: Callable[[nn.Module, str], list[Node]],
    is_leaf: Callable[[nn.Module], bool],
) -> list[Node]:
    """mcutrain layers computing module's forward; `convert` turns each called submodule (those
    `is_leaf` accepts are not traced into) into layers, given its qualified name."""

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return is_leaf(m)

    try:
        graph = Tracer().trace(module)
    except Exception as e:  # fx raises many kinds (TraceError, TypeError, ...) for Python control flow
        raise refuse("module", 0, type(module).__name__, where or "model",
                     f"cannot be traced by torch.fx ({type(e).__name__}: {e}); write it as "
                     "nn.Sequential / Residual, or export it to ONNX") from e  # fmt: skip
    prefix = f"{where}." if where else ""
    what = f"module {where!r} ({type(module).__name__}) node" if where else "node"
    ops: list[Op] = []
    alias: dict[str, str] = {}  # value -> the value it equals (dropout, identity)
    sizes: set[str] = set()  # values that are x.size(0)
    graph_input = graph_output = ""

    def val(a: Any) -> str:
        return alias.get(a.name, a.name) if isinstance(a, fx.Node) else ""

    for pos, node in enumerate(graph.nodes):
        kind, name = node.op, node.name

        def bad(why: str, op: str = "") -> Exception:
            return refuse(what, pos, op or _target_name(node), name, why)

        def layer(type_: str, config: dict[str, Any] | None = None) -> None:
            ops.append(Op(pos, _target_name(node), name, [val(node.args[0])], name,
                          [{"type": type_, "config": config or {}}]))  # fmt: skip

        if kind == "placeholder":
            if graph_input:
                raise bad("is not supported: a second input (mcutrain models take one)")
            graph_input = name
        elif kind == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node):
                raise bad("is not supported: the model must return one tensor")
            graph_output = val(out)
        elif kind == "call_module":
            qual = prefix + str(node.target)
            sub = module.get_submodule(str(node.target))
            layers = convert(sub, qual)
            if layers:
                ops.append(Op(pos, f"{qual} ({type(sub).__name__})", name, [val(node.args[0])],
                              name, layers))  # fmt: skip
            else:
                alias[name] = val(node.args[0])
        elif kind in ("call_function", "call_method"):
            t = node.target
            if t in _ADD:
                a, b = node.args[:2]
                if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or _arg(node, 2, "alpha", 1) != 1:
                    raise bad("is not supported: only the sum of two branches (a residual block)")
                ops.append(Op(pos, _target_name(node), name, [val(a), val(b)], name, is_add=True))
            elif t in _RELU:
                layer("ReLU")
            elif t in (F.relu6, "relu6") or (
                t in (F.hardtanh, torch.clamp, torch.clip, "clamp", "clip", "hardtanh")
                and [_arg(node, 1, "min", _arg(node, 1, "min_val")),
                     _arg(node, 2, "max", _arg(node, 2, "max_val"))] == [0, 6]
            ):  # fmt: skip
                layer("ReLU6")
            elif t in (torch.flatten, "flatten"):
                if (_arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)) != (1, -1):
                    raise bad("is not supported: only flatten(x, 1) (keeping the batch)")
                layer("Flatten")
            elif t == "size" and _arg(node, 1, "dim") == 0:
                sizes.add(name)
            elif t in ("view", "reshape") or t is torch.reshape:
                shape = list(node.args[1:]) if t != torch.reshape else list(node.args[1])
                if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
                    shape = list(shape[0])
                if not (len(shape) == 2 and val(shape[0]) in sizes and shape[1] == -1):
                    raise bad("is not supported: only view/reshape(x.size(0), -1) (a flatten)")
                layer("Flatten")
            elif t in (torch.mean, "mean"):
                dims = _arg(node, 1, "dim")
                dims = tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)
                if sorted(dims) not in ([2, 3], [-2, -1]) or _arg(node, 2, "keepdim", False):
                    raise bad(f"is not supported: only a mean over the positions, not dims {dims}")
                layer("GlobalAvgPool")
            elif t in (F.adaptive_avg_pool2d, F.adaptive_avg_pool1d):
                if _arg(node, 1, "output_size") not in (1, (1, 1), [1, 1], (1,)):
                    raise bad("is not supported: only output size 1 (global pooling)")
                layer("GlobalAvgPool")
            elif t in (F.softmax, torch.softmax, "softmax"):
                if _arg(node, 1, "dim") not in (1, -1):
                    raise bad("is not supported: only softmax over dim 1 (the classes)")
                layer("Softmax")
            elif t in (F.dropout, F.dropout1d, F.dropout2d, "contiguous"):
                alias[name] = val(node.args[0])
            else:
                raise bad(f"is not supported: supported are submodules and {FUNCTIONS}")
        else:  # get_attr: a parameter used in forward outside a layer
            raise bad("is not supported: tensors used in forward outside a submodule")
    return build_tree(ops, graph_input, graph_output, what)["layers"]
