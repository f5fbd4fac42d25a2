"""The global model's loss and accuracy on held-out data, computed on the host with the numpy
reference (what the device computes, in float64): the server's view of each round."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..formats import ModelSpec, build_reference_model, read_dataset


class CentralTest:
    def __init__(self, path: Path | str) -> None:
        data = read_dataset(path)
        x = np.asarray(data.x)
        if x.dtype == np.int8:
            x = (data.scale or 1.0) * (x.astype(np.float64) - (data.zero_point or 0))
        self.x = np.asarray(x, np.float64)
        self.y = np.asarray(data.y).astype(np.int64)

    def __call__(self, graph_spec: ModelSpec, arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
        spec = ModelSpec(graph_spec.graph, dict(arrays), graph_spec.input_shape)
        logits = np.asarray(build_reference_model(spec).predict(self.x), np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = float(-log_p[np.arange(len(self.y)), self.y].mean())
        accuracy = float((logits.argmax(axis=1) == self.y).mean())
        return {"loss": loss, "accuracy": accuracy}
