"""A dataset in memory: what the source loaders produce and write_dataset/read_dataset exchange."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .quant import dequantize_int8


@dataclass
class DatasetArrays:
    """Samples x (N, *sample_shape), labels y (N,) class indices or (N, k) float targets.

    x is channels-last like the device's activations: images (N, H, W, C), sequences (N, L, C),
    feature vectors (N, F). For int8 x, `scale` and `zero_point` give real = scale * (q - zp).
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list[str] | None = None
    teacher_logits: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    scale: float | None = None
    zero_point: int | None = None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def float_x(self) -> np.ndarray:
        """x as float32 (dequantized if int8)."""
        if self.x.dtype == np.int8:
            if self.scale is None:
                raise ValueError("int8 samples without a scale")
            return dequantize_int8(self.x, self.scale, self.zero_point or 0)
        return self.x.astype(np.float32)
