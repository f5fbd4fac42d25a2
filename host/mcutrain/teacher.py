"""Teacher logits for distillation on the board, computed on the host (`push-dataset --teacher`).

The board trains a student with `mt.distillation(...)` against logits stored in the .mtd's
teacher_logits field, so the teacher itself never goes to the board. A teacher is
- an `.mtm` model, run by the numpy reference implementation (what the device would compute);
- a PyTorch module saved whole (`torch.save(model, path)`) or as TorchScript
  (`torch.jit.script(model).save(path)`), run in eval mode. Samples are stored channels-last
  (N, H, W, C); a PyTorch teacher gets them channels-first (N, C, H, W) as PyTorch layers
  expect ((N, C, L) for sequences; feature vectors unchanged).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .formats import DatasetArrays, load_reference_model

# Samples per forward pass: bounds the host memory a large dataset's teacher pass needs.
BATCH = 256

Teacher = Callable[[np.ndarray], np.ndarray]  # (N, *sample_shape) channels-last -> (N, classes)


def _is_torchscript(path: Path) -> bool:
    # Both are zip archives; only TorchScript's holds compiled code (and constants.pkl).
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("/constants.pkl") for name in z.namelist())
    except zipfile.BadZipFile:
        return False


def _torch_module(path: Path) -> Any:
    import torch

    if _is_torchscript(path):
        return torch.jit.load(str(path), map_location="cpu")
    # A whole pickled module runs code from the file when loaded, as torch.save's own docs
    # warn: only for teachers the user saved (the CLI's MODEL argument).
    model = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"{path}: a teacher must be a whole module (torch.save(model, path)) or TorchScript, "
            f"not a {type(model).__name__} (a state dict has no layers: export it to .mtm first)")
    return model


def _channels_first(x: np.ndarray) -> np.ndarray:
    if x.ndim <= 2:
        return x
    return np.moveaxis(x, -1, 1)


def load_teacher(path: str | os.PathLike[str]) -> Teacher:
    """A function from float32 samples (N, *sample_shape), channels-last, to logits (N, classes)."""
    path = Path(path)
    if path.suffix == ".mtm":
        model = load_reference_model(path)
        return lambda x: np.asarray(model.predict(x), dtype=np.float64)
    if path.suffix in (".pt", ".pth"):
        import torch

        module = _torch_module(path)
        module.eval()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = module(torch.from_numpy(np.ascontiguousarray(_channels_first(x), dtype=np.float32)))
            return out.double().numpy()

        return run
    raise ValueError(f"{path}: unknown teacher model (want .mtm, or a PyTorch module as .pt/.pth)")


def teacher_logits(teacher: Teacher, data: DatasetArrays) -> np.ndarray:
    """The teacher's logits (N, classes) for every sample of data, in batches of BATCH."""
    if data.y.ndim != 1:
        raise ValueError("teacher logits need class labels, not float targets")
    x = data.float_x()
    parts = []
    for start in range(0, len(x), BATCH):
        out = teacher(x[start:start + BATCH])
        n = min(BATCH, len(x) - start)
        if out.ndim != 2 or out.shape[0] != n:
            raise ValueError(f"the teacher gave logits of shape {tuple(out.shape)} for {n} samples "
                             f"of {tuple(x.shape[1:])}; want ({n}, classes)")  # fmt: skip
        parts.append(out)
    logits = np.concatenate(parts) if parts else np.zeros((0, 0))
    if not np.all(np.isfinite(logits)):
        raise ValueError("the teacher gave non-finite logits")
    return logits


def with_teacher_logits(data: DatasetArrays, model: str | os.PathLike[str]) -> DatasetArrays:
    """data with teacher_logits from the model file (.mtm, or a PyTorch module .pt/.pth)."""
    return dataclasses.replace(data, teacher_logits=teacher_logits(load_teacher(model), data))
