"""Tensor layouts: PyTorch's (NCHW activations, OIHW weights) <-> the device's (NHWC, OHWI).

Convolution weights transpose. A Linear after a Flatten of a spatial activation needs its
columns permuted, since PyTorch flattens (C, H, W) and the device (H, W, C); so does a
batch norm on such flattened features. Everything else is layout-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..formats.spec import Node, Shape, SpecError, children, output_shape


class _Unknown:
    """A flattened activation whose spatial shape is unknown (no input_shape given)."""


UNKNOWN = _Unknown()


@dataclass
class _State:
    shape: Shape | None  # device-layout activation shape, no batch dim, when known
    spatial: bool | None  # whether the activation has positions (H, W or L) besides channels
    flat_from: Shape | _Unknown | None = None  # pre-Flatten shape of a flattened activation


def torch_to_device_shape(shape: Shape) -> Shape:
    """(C, H, W) -> (H, W, C), (C, L) -> (L, C), (F,) -> (F,)."""
    shape = tuple(int(d) for d in shape)
    return shape if len(shape) < 2 else (*shape[1:], shape[0])


def device_to_torch_shape(shape: Shape) -> Shape:
    shape = tuple(int(d) for d in shape)
    return shape if len(shape) < 2 else (shape[-1], *shape[:-1])


def _features_perm(flat_from: Shape) -> np.ndarray:
    """perm with device_features = torch_features[perm] for a flatten of device shape (*S, C)."""
    torch_shape = device_to_torch_shape(flat_from)
    index = np.arange(int(np.prod(flat_from))).reshape(torch_shape)  # torch flatten order
    return np.moveaxis(index, 0, -1).reshape(-1)  # read in device (*S, C) order


def convert_tensors(
    graph: Node, tensors: Mapping[str, np.ndarray], input_shape: Shape | None, to_device: bool
) -> dict[str, np.ndarray]:
    """Tensors of `graph` converted PyTorch -> device layout (to_device) or back.

    input_shape is the device-layout sample shape (needed only when a Linear follows a Flatten
    of a spatial activation).
    """
    out = {k: np.asarray(v) for k, v in tensors.items()}
    spatial = None if input_shape is None else len(input_shape) > 1
    _walk(graph, "", _State(input_shape, spatial), out, to_device, "model")
    return out


def _walk(
    node: Node, prefix: str, st: _State, t: dict[str, np.ndarray], to_device: bool, where: str
) -> _State:
    kind = node["type"]
    if kind == "Sequential":
        for name, child in children(node):
            st = _walk(child, f"{prefix}{name}.", st, t, to_device, f"{where}.{name}")
        return st
    if kind == "Residual":
        body = _walk(node["body"], prefix + "body.", _State(st.shape, st.spatial, st.flat_from),
                     t, to_device, where + ".body")  # fmt: skip
        if node.get("shortcut") is not None:
            _walk(node["shortcut"], prefix + "shortcut.", _State(st.shape, st.spatial,
                  st.flat_from), t, to_device, where + ".shortcut")  # fmt: skip
        return body
    shape = None
    if st.shape is not None:
        shape = output_shape(node, st.shape, where)
    w = prefix + "weight"
    if kind == "Conv2d":
        t[w] = t[w].transpose(0, 2, 3, 1) if to_device else t[w].transpose(0, 3, 1, 2)
        return _State(shape, True)
    if kind == "Conv1d":
        t[w] = t[w].transpose(0, 2, 1)
        return _State(shape, True)
    if kind in ("MaxPool2d", "AvgPool2d"):
        return _State(shape, True)
    if kind == "Flatten":
        if st.spatial is False:
            return _State(shape, False)
        flat = st.shape if st.shape is not None else UNKNOWN
        return _State(shape, False, flat)
    if kind in ("Linear", "BatchNorm2d") and st.flat_from is not None:
        if isinstance(st.flat_from, _Unknown):
            raise SpecError(
                f"{where} ({kind}) follows a Flatten of an activation of unknown shape: give the "
                "input shape so its weights can be permuted from (C, H, W) to (H, W, C) order"
            )
        perm = _features_perm(st.flat_from)
        if not to_device:
            perm = np.argsort(perm)
        if kind == "Linear":
            t[w] = t[w][:, perm]
            return _State(shape, False)
        for name in ("weight", "bias", "running_mean", "running_var"):
            t[prefix + name] = t[prefix + name][perm]
        return _State(shape, False, st.flat_from)
    if kind in ("Linear", "GlobalAvgPool"):
        return _State(shape, False)
    return _State(shape, st.spatial, st.flat_from)  # ReLU, ReLU6, Softmax, BatchNorm2d
