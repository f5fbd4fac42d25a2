"""The other direction: an .mtm model as an .npz state dict, a PyTorch state dict or module."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..formats.mtm import read_model
from ..formats.quant import dequantize_int8
from ..formats.spec import ModelSpec, Node, Shape, SpecError
from .layout import convert_tensors, device_to_torch_shape
from .numpy_export import GRAPH_KEY


def float_tensors(spec: ModelSpec) -> dict[str, np.ndarray]:
    """The spec's tensors as float32 (int8 ones dequantized), device layouts."""
    out = {}
    for name, t in spec.tensors.items():
        out[name] = dequantize_int8(t, *spec.quant[name]) if t.dtype == np.int8 else t.astype(
            np.float32
        )
    return out


def torch_layout_tensors(spec: ModelSpec) -> dict[str, np.ndarray]:
    """float32 tensors in PyTorch's layouts (OIHW, Linear columns in (C, H, W) order)."""
    return convert_tensors(spec.graph, float_tensors(spec), spec.input_shape, to_device=False)


def spec_to_npz(spec: ModelSpec, npz_path: str | os.PathLike[str], layout: str = "device") -> None:
    """Save the tensors (device or torch layout) plus the graph as JSON under __graph__, so
    export_npz can turn the file back into the same .mtm."""
    if layout not in ("device", "torch"):
        raise ValueError(f"layout must be 'device' or 'torch', got {layout!r}")
    tensors = float_tensors(spec) if layout == "device" else torch_layout_tensors(spec)
    doc: dict[str, Any] = {"model": spec.graph, "layout": layout}
    if spec.input_shape is not None:
        doc["input_shape"] = list(spec.input_shape)
    if spec.meta:
        doc["meta"] = spec.meta
    graph = np.array(json.dumps(doc, default=list))
    arrays: dict[str, Any] = {**tensors, GRAPH_KEY: graph}  # Any: savez's keywords include allow_pickle
    np.savez(npz_path, **arrays)


def mtm_to_npz(
    mtm_path: str | os.PathLike[str], npz_path: str | os.PathLike[str], layout: str = "device"
) -> ModelSpec:
    """`pull` to numpy: the .mtm's tensors (and graph) as an .npz; returns the spec."""
    spec = read_model(mtm_path)
    spec_to_npz(spec, npz_path, layout)
    return spec


def spec_to_torch_state_dict(spec: ModelSpec) -> dict[str, Any]:
    """A PyTorch state dict (torch.Tensor values, PyTorch layouts) for spec_to_torch_module."""
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
            torch_layout_tensors(spec).items()}  # fmt: skip


def mtm_to_torch_state_dict(
    mtm_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    *,
    like: Any = None,
    input_shape: Shape | None = None,
) -> dict[str, Any]:
    """`pull` to PyTorch: the .mtm's state dict, also saved with torch.save when out_path.

    Names are the .mtm's own (those of spec_to_torch_module) unless `like` gives the source
    the model was exported from (a path, module, TorchScript or ONNX model, or an
    export.Derived; input_shape as at export): then they are the source's, and batch norms
    folded at export are unfolded again (export/origin.py), so the source loads it strictly."""
    import torch

    spec = read_model(mtm_path)
    if like is None:
        state = spec_to_torch_state_dict(spec)
    else:
        from .derived import Derived
        from .origin import source_state_dict
        from .sources import derive

        if not isinstance(like, Derived):
            shape = input_shape or torch_input_shape(spec)
            try:
                like = derive(like, shape)
            except SpecError as e:
                raise ValueError("the pulled model is not the one exported from the source: "
                                 f"the source does not take its input {shape}: {e}") from e
        state = {k: torch.tensor(v) if isinstance(v, int) else torch.from_numpy(
                 np.ascontiguousarray(v)) for k, v in source_state_dict(spec, like).items()}
    if out_path is not None:
        torch.save(state, out_path)
    return state


def spec_to_torch_module(spec: ModelSpec) -> Any:
    """An equivalent torch.nn.Sequential (eval mode) with the spec's weights loaded."""
    from torch import nn

    from .torch_modules import GlobalAvgPool, Residual

    def build(node: Node, ndim: int | None) -> tuple[nn.Module, int | None]:
        kind, c = node["type"], node.get("config", {})
        if kind == "Sequential":
            mods = []
            for child in node["layers"]:
                m, ndim = build(child, ndim)
                mods.append(m)
            return nn.Sequential(*mods), ndim
        if kind == "Residual":
            body, out = build(node["body"], ndim)
            short = None if node.get("shortcut") is None else build(node["shortcut"], ndim)[0]
            return Residual(body, short), out
        simple: dict[str, tuple[Any, int | None]] = {
            "ReLU": (nn.ReLU(), ndim), "ReLU6": (nn.ReLU6(), ndim), "Flatten": (nn.Flatten(), 1),
            "Softmax": (nn.Softmax(dim=1), ndim), "GlobalAvgPool": (GlobalAvgPool(), 1),
        }  # fmt: skip
        if kind in simple:
            return simple[kind]
        if kind == "Linear":
            return nn.Linear(c["in_features"], c["out_features"], c["bias"]), 1
        if kind in ("Conv2d", "Conv1d"):
            conv_cls = nn.Conv2d if kind == "Conv2d" else nn.Conv1d
            m = conv_cls(c["in_channels"], c["out_channels"], c["kernel_size"], c["stride"],
                    c["padding"], groups=c["groups"], bias=c["bias"])  # fmt: skip
            return m, 3 if kind == "Conv2d" else 2
        if kind in ("MaxPool2d", "AvgPool2d"):
            pool_cls = nn.MaxPool2d if kind == "MaxPool2d" else nn.AvgPool2d
            return pool_cls(c["kernel_size"], c["stride"], c["padding"]), 3
        if kind == "BatchNorm2d":
            bn_cls = nn.BatchNorm2d if ndim in (None, 3) else nn.BatchNorm1d
            return bn_cls(c["num_features"], eps=c["eps"], momentum=c["momentum"]), ndim
        raise ValueError(f"no PyTorch module for {kind}")

    start: Shape | None = spec.input_shape
    model, _ = build(spec.graph, None if start is None else len(start))
    state = spec_to_torch_state_dict(spec)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def torch_input_shape(spec: ModelSpec) -> Shape | None:
    """The spec's input shape in PyTorch's layout, (C, H, W)."""
    return None if spec.input_shape is None else device_to_torch_shape(spec.input_shape)
