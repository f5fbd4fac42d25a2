"""Student design under a board's limits (issue 18, item 2): enumerate a family's candidates
for a teacher's input and classes, predict each one's flash, RAM and time with the cost
model, keep those within every limit, and rank them. docs/design.md.

    teacher = read_teacher("kws.mtm")
    result = search(teacher, "nrf52840", "dscnn", Limits(max_step_ms=50))
    result.ranked[0].arch.source()     # the chosen student
    write_student(result.ranked[0], "student.mtm", "student.py", teacher)

Ranking (ours, not the paper's, whose text we do not have): capacity first — the most
parameters, then the most MACs per sample — and ties broken by the lower predicted step time.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..boards import firmware_dir
from .arch import (
    FAMILIES,
    Arch,
    Layer,
    Shape,
    conv1d,
    conv2d,
    flatten,
    global_avgpool,
    linear,
    maxpool2d,
    relu,
    size,
)
from .costs import load_fits, predict_cost
from .flash import module_code_bytes, parameter_bytes
from .memory import GEMM_PACK_BOARDS, plan, predict_memory
from .profiles import BoardProfile, get_profile

# The grids. Kept near the ranges the cost model was calibrated on (docs/cost-model.md):
# wider layers extrapolate its fits.
RESIZE_FACTORS = (1, 2, 4)   # input downscaled by averaging f x f blocks (f along a sequence)
# A downscaled image or sequence keeps at least this many positions, and so does every conv's
# input (and at least its kernel): a conv mostly over its padding is a poor layer, and the cost
# fits were not calibrated there (such cnn students ran 10-16% off their predicted steps).
MIN_SIDE = 4
GRID: dict[str, dict[str, tuple[int, ...]]] = {
    "dscnn": {"width": (8, 12, 16, 24, 32, 48, 64), "blocks": (1, 2, 3, 4), "kernel": (3, 5)},
    "cnn": {"width": (4, 8, 12, 16, 24, 32), "blocks": (1, 2, 3), "kernel": (3, 5)},
    "mlp": {"width": (16, 32, 64, 128, 256), "hidden": (0, 1, 2, 3)},
    "conv1d": {"width": (8, 16, 24, 32, 48), "blocks": (1, 2, 3), "kernel": (3, 5, 7)},
}
LIMIT_NAMES = ("flash", "train_ram", "infer_ram", "step_ms", "infer_ms")


class DesignError(ValueError):
    """Bad arguments, or no candidate fits the limits."""


# -- the teacher ------------------------------------------------------------------------------

@dataclass(frozen=True)
class TeacherInfo:
    path: str
    input_shape: Shape   # one sample, device layout (channels-last)
    classes: int
    parameters: int


def read_teacher(path: str | os.PathLike[str], input_shape: Shape | None = None) -> TeacherInfo:
    """The input shape, classes and parameter count of a teacher: an .mtm (read by the host
    reader), or a whole PyTorch module / TorchScript (.pt/.pth, loaded as `load_teacher` does:
    the file's code runs, so only files you trust). input_shape is one sample in the file's
    own layout — device (H, W, C) for .mtm, PyTorch's (C, H, W) for .pt — and is needed
    when the file does not say (a PyTorch teacher that does not start with a Linear)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such teacher file")
    if p.suffix == ".mtm":
        from ..formats.mtm import read_model

        spec = read_model(p)
        if input_shape is not None:
            spec.input_shape = tuple(input_shape)
        if spec.input_shape is None:
            raise DesignError(f"{p}: the model file has no input shape: give --input-shape H,W,C")
        out = spec.output_shape()
        assert out is not None
        params = sum(int(np.asarray(t).size) for t in spec.tensors.values())
        return TeacherInfo(str(p), tuple(spec.input_shape), int(out[-1]), params)
    if p.suffix in (".pt", ".pth"):
        import torch

        from ..export.layout import torch_to_device_shape
        from ..teacher import _torch_module

        module = _torch_module(p)
        module.eval()
        shape = tuple(input_shape) if input_shape is not None else None
        if shape is None:
            first = next((m for m in module.modules() if any(True for _ in m.parameters(recurse=False))), None)
            if isinstance(first, torch.nn.Linear):
                shape = (first.in_features,)
            else:
                raise DesignError(f"{p}: a PyTorch teacher's input shape is not in the file: give "
                                  "--input-shape in PyTorch's layout, e.g. 1,28,28 (C,H,W)")
        with torch.no_grad():
            logits = module(torch.zeros(1, *shape))
        if logits.ndim != 2:
            raise DesignError(f"{p}: the teacher gives outputs of shape {tuple(logits.shape)} for one "
                              f"sample of {shape}; want (1, classes)")
        params = sum(int(t.numel()) for t in module.parameters())
        return TeacherInfo(str(p), torch_to_device_shape(shape), int(logits.shape[1]), params)
    raise DesignError(f"{p}: unknown teacher model (want .mtm, or a PyTorch module as .pt/.pth)")


# -- candidates -------------------------------------------------------------------------------

def downscaled(shape: Shape, factor: int) -> Shape:
    """A sample's shape after averaging factor x factor blocks (images, (H, W, C)) or runs of
    factor positions (sequences, (L, C)); the rows/positions left over are dropped."""
    if len(shape) == 3:
        return (shape[0] // factor, shape[1] // factor, shape[2])
    if len(shape) == 2:
        return (shape[0] // factor, shape[1])
    return shape


def downscale(x: np.ndarray, factor: int) -> np.ndarray:
    """Samples (N, *sample_shape), channels-last, resized as a student with `factor` expects:
    the mean of each factor x factor block (images) or run of factor positions (sequences),
    the leftover rows/columns dropped. factor 1 returns x as it is."""
    if factor == 1:
        return x
    out = x.dtype if x.dtype.kind == "f" else np.float32  # int8 samples average to floats
    if x.ndim == 4:
        n, h, w, c = x.shape
        h2, w2 = h // factor, w // factor
        blocks = x[:, :h2 * factor, :w2 * factor].reshape(n, h2, factor, w2, factor, c)
        return np.asarray(blocks.mean(axis=(2, 4), dtype=np.float64), dtype=out)
    if x.ndim == 3:
        n, length, c = x.shape
        runs = x[:, :length // factor * factor].reshape(n, length // factor, factor, c)
        return np.asarray(runs.mean(axis=2, dtype=np.float64), dtype=out)
    raise ValueError(f"downscale: samples of shape {x.shape[1:]} have no positions to average")


def _shape_after(layers: Sequence[Layer], shape: Shape) -> Shape:
    for layer in layers:
        shape = layer.out_shape(shape)
    return shape


def _dscnn(sample: Shape, classes: int, width: int, blocks: int, kernel: int) -> list[Layer] | None:
    # Hello Edge's DS-CNN: a strided conv, then depthwise-separable blocks at one width
    if min(sample[0], sample[1]) < kernel:
        return None
    layers: list[Layer] = [conv2d(sample[2], width, kernel, stride=2, padding=kernel // 2), relu()]
    for _ in range(blocks):
        layers += [conv2d(width, width, 3, padding=1, groups=width), relu(), conv2d(width, width, 1), relu()]
    return layers + [global_avgpool(), linear(width, classes)]


def _cnn(sample: Shape, classes: int, width: int, blocks: int, kernel: int) -> list[Layer] | None:
    # conv-ReLU-maxpool blocks doubling the width, then one Linear
    layers: list[Layer] = []
    shape: Shape = (1, *sample)
    ch = sample[2]
    for i in range(blocks):
        if min(shape[1], shape[2]) < max(kernel, MIN_SIDE):
            return None
        out = width << i
        layers += [conv2d(ch, out, kernel, padding=kernel // 2), relu(), maxpool2d(2)]
        shape, ch = _shape_after(layers[-3:], shape), out
    return layers + [flatten(), linear(size(shape), classes)]


def _mlp(sample: Shape, classes: int, width: int, hidden: int) -> list[Layer]:
    layers: list[Layer] = [flatten()] if len(sample) > 1 else []
    n = size(sample)
    for _ in range(hidden):
        layers += [linear(n, width), relu()]
        n = width
    return layers + [linear(n, classes)]


def _conv1d(sample: Shape, classes: int, width: int, blocks: int, kernel: int) -> list[Layer] | None:
    # strided conv-ReLU blocks (each halves the length), global average pool, one Linear
    layers: list[Layer] = []
    shape: Shape = (1, *sample)
    ch = sample[1]
    for _ in range(blocks):
        if shape[1] < max(kernel, MIN_SIDE):
            return None
        layers += [conv1d(ch, width, kernel, stride=2, padding=kernel // 2), relu()]
        shape, ch = _shape_after(layers[-2:], shape), width
    return layers + [global_avgpool(), linear(width, classes)]


def _check_family(family: str, sample: Shape) -> None:
    if family not in FAMILIES:
        raise DesignError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    rank = {"dscnn": 3, "cnn": 3, "conv1d": 2}.get(family)
    if rank is not None and len(sample) != rank:
        want = "images (H, W, C)" if rank == 3 else "sequences (length, channels)"
        raise DesignError(f"family {family} takes {want}; the teacher takes samples of shape {sample}")


def candidates(family: str, sample: Shape, classes: int, batch: int = 1) -> Iterator[tuple[Arch, int]]:
    """(arch, resize factor) for every point of `family`'s grid on samples of shape `sample`
    (the teacher's, channels-last) downscaled by each of RESIZE_FACTORS."""
    _check_family(family, sample)
    grid = GRID[family]
    seen: set[tuple[tuple[Layer, ...], Shape]] = set()
    for factor in RESIZE_FACTORS:
        if factor > 1 and len(sample) == 1:
            break  # a feature vector has no positions to average
        shape = downscaled(sample, factor)
        if factor > 1 and min(shape[:-1]) < MIN_SIDE:
            break
        for values in itertools.product(*grid.values()):
            kw = dict(zip(grid, values))
            layers: list[Layer] | None
            if family == "dscnn":
                layers = _dscnn(shape, classes, **kw)
            elif family == "cnn":
                layers = _cnn(shape, classes, **kw)
            elif family == "mlp":
                layers = _mlp(shape, classes, **kw)
            else:
                layers = _conv1d(shape, classes, **kw)
            if layers is None or (tuple(layers), shape) in seen:
                continue
            seen.add((tuple(layers), shape))
            arch = Arch(tuple(layers), shape, batch, family, _name(family, kw, shape))
            if all(d >= 1 for s in arch.shapes() for d in s):
                yield arch, factor


def _name(family: str, kw: dict[str, int], shape: Shape) -> str:
    parts = [f"{k[0]}{v}" for k, v in kw.items()]
    return f"{family}-{'-'.join(parts)}@{'x'.join(map(str, shape))}"


def macs(arch: Arch) -> int:
    """Multiply-accumulates of one sample's forward pass (convs and Linears)."""
    total = 0
    for p in plan(Arch(arch.layers, arch.sample, 1)):
        layer = p.layer
        if layer.kind in ("Conv2d", "Conv1d"):
            total += size(p.out_shape) * layer.kernel[0] * layer.kernel[1] * (layer.in_ch // layer.groups)
        elif layer.kind == "Linear":
            total += layer.in_ch * layer.out_ch
    return total


# -- predictions, limits, ranking -------------------------------------------------------------

@dataclass
class Limits:
    """Bounds a student must stay within; None: the profile's own (flash: what the firmware
    leaves of the part's flash; RAM: the assumed heap) or no bound (times)."""

    flash: int | None = None
    ram: int | None = None
    max_infer_ms: float | None = None
    max_step_ms: float | None = None


@dataclass
class Candidate:
    arch: Arch
    resize: int
    parameters: int
    macs: int
    flash: int          # parameters + the mcutrain module's code (design/flash.py)
    train_ram: int      # model.memory() total of a training step with plain mt.SGD
    infer_ram: int      # model.memory(inference=True) total
    step_instructions: int | None
    infer_instructions: int | None
    step_ms: float | None     # estimated M4 cycles at the profile's clock (or None)
    infer_ms: float | None
    usage: dict[str, float] = field(default_factory=dict)  # value / limit, per bound limit
    rank: int = 0

    @property
    def fits(self) -> bool:
        return all(u <= 1.0 for u in self.usage.values())

    @property
    def binding(self) -> str:
        """The limit it comes closest to (the one that would stop a larger student)."""
        return max(self.usage, key=lambda k: self.usage[k]) if self.usage else ""

    def value(self, limit: str) -> float | None:
        return {"flash": self.flash, "train_ram": self.train_ram, "infer_ram": self.infer_ram,
                "step_ms": self.step_ms, "infer_ms": self.infer_ms}[limit]

    def row(self) -> dict[str, Any]:
        return {"rank": self.rank, "name": self.arch.name, "family": self.arch.family,
                "input_shape": list(self.arch.sample), "resize": self.resize, "batch": self.arch.batch,
                "layers": len(self.arch.layers), "parameters": self.parameters, "macs": self.macs,
                "flash": self.flash, "train_ram": self.train_ram, "infer_ram": self.infer_ram,
                "step_instructions": self.step_instructions, "infer_instructions": self.infer_instructions,
                "step_ms": self.step_ms, "infer_ms": self.infer_ms, "binding": self.binding,
                "usage": {k: round(v, 4) for k, v in self.usage.items()}, "source": self.arch.source()}


@dataclass
class SearchResult:
    teacher: TeacherInfo
    profile: BoardProfile
    family: str
    limits: dict[str, float]      # the bounds applied, by LIMIT_NAMES key
    considered: list[Candidate]   # every candidate, in grid order
    ranked: list[Candidate]       # those within every limit, best first
    notes: list[str]

    def to_json(self, top: int = 0) -> dict[str, Any]:
        t = self.teacher
        return {"teacher": {"path": t.path, "input_shape": list(t.input_shape), "classes": t.classes,
                            "parameters": t.parameters},
                "board": self.profile.name, "clock_hz": self.profile.clock_hz, "family": self.family,
                "limits": self.limits, "considered": len(self.considered), "fit": len(self.ranked),
                "ranking": "most parameters, then most MACs, then lowest step time",
                "notes": self.notes,
                "candidates": [c.row() for c in (self.ranked[:top] if top else self.ranked)]}


def firmware_flash_rest(board: str) -> int:
    """Flash bytes of `board`'s firmware outside the mcutrain module (MicroPython, the port,
    the frozen package), from its linker map."""
    path = firmware_dir() / board / "firmware.map"
    return module_code_bytes(path, marker="/")["total"] - module_code_bytes(path)["total"]


def _build_of(profile: BoardProfile) -> str:
    # as estimate.py: RAM and flash of the build whose fits stand for the profile's core
    return profile.cost_fits or ("qemu-rv32" if "RV32" in profile.isa else "qemu-m4f")


def resolve_limits(profile: BoardProfile, limits: Limits) -> dict[str, float]:
    """The bounds to apply, by LIMIT_NAMES key (a missing key: unbounded)."""
    out: dict[str, float] = {}
    for name, v in (("flash", limits.flash), ("ram", limits.ram), ("max_infer_ms", limits.max_infer_ms),
                    ("max_step_ms", limits.max_step_ms)):
        if v is not None and not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
            raise DesignError(f"--{name.replace('_', '-')} must be a positive number, got {v!r}")
    if limits.flash is not None:
        out["flash"] = limits.flash
    elif profile.flash:
        out["flash"] = profile.flash - firmware_flash_rest(_build_of(profile))
    ram = limits.ram if limits.ram is not None else profile.heap
    out["train_ram"] = out["infer_ram"] = ram
    if limits.max_step_ms is not None:
        out["step_ms"] = limits.max_step_ms
    if limits.max_infer_ms is not None:
        out["infer_ms"] = limits.max_infer_ms
    return out


def predict(arch: Arch, resize: int, profile: BoardProfile, fits: dict[str, Any] | None, code_bytes: int) -> Candidate:
    """The cost model's numbers for one candidate on the profile."""
    pack = _build_of(profile) in GEMM_PACK_BOARDS
    train = predict_memory(arch, False, "sgd", gemm_pack=pack)
    infer = predict_memory(arch, True, gemm_pack=pack)
    step_i = infer_i = None
    step_ms = infer_ms = None
    if fits is not None:
        cost = predict_cost(arch, fits)
        step_i, infer_i = cost["train_step"]["instructions"], cost["inference"]["instructions"]
        if profile.clock_hz and "cycles" in cost["train_step"]:
            step_ms = 1000.0 * cost["train_step"]["cycles"] / profile.clock_hz
            infer_ms = 1000.0 * cost["inference"]["cycles"] / profile.clock_hz
    params = sum(size(s) for layer in arch.layers for _, s, _ in layer.param_shapes())
    return Candidate(arch, resize, params, macs(arch), parameter_bytes(arch) + code_bytes, train["total"],
                     infer["total"], step_i, infer_i, step_ms, infer_ms)


def rank_key(c: Candidate) -> tuple[float, ...]:
    """Ours: capacity under the limits first — more parameters, then more MACs per sample
    (equal parameters at a higher resolution see more of the input) — and the lower step time
    (then inference time) breaks ties."""
    inf = float("inf")
    return (-c.parameters, -c.macs, c.step_ms if c.step_ms is not None else inf,
            c.infer_ms if c.infer_ms is not None else inf, c.train_ram)


LIMIT_LABELS = {"flash": "flash", "train_ram": "train-step RAM", "infer_ram": "inference RAM",
                "step_ms": "train-step time", "infer_ms": "inference time"}


def _fmt(limit: str, v: float) -> str:
    return f"{v:.3g} ms" if limit.endswith("_ms") else f"{int(v):,} B"


def search(teacher: TeacherInfo, board: str, family: str, limits: Limits | None = None,
           batch: int = 1) -> SearchResult:
    """Every candidate of `family` for the teacher's input and classes, predicted on `board`,
    and those within every limit ranked by rank_key. DesignError when none fits, naming the
    tightest limit (the one the smallest candidate overshoots most)."""
    profile = get_profile(board)
    if not isinstance(batch, int) or not 1 <= batch <= 64:
        raise DesignError(f"--batch must be 1..64, got {batch!r}")
    bounds = resolve_limits(profile, limits or Limits())
    notes: list[str] = []
    fits = load_fits(profile.cost_fits) if profile.cost_fits else None
    if fits is None or not profile.clock_hz:
        timed = [k for k in ("step_ms", "infer_ms") if k in bounds]
        if timed:
            raise DesignError(f"{profile.name} has no calibrated cost fits or clock: a time limit "
                              f"({', '.join('--max-' + k.replace('_ms', '-ms') for k in timed)}) "
                              "cannot be checked there")
        notes.append(f"{profile.name}: no time predictions (no fits or clock); ranked without step time")
    else:
        notes.append(f"times: the cycle model's Cortex-M4 cycles at {profile.clock_hz / 1e6:g} MHz, "
                     "zero flash wait states")
    if profile.fit_quality in ("approximation", "extrapolation"):
        notes.append(f"{profile.name}: the {profile.cost_fits} fits are an {profile.fit_quality} "
                     f"for {profile.core}")
    if batch > 4:
        notes.append(f"batch {batch}: the cost fits were calibrated on batches 1-4 (extrapolated)")
    build = _build_of(profile)
    code = module_code_bytes(firmware_dir() / build / "firmware.map")["total"]
    considered = [predict(a, f, profile, fits, code)
                  for a, f in candidates(family, teacher.input_shape, teacher.classes, batch)]
    for c in considered:
        c.usage = {k: (c.value(k) or 0.0) / v for k, v in bounds.items()}
    ranked = sorted((c for c in considered if c.fits), key=rank_key)
    for i, c in enumerate(ranked, 1):
        c.rank = i
    result = SearchResult(teacher, profile, family, bounds, considered, ranked, notes)
    if not ranked:
        raise DesignError(no_fit_message(result))
    return result


def no_fit_message(result: SearchResult) -> str:
    """Why nothing fits: the limits even the smallest candidate exceeds (each with the least
    any candidate needs), the tightest first; or, when each alone can be met, all of them."""
    least = {k: min(c.value(k) or 0.0 for c in result.considered) for k in result.limits}
    order = sorted(least, key=lambda k: least[k] / result.limits[k], reverse=True)
    over = [k for k in order if least[k] > result.limits[k]]
    parts = [f"{LIMIT_LABELS[k]} <= {_fmt(k, result.limits[k])} (smallest candidate: {_fmt(k, least[k])})"
             for k in over or order]
    head = (f"no {result.family} student of the {len(result.considered)} candidates fits "
            f"{result.profile.name} under ")
    if over:
        return (head + ", ".join(parts) + f"; the tightest limit is {LIMIT_LABELS[over[0]]}: even the "
                f"smallest {result.family} student needs {_fmt(over[0], least[over[0]])}")
    return head + ", ".join(parts) + "; each can be met alone, but no candidate meets all of them at once"


# -- output -----------------------------------------------------------------------------------

def table(result: SearchResult, top: int = 10) -> str:
    """The ranked candidates as a text table (top: how many rows; 0 for all)."""
    t = result.teacher
    lines = [f"teacher {t.path}: input {'x'.join(map(str, t.input_shape))}, {t.classes} classes, "
             f"{t.parameters:,} parameters",
             f"board {result.profile.name}; limits: " + ", ".join(
                 f"{LIMIT_LABELS[k]} {_fmt(k, v)}" for k, v in result.limits.items()),
             f"{len(result.ranked)} of {len(result.considered)} {result.family} candidates fit; "
             "ranked by parameters, then MACs, then step time"]
    lines += [f"note: {n}" for n in result.notes]
    head = ("rank", "student", "params", "MACs", "flash", "train RAM", "infer RAM", "step ms", "infer ms", "binds")
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    rows = [head]
    for c in result.ranked[:top] if top else result.ranked:
        rows.append((str(c.rank), c.arch.name, f"{c.parameters:,}", f"{c.macs:,}", f"{c.flash:,}",
                     f"{c.train_ram:,}", f"{c.infer_ram:,}", ms(c.step_ms), ms(c.infer_ms),
                     f"{LIMIT_LABELS[c.binding]} {100 * c.usage[c.binding]:.0f}%"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        cells = (v.ljust(w) if i in (1, 9) else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _graph_node(layer: Layer) -> dict[str, Any]:
    k = layer.kind
    if k == "Conv2d":
        cfg: dict[str, Any] = {"in_channels": layer.in_ch, "out_channels": layer.out_ch, "kernel_size": layer.kernel,
                               "stride": layer.stride, "padding": layer.padding, "groups": layer.groups,
                               "bias": layer.bias}
    elif k == "Conv1d":
        cfg = {"in_channels": layer.in_ch, "out_channels": layer.out_ch, "kernel_size": layer.kernel[1],
               "stride": layer.stride[1], "padding": layer.padding[1], "groups": layer.groups, "bias": layer.bias}
    elif k == "Linear":
        cfg = {"in_features": layer.in_ch, "out_features": layer.out_ch, "bias": layer.bias}
    elif k in ("MaxPool2d", "AvgPool2d"):
        cfg = {"kernel_size": layer.kernel, "stride": layer.stride, "padding": layer.padding}
    elif k == "BatchNorm2d":
        cfg = {"num_features": layer.in_ch}
    elif k in ("ReLU", "ReLU6", "GlobalAvgPool", "Flatten", "Softmax"):
        cfg = {}
    else:
        raise ValueError(f"a student cannot hold a {k} layer")
    return {"type": k, "config": cfg}


def arch_to_spec(arch: Arch, seed: int = 0, meta: dict[str, Any] | None = None) -> Any:
    """A ModelSpec of arch's model with fresh weights for training: He (Kaiming) uniform,
    U(-sqrt(6/fan_in), sqrt(6/fan_in)), biases 0; BatchNorm 1, 0, 0, 1. Not the device's own
    default (PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases): that
    scale shrinks the signal by about sqrt(3) a layer, and a dscnn student without BatchNorm
    (7 to 11 convolutions) then starts with outputs that hardly depend on the input and does
    not learn (plain SGD stayed at chance on synthetic KWS, with PyTorch as on the board)."""
    from ..formats.spec import ModelSpec, leaves, parameter_shapes

    rng = np.random.default_rng(seed)
    graph = {"type": "Sequential", "layers": [_graph_node(layer) for layer in arch.layers]}
    spec = ModelSpec(graph, {}, arch.sample, dict(meta or {}))
    for prefix, node in leaves(spec.graph):
        shapes = parameter_shapes(node)  # device layouts (a Conv1d's weight is O, K, I)
        if node["type"] == "BatchNorm2d":
            for name, shape in shapes.items():
                fill = 1.0 if name in ("weight", "running_var") else 0.0
                spec.tensors[prefix + name] = np.full(shape, fill, np.float32)
        elif shapes:
            bound = math.sqrt(6.0 / size(shapes["weight"][1:]))
            for name, shape in shapes.items():
                spec.tensors[prefix + name] = (rng.uniform(-bound, bound, shape) if name == "weight"
                                               else np.zeros(shape)).astype(np.float32)
    spec.validate()
    return spec


def student_source(c: Candidate, teacher: TeacherInfo | None = None) -> str:
    """A device script that builds the student: `build()` returns a fresh model,
    INPUT_SHAPE is one sample's shape, BATCH the batch it was costed at."""
    a = c.arch
    layers = ",\n        ".join(layer.source() for layer in a.layers)
    resize = ("the teacher's samples as they are" if c.resize == 1 else
              f"the teacher's samples averaged over {c.resize}x{c.resize} blocks on the host "
              f"(mcutrain.design.downscale(x, {c.resize}))" if len(a.sample) == 3 else
              f"the teacher's samples averaged over runs of {c.resize} positions on the host "
              f"(mcutrain.design.downscale(x, {c.resize}))")
    head = f"# {a.family} student {a.name}, written by `mcutrain design`"
    if teacher is not None:
        head += f" for teacher {Path(teacher.path).name}"
    return (f"{head}.\n# Input: {resize}.\n"
            f"# Predicted: {c.parameters} parameters, train-step RAM {c.train_ram} B, "
            f"inference RAM {c.infer_ram} B.\n"
            "import mcutrain as mt\n\n"
            f"INPUT_SHAPE = {tuple(a.sample)!r}\n"
            f"BATCH = {a.batch}\n\n\n"
            "def build():\n"
            f"    return mt.Sequential(\n        {layers})\n\n\n"
            "if __name__ == \"__main__\":\n"
            "    model = build()\n"
            "    print(model, model.memory((BATCH,) + INPUT_SHAPE))\n")


def write_student(c: Candidate, mtm_path: str | os.PathLike[str] | None,
                  py_path: str | os.PathLike[str] | None = None, teacher: TeacherInfo | None = None,
                  seed: int = 0, board: str = "") -> None:
    """Write the student as an .mtm ready to train (fresh weights) and/or as device Python."""
    from ..formats.mtm import write_model

    if mtm_path is not None:
        meta: dict[str, Any] = {"design": {k: v for k, v in c.row().items() if k not in ("source", "usage")}}
        meta["design"]["board"] = board
        if teacher is not None:
            meta["design"]["teacher"] = Path(teacher.path).name
            meta["design"]["teacher_input_shape"] = list(teacher.input_shape)
        write_model(mtm_path, arch_to_spec(c.arch, seed, meta))
    if py_path is not None:
        Path(py_path).write_text(student_source(c, teacher))


def design_student(teacher: str | os.PathLike[str] | TeacherInfo, board: str, family: str,
                   flash: int | None = None, ram: int | None = None, max_infer_ms: float | None = None,
                   max_step_ms: float | None = None, batch: int = 1,
                   input_shape: Shape | None = None) -> SearchResult:
    """`mcutrain design` as a function: the candidates within the limits, ranked
    (result.ranked[0] is the chosen student; write it with write_student)."""
    info = teacher if isinstance(teacher, TeacherInfo) else read_teacher(teacher, input_shape)
    return search(info, board, family, Limits(flash, ram, max_infer_ms, max_step_ms), batch)
