"""Export models to `.mtm` (from numpy, PyTorch, TorchScript or ONNX) and pull them back.

    export_npz("weights.npz", "model.mtm", graph="model.json")       # device-layout state dict
    export_torch(torch_model, "model.mtm", input_shape=(1, 28, 28))  # folds batch norm
    derive("model.onnx").export_spec(fold_bn=True)  # any source file or object -> ModelSpec
    mtm_to_npz("model.mtm", "back.npz"); mtm_to_torch_state_dict("model.mtm", "back.pt")
    mtm_to_torch_state_dict("trained.mtm", like=torch_model)  # the module's own names

The PyTorch functions import torch when called, the ONNX ones onnx; the rest needs only numpy.
"""

from __future__ import annotations

from typing import Any

from .derived import Derived
from .fold import Folding, fold_batchnorm, fold_batchnorm_tracked
from .layout import convert_tensors, device_to_torch_shape, torch_to_device_shape
from .numpy_export import GRAPH_KEY, export_npz, load_graph, spec_from_arrays
from .pull import (
    float_tensors,
    mtm_to_npz,
    mtm_to_torch_state_dict,
    spec_to_npz,
    spec_to_torch_module,
    spec_to_torch_state_dict,
    torch_input_shape,
    torch_layout_tensors,
)
from .sources import KINDS, derive, model_kind


def torch_to_spec(module: Any, input_shape: Any = None, *, fold_bn: bool = True) -> Any:
    """See torch_export.torch_to_spec (imports torch)."""
    from .torch_export import torch_to_spec as convert

    return convert(module, input_shape, fold_bn=fold_bn)


def export_torch(model: Any, out_path: Any, **options: Any) -> Any:
    """See torch_export.export_torch (imports torch)."""
    from .torch_export import export_torch as export

    return export(model, out_path, **options)


__all__ = [
    "GRAPH_KEY",
    "KINDS",
    "Derived",
    "Folding",
    "derive",
    "fold_batchnorm_tracked",
    "model_kind",
    "convert_tensors",
    "device_to_torch_shape",
    "export_npz",
    "export_torch",
    "float_tensors",
    "fold_batchnorm",
    "load_graph",
    "mtm_to_npz",
    "mtm_to_torch_state_dict",
    "spec_from_arrays",
    "spec_to_npz",
    "spec_to_torch_module",
    "spec_to_torch_state_dict",
    "torch_input_shape",
    "torch_layout_tensors",
    "torch_to_device_shape",
    "torch_to_spec",
]
