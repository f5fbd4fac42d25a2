"""Build the host numpy reference (mcutrain.reference.nn) from a model spec or an .mtm file."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .mtm import read_model
from .quant import dequantize_int8
from .spec import ModelSpec, Node


def _build(node: Node, nn: Any) -> Any:
    kind = node["type"]
    if kind == "Sequential":
        return nn.Sequential(*(_build(n, nn) for n in node["layers"]))
    if kind == "Residual":
        short = node.get("shortcut")
        return nn.Residual(_build(node["body"], nn), None if short is None else _build(short, nn))
    layer = getattr(nn, kind)(**node["config"])
    if node.get("trainable") is False:
        layer.trainable = False
    return layer


def build_reference_model(spec: ModelSpec) -> Any:
    """An mcutrain.reference.nn.Sequential computing what the device computes for spec
    (in float64; int8 tensors are dequantized)."""
    from ..reference import nn

    model = _build(spec.graph, nn)
    state = {}
    for name, t in spec.tensors.items():
        if t.dtype == np.int8:
            t = dequantize_int8(t, *spec.quant[name])
        state[name] = np.asarray(t, dtype=np.float64)
    model.load_state_dict(state)
    return model


def load_reference_model(path: str | os.PathLike[str]) -> Any:
    """The numpy reference model of an .mtm file: `load_reference_model(p).predict(x)`."""
    return build_reference_model(read_model(path))
