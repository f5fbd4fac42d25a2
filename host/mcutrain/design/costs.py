"""Instructions (and estimated Cortex-M4 cycles) of a training step and of one inference of a
candidate Sequential on a board, from per-kernel cost fits (calibrate.py writes them to
costs_<board>.json next to this file).

Each layer contributes, per pass (forward, grad_input, grad_weight), a linear function of
its shape's features (`features()`: MACs, im2col elements, inputs, outputs, weights, a
constant), fitted per kernel group (`group()`: a float32 conv's three paths are three groups);
a model adds a per-step overhead (the Sequential's dispatch and the loss) fitted on whole
models. A training step runs every layer's forward, the grad_input of every layer after the
first trainable one and the grad_weight (with the fused SGD update) of every trainable
layer, as train_step does.

    fits = load_fits("qemu-m4f")
    predict_cost(arch, fits)   # {"train_step": {"instructions": ..., "cycles": ...}, "inference": {...}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .arch import Arch, size
from .memory import GEMM_PACK_BOARDS, PlannedLayer, conv_geometry, conv_kind, gemm_pack_floats, plan

# "inference": the forward of predict (BatchNorm uses its running statistics there)
PASSES = ("forward", "grad_input", "grad_weight", "inference")
FITS_DIR = Path(__file__).resolve().parent
Fits = dict[str, Any]


def fits_path(board: str) -> Path:
    return FITS_DIR / f"costs_{board}.json"


def load_fits(board: str = "qemu-m4f") -> Fits:
    path = fits_path(board)
    if not path.is_file():
        raise FileNotFoundError(f"no cost fits for {board} ({path}): run "
                                f"`python -m mcutrain.design.calibrate --board {board}`")
    fits: Fits = json.loads(path.read_text())
    return fits


def group(p: PlannedLayer) -> str:
    """The cost group of a planned layer: the kernel its passes run."""
    k = p.layer.kind
    if k in ("Conv2d", "Conv1d"):
        # a general Conv1d's im2col (one run per pixel) and its small GEMMs differ enough
        # from Conv2d's to get fits of their own
        kind = conv_kind(p.layer)
        return "conv." + kind + ("1d" if k == "Conv1d" and kind == "general" else "")
    return {"Linear": "linear", "ReLU": "relu", "ReLU6": "relu6", "MaxPool2d": "maxpool", "AvgPool2d": "avgpool",
            "GlobalAvgPool": "gap", "BatchNorm2d": "batchnorm", "Softmax": "softmax", "Flatten": "flatten",
            "Convert": "convert"}[k]


def gemm_features(m: int, n: int, k: int, packed: bool = False) -> dict[str, float]:
    """Terms of one GEMM call C(m x n) += A(m x k) B(k x n) (kernels/gemm_f32.c): 4x4 blocks,
    scalar edges where m or n is not a multiple of 4, per-block and per-call work, and
    the packed path's MACs (pointwise convs on packing builds)."""
    macs = float(m * n * k)
    if macs == 0:
        return {}
    f = {"macs": macs, "macs_m_edge": macs * (m % 4) / m, "macs_n_edge": macs * (n % 4) / n,
         "blocks": float(-(-m // 4) * -(-n // 4)), "blocks_k": float(-(-m // 4) * -(-n // 4) * k), "calls": 1.0}
    if packed:
        f["macs_packed"] = macs
    return f


def _add(total: dict[str, float], part: dict[str, float], times: float = 1.0) -> None:
    for key, v in part.items():
        total[key] = total.get(key, 0.0) + v * times


def features(p: PlannedLayer, pass_name: str = "forward", gemm_pack: bool = True) -> dict[str, float]:
    """The shape features the cost of p's pass `pass_name` is linear in."""
    if pass_name == "inference":
        pass_name = "forward"  # the same kernels (BatchNorm's differ in cost, not in shape)
    k = p.layer.kind
    n_in, n_out = size(p.in_shape), size(p.out_shape)
    f: dict[str, float] = {"one": 1.0, "inputs": n_in, "outputs": n_out}
    if k in ("Conv2d", "Conv1d"):
        layer = p.layer
        batch, _, _, out_h, out_w, patch = conv_geometry(layer, p.in_shape, p.out_shape)
        pixels = batch * out_h * out_w
        path = conv_kind(layer)
        f["weights"] = layer.out_ch * patch
        if path == "depthwise":
            c = layer.out_ch
            macs = float(pixels * c * patch)
            taps = layer.kernel[0] * layer.kernel[1]
            f["macs8"] = macs * (c - c % 8) / c
            f["macs_rem"] = macs * (c % 8) / c
            f["rect_rows"] = float(batch * taps * out_h * (c // 8 + c % 8))
            f["rects"] = float(batch * taps * (c // 8 + c % 8))
        elif path == "pointwise":
            i, o = layer.in_ch, layer.out_ch
            dims = {"forward": (pixels, o, i), "grad_input": (pixels, i, o), "grad_weight": (o, i, pixels)}[pass_name]
            _add(f, gemm_features(*dims, packed=gemm_pack and gemm_pack_floats(*dims) > 0))
        else:
            og = layer.out_ch // layer.groups
            tile = max(4, min(64, 4096 // patch)) & ~3
            tile = min(tile, pixels)
            for q0 in range(0, pixels, tile):
                rows = min(tile, pixels - q0)
                dims = {"forward": (rows, og, patch), "grad_input": (rows, patch, og),
                        "grad_weight": (og, patch, rows)}[pass_name]
                _add(f, gemm_features(*dims), layer.groups)
            # im2col copies a patch as kernel_h runs of kernel_w * in_c floats, cut at padding
            f["im2col"] = float(pixels * patch)
            f["im2col_runs"] = float(pixels * layer.kernel[0])
            f["im2col_taps"] = float(pixels * layer.kernel[0] * layer.kernel[1])
    elif k == "Linear":
        b, i, o = p.in_shape[0], p.layer.in_ch, p.layer.out_ch
        dims = {"forward": (b, o, i), "grad_input": (b, i, o), "grad_weight": (o, i, b)}[pass_name]
        _add(f, gemm_features(*dims))
        f["weights"] = float(i * o)
    elif k in ("MaxPool2d", "AvgPool2d"):
        f["window"] = n_out * p.layer.kernel[0] * p.layer.kernel[1]
        f["pixels"] = n_out // p.out_shape[-1]
        f["window_pixels"] = f["pixels"] * p.layer.kernel[0] * p.layer.kernel[1]
    elif k == "BatchNorm2d":
        f["channels"] = p.layer.in_ch
    elif k == "Softmax":
        f["rows"] = n_out // p.out_shape[-1]
    return f


def pass_cost(fits: Fits, grp: str, pass_name: str, feats: dict[str, float], unit: str = "instructions") -> float:
    """One pass of one layer: its group's fit applied to the layer's features (0 for a pass
    the group does not have, e.g. Flatten's)."""
    coef = fits["layers"].get(grp, {}).get(pass_name, {}).get(unit)
    if coef is None:
        if grp in fits["layers"] or grp == "flatten":
            return 0.0
        raise KeyError(f"no cost fit for {grp} ({pass_name}) on {fits['board']}")
    return float(sum(c * feats.get(name, 0.0) for name, c in coef.items()))


def step_passes(arch: Arch) -> list[tuple[PlannedLayer, str]]:
    """The (layer, pass) pairs of one train_step: every forward, then backward from the last
    layer down to the first trainable one (seq_backward_stop), which takes no grad_input."""
    layers = plan(arch)
    stop = next((i for i, p in enumerate(layers) if p.layer.has_params), len(layers))
    out = [(p, "forward") for p in layers]
    for i in range(len(layers) - 1, stop - 1, -1):
        if i > stop:
            out.append((layers[i], "grad_input"))
        if layers[i].layer.has_params:
            out.append((layers[i], "grad_weight"))
    return out


def overhead_features(arch: Arch) -> dict[str, float]:
    """What the per-step overhead is linear in: the layers dispatched, counted per cost group
    (a layer's pass measured on its own carries a top-level call that a Sequential's
    dispatch replaces), and the loss's outputs."""
    last = arch.shapes()[-1]
    f = {"one": 1.0, "loss": float(size(last)), "batch": float(arch.batch)}
    for p in plan(arch):
        key = "n_" + group(p)
        f[key] = f.get(key, 0.0) + 1.0
    return f


def predict_cost(arch: Arch, fits: Fits) -> dict[str, dict[str, int]]:
    """Instructions (and, where the fits have them, estimated cycles) of one train_step and
    of one predict of arch's model on the fits' board."""
    units = [u for u in ("instructions", "cycles") if u in fits["units"]]
    out: dict[str, dict[str, int]] = {"train_step": {}, "inference": {}}
    over = overhead_features(arch)
    pack = fits["board"] in GEMM_PACK_BOARDS
    for unit in units:
        train = sum(pass_cost(fits, group(p), name, features(p, name, pack), unit) for p, name in step_passes(arch))
        infer = sum(pass_cost(fits, group(p), "inference", features(p, "inference", pack), unit)
                    for p in plan(arch, inference=True))
        for kind, total in (("train_step", train), ("inference", infer)):
            coef = fits["overhead"][kind][unit]
            total += sum(c * over.get(name, 0.0) for name, c in coef.items())
            out[kind][unit] = round(total)
    return out
