"""Post-training quantization of a float32 .mtm to int8 (or mixed), with calibration data.

    spec = quantize_model("model.mtm", x_calib, dtype="int8", out="model_int8.mtm")
    spec = dequantize_model("model_int8.mtm", out="model_f32.mtm")

Weights are quantized per output channel, symmetric, exactly as the device does
(mt_quantize_weights_s8: scale = max|w| / 127 in float32, q = round-half-even(w / scale), an
all-zero channel gets scale 1); biases stay float32. Each quantized layer's quant_range is the
min/max of its float output over the calibration inputs, from the float model run with the
host numpy reference, so the device starts with calibrated activation scales.

Layers the device cannot run in int8 (AvgPool2d, Softmax, BatchNorm2d that does not follow a
Conv/Linear, Residual blocks, nested Sequentials) stay float32 between explicit Convert layers;
batch norms after a Conv/Linear are folded into it first. Only the top-level Sequential is
rewritten: its quantized runs are wrapped as Convert(int8) ... Convert(float32).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .export.fold import fold_batchnorm
from .formats import ModelSpec, read_model, write_model
from .formats.reference_model import _build, real_tensors
from .formats.spec import QUANT_DTYPES, QUANT_LAYERS, Node, layer, leaves, normalize_node
from .reference import nn
from .reference.quantized import quantize_weights

PathLike = str | os.PathLike[str]
# Layers that take and give int8 activations on the device without parameters of their own.
INT8_PASSTHROUGH = ("ReLU", "ReLU6", "MaxPool2d", "GlobalAvgPool", "Flatten")
DEFAULT_SAMPLES = 256
_BATCH = 64


class QuantizeError(ValueError):
    """A model or calibration set that cannot be quantized (the message says why)."""


def _spec(src: PathLike | ModelSpec) -> ModelSpec:
    return src.copy() if isinstance(src, ModelSpec) else read_model(src)


def _calibration(x: Any, spec: ModelSpec, samples: int | None) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise QuantizeError(f"calibration data must be numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if spec.input_shape is not None:
        want = tuple(spec.input_shape)
        if a.shape == want:
            a = a[None]
        if a.shape[1:] != want:
            raise QuantizeError(f"calibration samples have shape {a.shape[1:]}, the model takes "
                                f"{want} (channels-last, one sample)")  # fmt: skip
    if a.ndim < 2 or len(a) == 0:
        raise QuantizeError(f"empty calibration set (shape {a.shape}): give at least one sample")
    if samples is not None:
        if samples < 1:
            raise QuantizeError(f"samples must be >= 1, got {samples}")
        a = a[:samples]
    if not np.all(np.isfinite(a)):
        raise QuantizeError("calibration data contains NaN or inf")
    return a


def _int8_ready(node: Node) -> str:
    """'quant' for a layer to quantize, 'pass' for one that runs on int8, else 'float'."""
    kind = node["type"]
    if kind in QUANT_LAYERS:
        return "quant"
    if kind in INT8_PASSTHROUGH:
        return "pass"
    return "float"


def _ranges(spec: ModelSpec, x: np.ndarray) -> tuple[list[tuple[float, float]],
                                                      list[tuple[float, float]]]:  # fmt: skip
    """(input range, output range) of every top-level layer over x, in the float reference."""
    model = _build(spec.graph, nn)
    model.load_state_dict(real_tensors(spec))
    n = len(spec.graph["layers"])
    lo_in, hi_in = np.full(n, np.inf), np.full(n, -np.inf)
    lo_out, hi_out = np.full(n, np.inf), np.full(n, -np.inf)
    try:
        for start in range(0, len(x), _BATCH):
            h = x[start : start + _BATCH]
            for i, child in enumerate(model):
                lo_in[i], hi_in[i] = min(lo_in[i], h.min()), max(hi_in[i], h.max())
                h = child.forward(h, training=False)
                lo_out[i], hi_out[i] = min(lo_out[i], h.min()), max(hi_out[i], h.max())
    except ValueError as e:  # shapes that do not fit the layers
        raise QuantizeError(f"calibration data does not fit the model: {e}") from None
    if not (np.all(np.isfinite(lo_out)) and np.all(np.isfinite(hi_out))):
        raise QuantizeError("the float model gives NaN or inf on the calibration data")
    return (list(zip(lo_in.tolist(), hi_in.tolist())),
            list(zip(lo_out.tolist(), hi_out.tolist())))  # fmt: skip


def _board_float(v: float, toward: float) -> float:
    """v as a float32 with the two lowest mantissa bits clear, rounded toward `toward`: the
    boards' MicroPython floats (object representation C) drop those bits, so such a value is
    what every target holds exactly."""
    f = np.float32(v)
    while int(f.view(np.uint32)) & 3:
        f = np.nextafter(f, np.float32(toward))
    return float(f)


def _f32_range(r: tuple[float, float]) -> tuple[float, float]:
    # outward, so the range still covers every calibration value
    return _board_float(r[0], -np.inf), _board_float(r[1], np.inf)


def quantize_spec(spec: ModelSpec, calibration_inputs: Any, dtype: str = "int8",
                  samples: int | None = DEFAULT_SAMPLES) -> ModelSpec:  # fmt: skip
    """The int8 (or mixed) version of a float32 spec, calibrated on calibration_inputs
    (N samples, channels-last, the model's input shape)."""
    if dtype not in QUANT_DTYPES:
        raise QuantizeError(f"dtype must be one of {', '.join(QUANT_DTYPES)}, got {dtype!r}")
    for prefix, node in leaves(spec.graph):
        if node["type"] == "Convert" or node.get("dtype", "float32") != "float32":
            raise QuantizeError(f"layer {prefix.rstrip('.')} ({node['type']}) is not float32: "
                                "quantize a float32 model (dequantize_model first)")
    spec = fold_batchnorm(spec)
    x = _calibration(calibration_inputs, spec, samples)
    if spec.input_shape is None:
        spec.input_shape = tuple(x.shape[1:])
    try:
        spec.validate()
    except ValueError as e:
        raise QuantizeError(f"calibration data does not fit the model: {e}") from None
    ranges_in, ranges_out = _ranges(spec, x)

    layers: list[Node] = []
    tensors: dict[str, np.ndarray] = {}
    quant: dict[str, tuple[float, int]] = {}
    int8 = False  # whether the activation at this point is int8

    def put(node: Node, old: str | None = None) -> None:
        new = f"{len(layers)}."
        layers.append(node)
        if old is not None:
            for k, v in spec.tensors.items():
                if k.startswith(old):
                    tensors[new + k[len(old):]] = np.asarray(v)
                    if k in spec.quant:
                        quant[new + k[len(old):]] = spec.quant[k]

    for i, node in enumerate(spec.graph["layers"]):
        kind, old = _int8_ready(node), f"{i}."
        if kind == "quant":
            if not int8:
                conv = layer("Convert", dtype="int8")
                conv["quant_range"] = _f32_range(ranges_in[i])
                put(conv)
                int8 = True
            new = f"{len(layers)}."
            q_node = normalize_node({**node, "dtype": dtype,
                                     "quant_range": _f32_range(ranges_out[i])})  # fmt: skip
            put(q_node, old)
            w = np.asarray(real_tensors(spec)[old + "weight"], dtype=np.float32)
            q, scale = quantize_weights(w)
            tensors[new + "weight"] = q
            quant[new + "weight"] = (1.0, 0)
            if new + "bias" in tensors:
                tensors[new + "bias"] = np.asarray(tensors[new + "bias"], dtype=np.float32)
            tensors[new + "weight_scale"] = scale.astype(np.float32)
        elif kind == "pass":
            put(node, old)
        else:
            if int8:
                put(layer("Convert", dtype="float32"))
                int8 = False
            put(node, old)
    if int8:
        put(layer("Convert", dtype="float32"))
    if not any(n.get("dtype") in QUANT_DTYPES for n in layers):
        raise QuantizeError("the model has no Linear/Conv1d/Conv2d layer to quantize")
    meta = {**spec.meta, "quantized": {"dtype": dtype, "calibration_samples": len(x)}}
    out = ModelSpec({"type": "Sequential", "layers": layers}, tensors, spec.input_shape, meta,
                    quant)  # fmt: skip
    out.validate()
    return out


def quantize_model(src_mtm: PathLike | ModelSpec, calibration_inputs: Any, dtype: str = "int8",
                   out: PathLike | None = None,
                   samples: int | None = DEFAULT_SAMPLES) -> ModelSpec:  # fmt: skip
    """Quantize a float32 .mtm (path or ModelSpec) with calibration data; writes `out` if
    given and returns the quantized spec."""
    spec = quantize_spec(_spec(src_mtm), calibration_inputs, dtype, samples)
    if out is not None:
        write_model(out, spec)
    return spec


def dequantize_spec(spec: ModelSpec) -> ModelSpec:
    """A float32 spec from an int8/mixed one: weights scale * q, Convert layers dropped."""
    real = real_tensors(spec)
    layers: list[Node] = []
    tensors: dict[str, np.ndarray] = {}
    for i, node in enumerate(spec.graph["layers"]):
        if node["type"] == "Convert":
            continue
        old, new = f"{i}.", f"{len(layers)}."
        layers.append(_plain_tree(node))
        for k, v in real.items():
            if k.startswith(old):
                tensors[new + k[len(old):]] = v.astype(np.float32)
    meta = {k: v for k, v in spec.meta.items() if k != "quantized"}
    out = ModelSpec({"type": "Sequential", "layers": layers}, tensors, spec.input_shape, meta)
    out.validate()
    return out


def _plain_tree(node: Node) -> Node:
    if node["type"] == "Sequential":
        kept = [n for n in node["layers"] if n["type"] != "Convert"]
        if len(kept) != len(node["layers"]):
            raise QuantizeError("Convert layers inside a nested Sequential are not supported")
        return {"type": "Sequential", "layers": [_plain_tree(n) for n in kept]}
    if node["type"] == "Residual":
        short = node.get("shortcut")
        return {"type": "Residual", "body": _plain_tree(node["body"]),
                "shortcut": None if short is None else _plain_tree(short)}  # fmt: skip
    return {k: v for k, v in node.items() if k not in ("dtype", "quant_range")}


def dequantize_model(src_mtm: PathLike | ModelSpec, out: PathLike | None = None) -> ModelSpec:
    """The float32 version of an int8/mixed (or float16) .mtm; writes `out` if given."""
    spec = dequantize_spec(_spec(src_mtm))
    if out is not None:
        write_model(out, spec)
    return spec


def load_calibration(path: PathLike, samples: int | None = DEFAULT_SAMPLES) -> np.ndarray:
    """Calibration inputs from an .mtd dataset or an .npz with an array x (first `samples`)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no calibration file {p}")
    if p.suffix.lower() == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                if "x" not in z:
                    raise QuantizeError(f"{p}: .npz has no array x (has {sorted(z.files)})")
                x = z["x"]
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
            raise QuantizeError(f"{p}: not a readable .npz archive ({e})") from None
        if x.dtype.kind not in "fiub" or x.ndim < 1 or len(x) == 0:
            raise QuantizeError(f"{p}: x must be a non-empty numeric array (got {x.dtype} {x.shape})")
        return x[:samples] if samples is not None else x
    from .formats import read_dataset

    x = read_dataset(p).float_x()  # real values: int8 samples dequantized
    return x[:samples] if samples is not None else x
