"""Export PyTorch models to .mtm: walk the module tree and map each layer to mcutrain's.

Supported: nn.Sequential (nested ones are inlined), torch_modules.Residual, any other module
whose forward torch.fx can trace into these layers and adds (residual blocks such as
`relu(bn(conv(x))) + shortcut(x)`, see torch_fx), Conv1d/Conv2d (incl. grouped/depthwise),
Linear, BatchNorm1d/2d (folded into the layer before it, or kept), ReLU, ReLU6, MaxPool2d,
AvgPool2d, AdaptiveAvgPool1d/2d(1), Flatten, Softmax; Dropout and Identity are dropped
(inference no-ops). Anything else is refused naming the layer. Importing this imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..formats.mtm import write_model
from ..formats.spec import ModelSpec, Node, Shape, SpecError
from .derived import Derived, assemble
from .layout import torch_to_device_shape
from .torch_modules import GlobalAvgPool, Residual


class UnsupportedLayerError(SpecError):
    """A PyTorch module mcutrain cannot represent; the message names it and its path."""


SUPPORTED = (
    "Sequential, Residual, modules torch.fx traces into these (residual adds), Conv1d, Conv2d, Linear, "
    "BatchNorm1d, BatchNorm2d, ReLU, ReLU6, MaxPool2d, AvgPool2d, AdaptiveAvgPool1d/2d(1), "
    "Flatten, Softmax, Dropout, Identity"
)


def _np(p: torch.Tensor) -> np.ndarray:
    return p.detach().cpu().to(torch.float32).numpy().copy()


def _refuse(where: str, m: nn.Module, why: str = "") -> UnsupportedLayerError:
    reason = f": {why}" if why else f"; mcutrain exports {SUPPORTED}"
    return UnsupportedLayerError(f"cannot export layer {where!r} ({type(m).__name__}){reason}")


def _names(where: str, tensors: Mapping[str, Any]) -> dict[str, str]:
    """Each tensor's name in the module's own state dict."""
    return {k: f"{where}.{k}" if where else k for k in tensors}


def _conv(m: nn.Conv1d | nn.Conv2d, where: str) -> Node:
    kind = "Conv2d" if isinstance(m, nn.Conv2d) else "Conv1d"
    if any(d != 1 for d in m.dilation):
        raise _refuse(where, m, f"dilation {m.dilation} (only 1 is supported)")
    if m.padding_mode != "zeros":
        raise _refuse(where, m, f"padding_mode {m.padding_mode!r} (only 'zeros')")
    padding: Any = m.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * len(m.kernel_size)
        elif all(k % 2 == 1 for k in m.kernel_size):  # 'same' with stride 1 and odd kernels
            padding = tuple(k // 2 for k in m.kernel_size)
        else:
            raise _refuse(where, m, "padding='same' with an even kernel (asymmetric padding)")
    one = kind == "Conv1d"
    cfg = {
        "in_channels": m.in_channels, "out_channels": m.out_channels,
        "kernel_size": m.kernel_size[0] if one else tuple(m.kernel_size),
        "stride": m.stride[0] if one else tuple(m.stride),
        "padding": padding[0] if one else tuple(padding),
        "groups": m.groups, "bias": m.bias is not None,
    }  # fmt: skip
    tensors = {"weight": _np(m.weight)}
    if m.bias is not None:
        tensors["bias"] = _np(m.bias)
    return {"type": kind, "config": cfg, "_tensors": tensors, "_names": _names(where, tensors)}


def _batchnorm(m: nn.BatchNorm1d | nn.BatchNorm2d, where: str) -> Node:
    if m.running_mean is None or m.running_var is None:
        raise _refuse(where, m, "track_running_stats=False (no running statistics to export)")
    c = m.num_features
    tensors = {
        "weight": _np(m.weight) if m.weight is not None else np.ones(c, np.float32),
        "bias": _np(m.bias) if m.bias is not None else np.zeros(c, np.float32),
        "running_mean": _np(m.running_mean), "running_var": _np(m.running_var),
    }  # fmt: skip
    momentum = 0.1 if m.momentum is None else float(m.momentum)
    cfg = {"num_features": c, "eps": float(m.eps), "momentum": momentum}
    # A batch norm without affine parameters has no weight/bias in its state dict.
    names = {k: v for k, v in _names(where, tensors).items() if getattr(m, k) is not None}
    return {"type": "BatchNorm2d", "config": cfg, "_tensors": tensors, "_names": names}


def _pool(m: nn.MaxPool2d | nn.AvgPool2d, where: str) -> Node:
    if m.ceil_mode:
        raise _refuse(where, m, "ceil_mode=True")
    if isinstance(m, nn.MaxPool2d) and (m.dilation not in (1, (1, 1)) or m.return_indices):
        raise _refuse(where, m, "dilation or return_indices")
    if isinstance(m, nn.AvgPool2d) and (not m.count_include_pad or m.divisor_override):
        raise _refuse(where, m, "count_include_pad=False or divisor_override")
    kind = "MaxPool2d" if isinstance(m, nn.MaxPool2d) else "AvgPool2d"
    cfg = {"kernel_size": m.kernel_size, "stride": m.stride or m.kernel_size, "padding": m.padding}
    return {"type": kind, "config": cfg}


_LEAVES = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6,
           nn.Hardtanh, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
           GlobalAvgPool, nn.Flatten, nn.Softmax, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
           nn.Identity)  # fmt: skip


def _not_traced(m: nn.Module) -> bool:
    """Modules _convert maps directly (fx calls them as they are); PyTorch's own other modules
    too, so that an unsupported one (nn.Sigmoid) is refused by its name, not traced into."""
    return (isinstance(m, (nn.Sequential, Residual, *_LEAVES))
            or type(m).__module__.startswith("torch.nn."))  # fmt: skip


def _convert(m: nn.Module, where: str) -> list[Node]:
    """mcutrain nodes (with their tensors under "_tensors", PyTorch layout) for module m."""
    if isinstance(m, nn.Sequential):
        return [node for name, child in m.named_children()
                for node in _convert(child, f"{where}.{name}" if where else name)]  # fmt: skip
    if isinstance(m, Residual):
        body = m.body
        short = m.shortcut
        if short is not None and isinstance(short, nn.Identity):
            short = None
        sc = None if short is None else _convert(short, f"{where}.shortcut")
        return [{"type": "Residual",
                 "body": {"type": "Sequential", "layers": _convert(body, f"{where}.body")},
                 "shortcut": None if not sc else {"type": "Sequential", "layers": sc}}]  # fmt: skip
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return [_conv(m, where)]
    if isinstance(m, nn.Linear):
        tensors = {"weight": _np(m.weight)}
        if m.bias is not None:
            tensors["bias"] = _np(m.bias)
        cfg = {"in_features": m.in_features, "out_features": m.out_features,
               "bias": m.bias is not None}  # fmt: skip
        return [{"type": "Linear", "config": cfg, "_tensors": tensors,
                 "_names": _names(where, tensors)}]  # fmt: skip
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return [_batchnorm(m, where)]
    if isinstance(m, nn.ReLU6) or (
        type(m) is nn.Hardtanh and m.min_val == 0.0 and m.max_val == 6.0
    ):
        return [{"type": "ReLU6", "config": {}}]
    if isinstance(m, nn.ReLU):
        return [{"type": "ReLU", "config": {}}]
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        return [_pool(m, where)]
    if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)
        if any(s != 1 for s in size):
            raise _refuse(where, m, f"output_size {m.output_size} (only 1: global pooling)")
        return [{"type": "GlobalAvgPool", "config": {}}]
    if isinstance(m, GlobalAvgPool):
        return [{"type": "GlobalAvgPool", "config": {}}]
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise _refuse(where, m, f"start_dim {m.start_dim}, end_dim {m.end_dim} (only 1, -1)")
        return [{"type": "Flatten", "config": {}}]
    if isinstance(m, nn.Softmax):
        if m.dim not in (1, -1):
            raise _refuse(where, m, f"dim {m.dim} (only the class dim 1)")
        return [{"type": "Softmax", "config": {}}]
    if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)):
        return []
    if not _not_traced(m):
        from .torch_fx import traced_layers

        return traced_layers(m, where, _convert, _not_traced)
    raise _refuse(where or "model", m)


def torch_to_derived(module: nn.Module, input_shape: Shape | None = None) -> Derived:
    """The model of a PyTorch module (batch norms not folded) with its state-dict names.

    input_shape is one sample in PyTorch's layout, (C, H, W), (C, L) or (F,)."""
    layers = _convert(module, "")
    shape = None if input_shape is None else torch_to_device_shape(tuple(input_shape))
    state = module.state_dict()
    buffers = {k: int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}
    return assemble(layers, shape, {"source": f"torch {type(module).__name__}"}, buffers,
                    list(state))  # fmt: skip


