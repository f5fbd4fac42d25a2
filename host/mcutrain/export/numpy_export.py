"""Export from numpy: a state dict in an .npz plus a graph (JSON) becomes an .mtm file."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..formats.mtm import write_model
from ..formats.spec import ModelSpec, Node, Shape, SpecError, expected_tensors
from .fold import fold_batchnorm
from .layout import convert_tensors

GRAPH_KEY = "__graph__"  # an .npz entry holding {"model": graph, "input_shape": [...]} as JSON


def spec_from_arrays(
    graph: Node,
    tensors: Mapping[str, Any],
    *,
    input_shape: Shape | None = None,
    layout: str = "device",
    fold_bn: bool = False,
    meta: dict[str, Any] | None = None,
) -> ModelSpec:
    """A checked ModelSpec from a graph and a state dict (names as the device's state_dict).

    layout "device": tensors are already OHWI / channels-last; layout "torch": tensors are
    PyTorch's (OIHW, Linear columns in (C, H, W) flatten order). input_shape is always one
    sample's device-layout shape, e.g. (H, W, C). PyTorch's num_batches_tracked entries are
    ignored; fold_bn folds batch norms into the layers before them.
    """
    if layout not in ("device", "torch"):
        raise ValueError(f"layout must be 'device' or 'torch', got {layout!r}")
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()
              if not k.endswith("num_batches_tracked") and k != GRAPH_KEY}  # fmt: skip
    spec = ModelSpec(graph, {}, input_shape, dict(meta or {}))  # normalizes the graph
    if layout == "torch":
        missing = sorted(set(expected_tensors(spec.graph)) - set(arrays))
        if missing:
            raise SpecError(f"state dict lacks {missing}")
        arrays = convert_tensors(spec.graph, arrays, spec.input_shape, to_device=True)
    spec.tensors = arrays
    spec.validate()
    return fold_batchnorm(spec) if fold_bn else spec


def load_graph(
    source: str | os.PathLike[str] | Node,
) -> tuple[Node, Shape | None, dict[str, Any]]:
    """(graph, device-layout input_shape or None, meta) from a dict, or a JSON file holding a
    graph or {"model": graph, "input_shape": [...], "meta": {...}}."""
    doc = source if isinstance(source, dict) else json.loads(Path(source).read_text())
    if "model" in doc:
        shape = doc.get("input_shape")
        return doc["model"], None if shape is None else tuple(shape), dict(doc.get("meta", {}))
    return doc, None, {}


def export_npz(
    npz_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    graph: str | os.PathLike[str] | Node | None = None,
    *,
    input_shape: Shape | None = None,
    layout: str = "device",
    fold_bn: bool = False,
) -> ModelSpec:
    """Write the .mtm for the state dict in an .npz and return its spec. The graph comes from
    `graph` (a dict or a JSON file) or else from the npz's own __graph__ entry (as spec_to_npz
    writes it); input_shape (device layout) overrides the one stored with the graph."""
    with np.load(npz_path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if graph is None:
        if GRAPH_KEY not in arrays:
            raise SpecError(f"{npz_path}: no graph given and no {GRAPH_KEY} entry in the npz")
        graph = json.loads(str(arrays[GRAPH_KEY]))
    graph_doc, stored, meta = load_graph(graph)
    spec = spec_from_arrays(graph_doc, arrays, input_shape=input_shape or stored, layout=layout,
                            fold_bn=fold_bn, meta=meta)  # fmt: skip
    write_model(out_path, spec)
    return spec
