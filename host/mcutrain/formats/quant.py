"""int8 with one scale and zero point per tensor or dataset: real = scale * (q - zero_point)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def int8_params(x: ArrayLike) -> tuple[float, int]:
    """(scale, zero_point) mapping x's range, widened to include 0, onto [-128, 127].

    Including 0 makes zero (padding, ReLU outputs) exact; images in [0, 1] get scale 1/255 and
    zero point -128.
    """
    a = np.asarray(x, dtype=np.float64)
    lo = min(float(a.min()), 0.0) if a.size else 0.0
    hi = max(float(a.max()), 0.0) if a.size else 0.0
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("int8_params: data contains inf or nan")
    if hi == lo:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
    return float(np.float32(scale)), zero_point


def quantize_int8(x: ArrayLike, scale: float, zero_point: int) -> NDArray[np.int8]:
    """Round-to-nearest int8 codes of x, saturating at -128 and 127."""
    if not scale > 0:
        raise ValueError(f"quantize_int8: scale must be > 0, got {scale}")
    q = np.rint(np.asarray(x, dtype=np.float64) / scale) + zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize_int8(q: ArrayLike, scale: float, zero_point: int) -> NDArray[np.float32]:
    """The real values of int8 codes q."""
    return ((np.asarray(q, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(
        np.float32
    )
