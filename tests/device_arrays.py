"""Exact float32 (and float16, int8) arrays to and from device scripts.

Arrays travel as hex of their little-endian bytes, so nothing is lost to decimal printing or
to the 30-bit floats of the emulated boards' object representation. A script built with
`DeviceScript` prints one `@name hex` line per result; `run` parses them back.
"""

from __future__ import annotations

import numpy as np
from mcutrain.reference.quantized import Rng
from mcutrain.runner import run_on


def int8_layer_rng_state(seed: int, parameters: int) -> int:
    """The stochastic-rounding state of an int8 layer built right after mt.seed(seed): the
    mixed seed (random.c) after the float weights' and biases' draws (`parameters`, one
    each), then one more, made odd (layer_s8.c)."""
    rng = Rng((seed * 2654435761 + 0x9E3779B9) & 0xFFFFFFFF)
    for _ in range(parameters + 1):
        rng.next()
    return rng.state | 1


# numpy dtype of each device dtype's bytes
NUMPY_DTYPES = {"float32": "<f4", "float16": "<f2", "int8": "i1"}


def tensor_expr(a: np.ndarray, dtype: str = "float32") -> str:
    """MicroPython expression creating an mt.Tensor equal to `a` (same shape) in `dtype`
    ("float32" or "float16": `a` is rounded to it first; "int8": `a` holds the integers)."""
    data = np.ascontiguousarray(a, dtype=NUMPY_DTYPES[dtype])
    suffix = "" if dtype == "float32" else f", dtype=mt.{dtype}"
    return f"mt.Tensor(bytes.fromhex('{data.tobytes().hex()}'), {tuple(data.shape)!r}{suffix})"


def bars(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n noisy 8x8 one-channel images of a horizontal (label 0) or vertical (label 1) bar at
    a random position: a small task every dtype's CNN must learn."""
    x = rng.normal(0, 0.2, (n, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    for i in range(n):
        k = rng.integers(0, 8)
        if labels[i]:
            x[i, :, k, 0] += 1.0
        else:
            x[i, k, :, 0] += 1.0
    return x, labels


# Device code printing `grown N`: the bytes ten more model.train_step(x, y, loss, opt) calls
# allocate (none may, on the boards). In a function: new globals would grow the module's dict.
ALLOCATION_CHECK = """def steps():
    gc.collect()
    before = gc.mem_alloc()
    for _ in range(10):
        model.train_step(x, y, loss, opt)
    print('grown', gc.mem_alloc() - before)
steps()"""


def labels_expr(labels: np.ndarray) -> str:
    return "[" + ", ".join(str(int(v)) for v in labels) + "]"


class DeviceScript:
    """A device script assembled from code lines; `emit` records tensors to send back."""

    def __init__(self) -> None:
        self.lines = ["import mcutrain as mt", "def _emit(name, t):",
                      "    print('@' + name, bytes(memoryview(t)).hex())"]
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}

    def add(self, code: str) -> None:
        self.lines.append(code)

    def emit(self, name: str, expr: str, shape: tuple[int, ...], dtype: str = "float32") -> None:
        """Send back the tensor `expr` (whose shape and dtype the host knows)."""
        self.shapes[name] = tuple(shape)
        self.dtypes[name] = dtype
        self.lines.append(f"_emit({name!r}, {expr})")

    def run(self, target, timeout: float = 120) -> dict[str, np.ndarray]:
        out = run_on(target, "\n".join(self.lines), timeout=timeout)
        results: dict[str, np.ndarray] = {}
        for line in out.splitlines():
            if line.startswith("@"):
                name, _, data = line[1:].partition(" ")
                dtype = NUMPY_DTYPES[self.dtypes.get(name, "float32")]
                results[name] = np.frombuffer(bytes.fromhex(data), dtype=dtype).reshape(self.shapes[name])
        missing = set(self.shapes) - set(results)
        assert not missing, f"device printed no {sorted(missing)}; output:\n{out}"
        return results


def assert_close_bilinear(got: np.ndarray, ref: np.ndarray, magnitude: np.ndarray, terms: int, what: str) -> None:
    """Check an fp32 sum of `terms` products against a float64 reference.

    Any fp32 summation order is within about terms * 2**-24 of the exact sum relative to the
    sum of absolute terms (`magnitude`, the same computation on absolute values; Higham,
    eq. 3.5); a factor 4 covers the rounding of inputs and products. 1e-30 keeps zero
    magnitudes (padding-only outputs) from asking for exact zeros in a different sign.
    """
    u = 2.0**-24
    bound = 4 * (terms + 2) * u * np.abs(magnitude) + 1e-30
    err = np.abs(got.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (
        f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
        f"(got {got[worst]!r}, reference {ref[worst]!r})")
