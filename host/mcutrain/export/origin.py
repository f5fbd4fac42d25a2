"""`pull --like SOURCE`: a trained .mtm's tensors under the source model's own names, so
`module.load_state_dict(pulled)` (strict) loads the board's weights into the original module.

With batch norms folded at export, the board trained conv/linear layers W'', b'' that stand
for conv + batch norm. The batch norm keeps the statistics and scale it had at export
(running_mean, running_var, eps, gamma); the conv weight becomes W = W'' / s with
s = gamma / sqrt(running_var + eps), and the bias change goes into the batch norm's beta:
beta = b'' - (b0 - running_mean) * s (b0 the conv's exported bias, 0 without one). Then
bn(conv(x)) = W'' x + b'' exactly (up to rounding) in eval mode, and the batch norm's statistics
stay the ones PyTorch trained, so further PyTorch training starts from sensible ones. A channel
with gamma = 0 (s = 0) gets gamma = sqrt(running_var + eps), i.e. s = 1, W = W''.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..formats.spec import ModelSpec
from .derived import Derived
from .pull import torch_layout_tensors


def _shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in spec.tensors.items()}


def source_state_dict(trained: ModelSpec, like: Derived) -> dict[str, Any]:
    """The trained spec's tensors (PyTorch layouts, float32) under the source's names, plus the
    source's buffers (num_batches_tracked, as ints); unfolds batch norms folded at export."""
    folded, folding = like.folded()
    got = _shapes(trained)
    t = torch_layout_tensors(trained)
    out: dict[str, Any] = {}
    if got == _shapes(like.spec):
        out = {like.names[k]: v for k, v in t.items()}
    elif folding.folds and got == _shapes(folded):
        old_name = {new: old for old, new in folding.renames.items()}
        done = set()
        for new, old, bn, had_bias in folding.folds:
            out.update(_unfold(like, t[new + "weight"], t[new + "bias"], old, bn, had_bias))
            done |= {new + "weight", new + "bias"}
        out.update({like.names[old_name[k]]: v for k, v in t.items() if k not in done})
    else:
        want = _shapes(like.spec)
        diff = sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != want[k])
        raise ValueError("the pulled model is not the one exported from the source (with or "
                         f"without batch norms folded): its tensors differ at {diff[:6]}")  # fmt: skip
    out.update(like.buffers)
    if like.source_keys is not None and set(out) != set(like.source_keys):
        missing = sorted(set(like.source_keys) - set(out))
        raise ValueError(f"the source's state dict has entries the model lacks: {missing[:6]}")
    return out


def _unfold(
    like: Derived, w2: np.ndarray, b2: np.ndarray, layer: str, bn: str, had_bias: bool
) -> dict[str, np.ndarray]:
    src, names = like.spec.tensors, like.names
    gamma, beta, mean, var = (src[bn + k].astype(np.float64)
                              for k in ("weight", "bias", "running_mean", "running_var"))  # fmt: skip
    eps = _eps(like.spec, bn)
    std = np.sqrt(var + eps)
    gamma = np.where(gamma == 0, std, gamma)
    s = gamma / std
    b0 = src[layer + "bias"].astype(np.float64) if had_bias else np.zeros_like(mean)
    w = w2.astype(np.float64) / s.reshape(-1, *([1] * (w2.ndim - 1)))
    new_beta = b2.astype(np.float64) - (b0 - mean) * s
    affine = bn + "weight" in names
    out = {names[layer + "weight"]: w.astype(np.float32),
           names[bn + "running_mean"]: mean.astype(np.float32),
           names[bn + "running_var"]: var.astype(np.float32)}  # fmt: skip
    if affine:
        out[names[bn + "weight"]] = gamma.astype(np.float32)
        out[names[bn + "bias"]] = new_beta.astype(np.float32)
        if had_bias:
            out[names[layer + "bias"]] = b0.astype(np.float32)
    elif had_bias and np.all(src[bn + "weight"] != 0):  # gamma 1, beta 0: the bias takes it
        out[names[layer + "bias"]] = ((b2 - beta) / s + mean).astype(np.float32)
    else:
        raise ValueError(f"cannot unfold the batch norm {bn} (no affine parameters, and "
                         "the layer before it has no bias): export with --keep-batchnorm")  # fmt: skip
    return out


def _eps(spec: ModelSpec, bn_prefix: str) -> float:
    node: Any = spec.graph
    for part in bn_prefix.rstrip(".").split("."):
        node = node["layers"][int(part)] if node["type"] == "Sequential" else node[part]
    return float(node["config"]["eps"])
