"""The global model between the server, the clients and the boards.

Flower moves the model as an ArrayRecord of float32 tensors named as the device's state_dict
("1.weight", ...) and its graph as JSON in the round's config; a client turns them back into a
ModelSpec, writes the .mtm in the precision the run asks for (int8 and mixed are quantized
here, calibrated on the board's own samples) and turns what the board trained back into
float32 tensors with the same names, so any stock strategy can average them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..formats import ModelSpec, expected_tensors, layer, sequential
from ..formats.reference_model import real_tensors
from ..formats.spec import QUANT_DTYPES, leaves

DTYPES = ("float32", *QUANT_DTYPES)  # float32, int8, mixed
KINDS = ("mlp", "cnn", "dscnn")


def initial_model(kind: str = "mlp", seed: int = 0, input_shape: tuple[int, int, int] = (8, 8, 1),
                  classes: int = 10, width: int = 32) -> ModelSpec:  # fmt: skip
    """A freshly initialized float32 model: for 8x8 images (digits) "mlp" (64-32-10, as
    examples/train_digits.py) or "cnn" (two 3x3 convs, max pooling, a linear head); for
    49x10 MFCCs "dscnn" (examples/train_kws.py's DS-CNN without BatchNorm, `width` channels)."""
    from ..export import spec_from_arrays
    from ..reference import nn as R

    if kind not in KINDS:
        raise ValueError(f"model kind must be one of {', '.join(KINDS)}, not {kind!r}")
    h, w, c = input_shape
    R.seed(seed)
    if kind == "dscnn":
        return _dscnn(input_shape, classes, width, seed)
    if kind == "mlp":
        graph = sequential(layer("Flatten"), layer("Linear", in_features=h * w * c, out_features=32),
                           layer("ReLU"), layer("Linear", in_features=32, out_features=classes))  # fmt: skip
        ref = R.Sequential(R.Flatten(), R.Linear(h * w * c, 32), R.ReLU(), R.Linear(32, classes))
    else:
        graph = sequential(
            layer("Conv2d", in_channels=c, out_channels=8, kernel_size=3, padding=1), layer("ReLU"),
            layer("MaxPool2d", kernel_size=2),
            layer("Conv2d", in_channels=8, out_channels=16, kernel_size=3, padding=1), layer("ReLU"),
            layer("MaxPool2d", kernel_size=2), layer("Flatten"),
            layer("Linear", in_features=16 * (h // 4) * (w // 4), out_features=classes))
        ref = R.Sequential(R.Conv2d(c, 8, 3, padding=1), R.ReLU(), R.MaxPool2d(2),
                           R.Conv2d(8, 16, 3, padding=1), R.ReLU(), R.MaxPool2d(2), R.Flatten(),
                           R.Linear(16 * (h // 4) * (w // 4), classes))  # fmt: skip
    state = {k: np.asarray(v, np.float32) for k, v in ref.state_dict().items()}
    return spec_from_arrays(graph, state, input_shape=input_shape)


def _dscnn(input_shape: tuple[int, int, int], classes: int, width: int, seed: int) -> ModelSpec:
    if input_shape != (49, 10, 1):
        raise ValueError(f"the DS-CNN takes 49x10x1 MFCCs, not {input_shape}")
    relu = layer("ReLU")
    graph = sequential(
        layer("Conv2d", in_channels=1, out_channels=width, kernel_size=(10, 4), stride=2, padding=(5, 1)), relu,
        *[node for _ in range(2) for node in (
            layer("Conv2d", in_channels=width, out_channels=width, kernel_size=3, padding=1, groups=width), relu,
            layer("Conv2d", in_channels=width, out_channels=width, kernel_size=1), relu)],
        layer("AvgPool2d", kernel_size=(5, 1)), layer("Flatten"),
        layer("Linear", in_features=25 * width, out_features=classes))  # fmt: skip
    # He-uniform weights (He et al. 2015) and zero biases: without BatchNorm, the common bound
    # of 1/sqrt(fan_in) shrinks the signal ~2.4x per conv and five of them stall plain SGD.
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in expected_tensors(graph).items():
        fan_in = int(np.prod(shape[1:]))
        state[name] = (rng.uniform(-1, 1, shape) * np.sqrt(6 / fan_in) if name.endswith("weight")
                       else np.zeros(shape)).astype(np.float32)  # fmt: skip
    spec = ModelSpec(graph, state, input_shape)
    spec.validate()
    return spec


def float_arrays(spec: ModelSpec) -> dict[str, np.ndarray]:
    """The model's parameters as float32 arrays by name (int8 ones dequantized)."""
    return {name: np.ascontiguousarray(t, dtype=np.float32) for name, t in real_tensors(spec).items()}


def describe(spec: ModelSpec) -> dict[str, str]:
    """What travels beside the arrays (ConfigRecord values): the graph and the input shape."""
    if any(node.get("dtype", "float32") != "float32" or node["type"] == "Convert"
           for _, node in leaves(spec.graph)):  # fmt: skip
        raise ValueError("the fleet's global model is float32: give a float32 model")
    shape = ",".join(str(d) for d in spec.input_shape or ())
    return {"graph": json.dumps(spec.graph), "input-shape": shape}


def rebuild(arrays: Mapping[str, np.ndarray], info: Mapping[str, Any]) -> ModelSpec:
    """The float32 ModelSpec from a round's arrays and describe()'s fields."""
    shape_text = str(info.get("input-shape", ""))
    shape = tuple(int(d) for d in shape_text.split(",")) if shape_text else None
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    spec = ModelSpec(json.loads(str(info["graph"])), tensors, shape)
    spec.validate()
    return spec


def for_device(spec: ModelSpec, dtype: str, calibration: np.ndarray | None = None) -> ModelSpec:
    """The spec to write as the board's .mtm: float32 as is; int8 or mixed quantized (per
    channel, as the device does) with activation ranges from `calibration` inputs."""
    if dtype == "float32":
        return spec
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if calibration is None:
        raise ValueError(f"a {dtype} model needs calibration samples (the board's data)")
    from ..quantize import quantize_spec

    return quantize_spec(spec, calibration, dtype)


def from_device(spec: ModelSpec, names: Iterable[str]) -> dict[str, np.ndarray]:
    """float32 arrays, named as the global model's and in its order `names`, from a model the
    board trained (an int8 or mixed model's weights dequantized and its Convert layers dropped).
    The order matters: Flower's FedAvgM pairs the reply's arrays with the global ones by position."""
    if any(node["type"] == "Convert" or node.get("dtype", "float32") != "float32"
           for _, node in leaves(spec.graph)):  # fmt: skip
        from ..quantize import dequantize_spec

        spec = dequantize_spec(spec)
    arrays, names = float_arrays(spec), list(names)
    if sorted(arrays) != sorted(names):
        raise ValueError(f"the board's model has parameters {sorted(arrays)}, the global model {sorted(names)}")
    return {name: arrays[name] for name in names}