def torch_to_spec(
    module: nn.Module, input_shape: Shape | None = None, *, fold_bn: bool = True
) -> ModelSpec:
    """The ModelSpec of a PyTorch model, tensors converted to the device layouts.

    input_shape is one sample in PyTorch's layout, (C, H, W), (C, L) or (F,); it is needed
    when a Linear follows a Flatten of a spatial activation (to permute the columns) and lets
    the spec be checked end to end. fold_bn folds each batch norm into the layer before it.
    """
    return torch_to_derived(module, input_shape).export_spec(fold_bn)


def export_torch(
    model: nn.Module | Mapping[str, Any],
    out_path: str | os.PathLike[str],
    *,
    input_shape: Shape | None = None,
    fold_bn: bool = True,
    graph: Node | None = None,
) -> ModelSpec:
    """Write a PyTorch module, or a state dict plus its mcutrain `graph`, as an .mtm file.

    input_shape is PyTorch's (C, H, W) / (C, L) / (F,). A state dict's names must be the
    graph's (as spec_to_torch_module builds them); returns the written spec.
    """
    if isinstance(model, nn.Module):
        spec = torch_to_spec(model, input_shape, fold_bn=fold_bn)
    else:
        if graph is None:
            raise SpecError("a state dict needs its graph (the layers are not in it)")
        from .numpy_export import spec_from_arrays

        arrays = {k: _np(v) if isinstance(v, torch.Tensor) else np.asarray(v)
                  for k, v in model.items()}  # fmt: skip
        shape = None if input_shape is None else torch_to_device_shape(tuple(input_shape))
        spec = spec_from_arrays(graph, arrays, input_shape=shape, layout="torch",
                                fold_bn=fold_bn)  # fmt: skip
    write_model(out_path, spec)
    return spec
