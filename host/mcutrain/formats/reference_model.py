"""Build the host numpy reference (mcutrain.reference.nn) from a model spec or an .mtm file."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .mtm import read_model
from .quant import dequantize_int8
from .spec import ModelSpec, Node, is_quantized, leaves


def _convert_class(nn: Any) -> Any:
    class Convert(nn.Module):
        """mt.Convert in the float64 reference: the identity (the rounding it does on the
        device is not modelled; the int8 layers' weights are their real values scale * q)."""

        def __init__(self, dtype: str = "float32") -> None:
            super().__init__()
            self.dtype = dtype

        def config(self) -> dict[str, Any]:
            return {"dtype": self.dtype}

        def forward(self, x: ArrayLike, training: bool = True) -> Any:
            return np.asarray(x, dtype=np.float64)

        def backward(self, dy: ArrayLike) -> Any:
            return np.asarray(dy, dtype=np.float64)

    return Convert


def _build(node: Node, nn: Any) -> Any:
    kind = node["type"]
    if kind == "Sequential":
        return nn.Sequential(*(_build(n, nn) for n in node["layers"]))
    if kind == "Residual":
        short = node.get("shortcut")
        return nn.Residual(_build(node["body"], nn), None if short is None else _build(short, nn))
    cls = _convert_class(nn) if kind == "Convert" else getattr(nn, kind)
    layer = cls(**node["config"])
    if node.get("trainable") is False:
        layer.trainable = False
    return layer


def real_tensors(spec: ModelSpec) -> dict[str, np.ndarray]:
    """The model's parameters as real float64 values: int8 tensors dequantized with their
    (scale, zero_point), int8/mixed layers' weights times their per-channel weight_scale; the
    weight_scale tensors themselves are folded in and left out."""
    state = {}
    for name, t in spec.tensors.items():
        if t.dtype == np.int8:
            t = dequantize_int8(t, *spec.quant.get(name, (1.0, 0)))
        state[name] = np.asarray(t, dtype=np.float64)
    for prefix, node in leaves(spec.graph):
        if is_quantized(node):
            w = state[prefix + "weight"]
            # float32 product, as the device forms its real weights
            s = np.asarray(spec.tensors[prefix + "weight_scale"], dtype=np.float32)
            state[prefix + "weight"] = (w.astype(np.float32) * s.reshape(
                (-1,) + (1,) * (w.ndim - 1))).astype(np.float64)  # fmt: skip
            del state[prefix + "weight_scale"]
    return state


def build_reference_model(spec: ModelSpec) -> Any:
    """An mcutrain.reference.nn.Sequential computing what the device computes for spec
    (in float64; int8 tensors are dequantized, int8/mixed layers compute with their real
    weights scale * q and Convert layers pass values through)."""
    from ..reference import nn

    model = _build(spec.graph, nn)
    model.load_state_dict(real_tensors(spec))
    return model


def load_reference_model(path: str | os.PathLike[str]) -> Any:
    """The numpy reference model of an .mtm file: `load_reference_model(p).predict(x)`."""
    return build_reference_model(read_model(path))
