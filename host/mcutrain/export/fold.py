"""Fold inference-mode batch norm into the convolution or linear layer before it."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from ..formats.spec import ModelSpec, Node, children

FOLDABLE = ("Conv2d", "Conv1d", "Linear")


@dataclass
class Folding:
    """What fold_batchnorm did, so pull can map the folded model back to the unfolded names:
    `renames` takes every kept tensor's old name to its new one; `folds` has, per folded batch
    norm, the new prefix of the layer it went into, that layer's old prefix, the batch norm's
    old prefix and whether the layer had a bias before."""

    renames: dict[str, str]
    folds: list[tuple[str, str, str, bool]]


def fold_batchnorm(spec: ModelSpec) -> ModelSpec:
    """A spec computing the same in inference mode with each BatchNorm2d that directly follows a
    Conv2d/Conv1d/Linear (in the same Sequential) folded into it; other BatchNorm2d stay.

    bn(layer(x)) == layer'(x) with w' = w * s per output channel, b' = (b - mean) * s + beta and
    s = gamma / sqrt(running_var + eps) (Jacob et al. 2018, sec. 3.2). Later layers are renamed
    to their new positions.
    """
    return fold_batchnorm_tracked(spec)[0]


def fold_batchnorm_tracked(spec: ModelSpec) -> tuple[ModelSpec, Folding]:
    """fold_batchnorm, and how its names map to the input's."""
    src = spec.tensors
    folding = Folding({}, [])
    out: dict[str, np.ndarray] = {}

    def copy_leaf(old: str, new: str, node: Node) -> None:
        for key in [k for k in src if k.startswith(old) and "." not in k[len(old):]]:
            out[new + key[len(old):]] = np.array(src[key])
            folding.renames[key] = new + key[len(old):]

    def walk(node: Node, old: str, new: str) -> Node:
        if node["type"] == "Sequential":
            layers: list[Node] = []
            prev: tuple[Node, str, str] | None = None  # layer, its new and old prefix
            for name, child in children(node):
                if (child["type"] == "BatchNorm2d" and prev is not None
                        and prev[0]["type"] in FOLDABLE):  # fmt: skip
                    _fold(*prev, child, f"{old}{name}.")
                    prev = None  # one batch norm per layer
                    continue
                new_prefix = f"{new}{len(layers)}."
                layers.append(walk(child, f"{old}{name}.", new_prefix))
                prev = (layers[-1], new_prefix, f"{old}{name}.")
            return {"type": "Sequential", "layers": layers}
        if node["type"] == "Residual":
            short = node.get("shortcut")
            return {
                "type": "Residual",
                "body": walk(node["body"], old + "body.", new + "body."),
                "shortcut": None if short is None else walk(short, old + "shortcut.",
                                                            new + "shortcut."),
            }  # fmt: skip
        copy_leaf(old, new, node)
        return copy.deepcopy(node)

    def _fold(layer: Node, prefix: str, old_prefix: str, bn: Node, bn_prefix: str) -> None:
        w = out[prefix + "weight"].astype(np.float64)
        gamma, beta, mean, var = (src[bn_prefix + k].astype(np.float64)
                                  for k in ("weight", "bias", "running_mean", "running_var"))
        scale = gamma / np.sqrt(var + bn["config"]["eps"])
        folding.folds.append((prefix, old_prefix, bn_prefix, bool(layer["config"]["bias"])))
        bias = out.get(prefix + "bias", np.zeros(w.shape[0])).astype(np.float64)
        out[prefix + "weight"] = (w * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        out[prefix + "bias"] = ((bias - mean) * scale + beta).astype(np.float32)
        layer["config"]["bias"] = True

    graph = walk(spec.graph, "", "")
    folded = ModelSpec(graph, out, spec.input_shape, copy.deepcopy(spec.meta), dict(spec.quant))
    return folded, folding
