"""numpy reference of the partial-update policies (usermod/mcutrain/partial_update.h).

Dynamic top-k after Deutel et al. 2024: per layer and sample, the k output structures (conv
filters, dense rows) with the largest error magnitude (sum of |dy| over the batch and
positions) are updated, k = floor(min(lmin + eps (lmax - lmin), 1) N), at least 1, where eps
is the sample's loss over the largest loss seen so far. The error of unselected structures
is dropped: a layer's input gradient and weight gradient both use the selected channels
only. A fixed channel ratio r updates the first floor(r N) structures the same way.
"""

from __future__ import annotations

import math

import numpy as np

from . import functional as F
from .nn import Conv1d, Conv2d, Linear, Module, Sequential

__all__ = ["topk_count", "topk_indices", "partial_sgd_step", "s8_error_magnitudes", "s8_compact"]


def topk_count(n: int, lmin: float, lmax: float, eps: float) -> int:
    """Structures a TopK(lmin, lmax) policy updates for relative loss eps (clamped to [0, 1])."""
    eps = min(max(eps, 0.0), 1.0)
    ratio = min(lmin + eps * (lmax - lmin), 1.0)
    # The device adds 1e-3 before the floor so that ratios exact in decimal (0.6 of 10)
    # give the exact count whatever the rounding of the ratio.
    k = math.floor(ratio * n + 1e-3)
    return min(max(k, 1), n)


def topk_indices(magnitude: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest magnitudes, increasing; ties go to the lower index."""
    order = np.argsort(-np.asarray(magnitude), kind="stable")
    return np.sort(order[:k])


def partial_sgd_step(model: Sequential, x: np.ndarray, labels: np.ndarray, lr: float, lmin: float,
                     lmax: float, eps: float = 1.0) -> tuple[float, dict[int, np.ndarray]]:
    """One plain-SGD training step of a Sequential of simple layers with TopK(lmin, lmax) on
    every Linear/Conv layer; returns the loss and each such layer's selected structures."""
    out = model.forward(x)
    loss, dy = F.cross_entropy(out, labels)
    selected: dict[int, np.ndarray] = {}
    layers: list[Module] = list(model)
    first = next(i for i, layer in enumerate(layers) if isinstance(layer, (Linear, Conv1d, Conv2d)))
    for i in range(len(layers) - 1, first - 1, -1):
        layer = layers[i]
        if isinstance(layer, (Linear, Conv1d, Conv2d)):
            n = layer.weight.shape[0]
            magnitude = np.abs(dy.astype(np.float32)).reshape(-1, n).sum(axis=0)
            idx = topk_indices(magnitude, topk_count(n, lmin, lmax, eps))
            mask = np.zeros(n)
            mask[idx] = 1.0
            dy = dy * mask
            dx = layer.backward(dy)
            layer.weight[idx] -= lr * layer.grads["weight"][idx]
            if layer.bias is not None:
                layer.bias[idx] -= lr * layer.grads["bias"][idx]
            selected[i] = idx
        else:
            dx = layer.backward(dy)
        dy = dx
    return float(loss), selected


def s8_error_magnitudes(dy: np.ndarray, zero_point: int = 0) -> np.ndarray:
    """Per output structure, the integer sum of |dy - zero_point| over the batch and
    positions (the int8 layers' top-k ranks these exactly)."""
    dy = np.asarray(dy, dtype=np.int64)
    return np.abs(dy - zero_point).reshape(-1, dy.shape[-1]).sum(axis=0)


def s8_compact(idx: np.ndarray, *arrays: np.ndarray | None, axis: int = 0) -> list[np.ndarray | None]:
    """The selected structures of each array (None stays None): an int8 layer's partial
    update runs the int8 kernels on a layer of these k output channels (layer_s8_partial.c)."""
    return [None if a is None else np.take(np.asarray(a), idx, axis=axis) for a in arrays]
