"""What a model file is, told by its content (not its suffix), and the model derived from it.

Kinds: "mtm" (an mcutrain model), "npz" (numpy state dict), "state_dict" (torch.save of a
dict of tensors), "module" (torch.save of a whole nn.Module: loading it unpickles, which runs
code from the file; only load files you trust), "torchscript" (torch.jit.save), "onnx".
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

from ..formats.mtm import MAGIC as MTM_MAGIC
from ..formats.spec import Shape, SpecError
from .derived import Derived

KINDS = ("mtm", "npz", "state_dict", "module", "torchscript", "onnx")


def model_kind(path: str | os.PathLike[str]) -> str:
    """One of KINDS; ValueError when the content is none of them."""
    p = Path(path)
    with p.open("rb") as f:
        head = f.read(8)
    if head.startswith(MTM_MAGIC):
        return "mtm"
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        if any("/code/" in n or n.startswith("code/") for n in names):
            return "torchscript"  # torch.jit.save archives carry the module's code
        if any(n.endswith("data.pkl") for n in names):
            return _torch_pickle_kind(p)
    elif head[:1] == b"\x80":  # torch.save's legacy (non-zip) pickle format
        return _torch_pickle_kind(p)
    if _is_onnx(p):
        return "onnx"
    raise ValueError(f"{p}: not a model file mcutrain knows (.mtm, .npz, a torch.save'd state "
                     "dict or module, a TorchScript file, an ONNX file)")  # fmt: skip


def _is_onnx(p: Path) -> bool:
    # Protobuf has no magic number: an ONNX ModelProto starts with its ir_version (field 1,
    # varint: 0x08), and must then parse and have a graph.
    if p.read_bytes()[:1] != b"\x08":
        return False
    try:
        import onnx
    except ModuleNotFoundError:
        return True  # looks like one; loading it says what to install
    try:
        return len(onnx.load(str(p), load_external_data=False).graph.node) > 0
    except Exception:
        return False


def _torch_pickle_kind(p: Path) -> str:
    import pickle

    import torch

    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return "module"  # weights_only refuses classes: a whole pickled module (or worse)
    if isinstance(obj, dict):
        return "state_dict"
    raise ValueError(f"{p}: a torch.save file of {type(obj).__name__}, not a model or state dict")


def load_module(path: str | os.PathLike[str]) -> Any:
    """The nn.Module in a torch.save file. This unpickles the file, which runs code it names:
    only for files you trust. The module's classes must be importable (as for torch.load)."""
    import torch
    from torch import nn

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError) as e:
        raise ValueError(f"{path}: cannot unpickle the module ({e}): its class must be "
                         "importable here, as torch.load needs") from e  # fmt: skip
    if not isinstance(obj, nn.Module):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not an nn.Module")
    return obj.eval()


def torchscript_to_onnx(module: Any, input_shape: Shape) -> bytes:
    """A TorchScript module as ONNX (the TorchScript-based exporter: its graph, inlined, with
    the module's parameter names as initializer names), for onnx_import to read."""
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(1, *input_shape),), buf,  # type: ignore[arg-type]
                          dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                          input_names=["input"], output_names=["output"])  # fmt: skip
    return buf.getvalue()


def derive(
    source: Any, input_shape: Shape | None = None, graph: Any = None
) -> Derived:
    """The model of `source`: a path (any kind but npz/mtm), an nn.Module, a TorchScript
    module, an onnx.ModelProto, or a state dict with its mcutrain `graph`.

    input_shape is one sample in PyTorch's layout, (C, H, W); an ONNX model's own fixed input
    dims and a graph file's stored input shape are used when it is None."""
    if isinstance(source, (str, os.PathLike)):
        kind = model_kind(source)
        if kind == "module":
            return derive(load_module(source), input_shape)
        if kind == "torchscript":
            import torch

            return derive(torch.jit.load(str(source), map_location="cpu"), input_shape)
        if kind == "onnx":
            import onnx

            return derive(onnx.load(str(source)), input_shape)
        if kind == "state_dict":
            import torch

            state = torch.load(source, map_location="cpu", weights_only=True)
            if graph is None:
                raise ValueError(f"{source}: a PyTorch state dict needs --graph (its layers "
                                 "are not in it); a whole module (torch.save(model)), "
                                 "TorchScript or ONNX file does not")  # fmt: skip
            return derive(state, input_shape, graph)
        raise ValueError(f"{source}: a {kind} file is already in mcutrain's terms: nothing "
                         "to derive")  # fmt: skip
    kind = type(source).__module__.split(".")[0] + "." + type(source).__name__
    if kind == "onnx.ModelProto":
        from .onnx_import import onnx_to_derived

        return onnx_to_derived(source, input_shape)
    import torch

    if isinstance(source, torch.jit.ScriptModule):
        from .onnx_import import input_shape_of, load_onnx, onnx_to_derived

        if input_shape is None:
            raise ValueError("a TorchScript model needs --input-shape (one sample, PyTorch's "
                             "layout, e.g. 1,28,28): its file does not say")  # fmt: skip
        model = load_onnx(torchscript_to_onnx(source, tuple(input_shape)))
        assert input_shape_of(model) == tuple(input_shape)
        derived = onnx_to_derived(model, input_shape)
        derived.spec.meta["source"] = f"torchscript {source.original_name}"
        state = source.state_dict()
        derived.buffers = {k: int(v) for k, v in state.items()
                           if k.endswith("num_batches_tracked")}  # fmt: skip
        derived.source_keys = list(state)
        return derived
    if isinstance(source, torch.nn.Module):
        from .torch_export import torch_to_derived

        return torch_to_derived(source, input_shape)
    if isinstance(source, dict):
        return _from_state_dict(source, input_shape, graph)
    raise SpecError(f"cannot derive a model from a {type(source).__name__}")


def _from_state_dict(state: dict[str, Any], input_shape: Shape | None, graph: Any) -> Derived:
    import numpy as np

    from ..formats.spec import ModelSpec, expected_tensors
    from .layout import convert_tensors, torch_to_device_shape
    from .numpy_export import load_graph

    graph_doc, stored, meta = load_graph(graph)
    # --input-shape is PyTorch's (C, H, W); a graph file stores the device's (H, W, C).
    shape = torch_to_device_shape(tuple(input_shape)) if input_shape is not None else stored
    arrays = {k: np.asarray(v.detach().cpu().float() if hasattr(v, "detach") else v,
                            dtype=np.float32)
              for k, v in state.items() if not k.endswith("num_batches_tracked")}  # fmt: skip
    spec = ModelSpec(graph_doc, {}, shape, meta)
    missing = sorted(set(expected_tensors(spec.graph)) - set(arrays))
    if missing:
        raise SpecError(f"state dict lacks {missing}")
    spec.tensors = convert_tensors(spec.graph, arrays, spec.input_shape, to_device=True)
    spec.validate()
    buffers = {k: int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}
    return Derived(spec, {k: k for k in spec.tensors}, buffers, list(state))
