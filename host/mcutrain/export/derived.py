"""A model derived from a source (PyTorch module, TorchScript, ONNX): its unfolded spec plus the
source's own tensor names, which `pull` needs to give back a state dict the source loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..formats.spec import ModelSpec, Node, Shape
from .fold import Folding, fold_batchnorm_tracked
from .layout import convert_tensors


@dataclass
class Derived:
    """spec: device layouts and names ("3.body.0.weight"), batch norms not folded.
    names: each spec tensor's name in the source ("layer1.conv1.weight").
    buffers: source state entries with no device tensor (BatchNorm's num_batches_tracked),
    for a state dict that loads strictly. source_keys: the source's whole state-dict key set
    when known (a PyTorch module's), to check that pull covers it."""

    spec: ModelSpec
    names: dict[str, str]
    buffers: dict[str, Any] = field(default_factory=dict)
    source_keys: list[str] | None = None

    def export_spec(self, fold_bn: bool) -> ModelSpec:
        return self.folded()[0] if fold_bn else self.spec

    def folded(self) -> tuple[ModelSpec, Folding]:
        return fold_batchnorm_tracked(self.spec)


def collect(node: Node, prefix: str, tensors: dict[str, np.ndarray], names: dict[str, str]) -> Node:
    """node without the "_tensors"/"_names" of its leaves, which move into `tensors` (under
    the device's state_dict names) and `names` (device name -> source name)."""
    kind = node["type"]
    if kind == "Sequential":
        return {"type": kind, "layers": [collect(n, f"{prefix}{i}.", tensors, names)
                                         for i, n in enumerate(node["layers"])]}  # fmt: skip
    if kind == "Residual":
        short = node["shortcut"]
        return {"type": kind, "body": collect(node["body"], prefix + "body.", tensors, names),
                "shortcut": None if short is None else collect(short, prefix + "shortcut.",
                                                               tensors, names)}  # fmt: skip
    for name, t in node.get("_tensors", {}).items():
        tensors[prefix + name] = t
        names[prefix + name] = node.get("_names", {}).get(name, prefix + name)
    return {k: v for k, v in node.items() if k not in ("_tensors", "_names")}


def assemble(
    layers: list[Node], input_shape: Shape | None, meta: dict[str, Any],
    buffers: dict[str, Any] | None = None, source_keys: list[str] | None = None,
) -> Derived:
    """The checked Derived model of a layer list whose leaves carry PyTorch-layout tensors.

    input_shape is one sample in the device layout, (H, W, C)."""
    tensors: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    graph = collect({"type": "Sequential", "layers": layers}, "", tensors, names)
    spec = ModelSpec(graph, {}, input_shape, meta)
    spec.tensors = convert_tensors(spec.graph, tensors, spec.input_shape, to_device=True)
    spec.validate()
    return Derived(spec, names, dict(buffers or {}), source_keys)
