"""RAM of a training step and of inference for a candidate Sequential, by the planner's own
rules (usermod/README.md "Planning and memory"; layer.c add_memory/layer_memory,
model_sequential.c seq_plan/seq_place_pooled, the kernels' scratch helpers), so that
`predict_memory(arch, ...)` equals the firmware's `model.memory(input_shape, inference=...)`
dict exactly. float32 layers (and parameterless layers in any dtype); int8/float16 weight
layers raise NotImplementedError.

The scratch of a pointwise float32 conv depends on the build: on Thumb-2 with an FPU
(qemu-m4f, `gemm_pack=True`) the GEMMs take a packing workspace, elsewhere (unix, qemu-rv32)
none (kernels/gemm_f32.c mt_gemm_f32_pack_floats).
"""

from __future__ import annotations

from dataclasses import dataclass

from .arch import DTYPE_BYTES, Arch, Layer, Shape, size

KINDS = ("Conv2d", "Conv1d", "Linear", "ReLU", "ReLU6", "MaxPool2d", "AvgPool2d", "GlobalAvgPool", "Flatten",
         "BatchNorm2d", "Softmax", "Convert")
IN_PLACE = ("ReLU", "ReLU6")                 # MT_LAYER_MAY_RUN_IN_PLACE
NEEDS_OUTPUT = ("ReLU", "ReLU6", "Softmax")  # MT_LAYER_NEEDS_OUTPUT
LOSS_CHUNK = 256                             # loss.c

# Boards whose float32 GEMMs pack operands in scratch (MT_GEMM_ASM in kernels/gemm_f32.c).
GEMM_PACK_BOARDS = ("qemu-m4f",)


@dataclass(frozen=True)
class PlannedLayer:
    layer: Layer
    in_shape: Shape
    out_shape: Shape
    out_dtype: str
    in_place: bool     # runs in place on its input (a ReLU): no output of its own
    view: bool         # Flatten
    pooled: bool       # inference: its output takes turns in the Sequential's two buffers
    scratch_floats: int
    state_bytes: int   # per-shape state besides the output (BatchNorm's batch statistics)

    @property
    def out_bytes(self) -> int:
        return size(self.out_shape) * DTYPE_BYTES[self.out_dtype]


def is_depthwise(layer: Layer) -> bool:
    # kernels/conv2d_f32.c: a Conv2d(1, 1, ...) counts as depthwise too
    return layer.groups == layer.in_ch and layer.out_ch == layer.in_ch


def is_pointwise(layer: Layer) -> bool:
    return (layer.kernel == (1, 1) and layer.stride == (1, 1) and layer.padding == (0, 0)
            and layer.groups == 1)


def conv_kind(layer: Layer) -> str:
    """Which float32 conv path runs: "depthwise", "pointwise" or "general" (im2col + GEMM)."""
    return "depthwise" if is_depthwise(layer) else "pointwise" if is_pointwise(layer) else "general"


def conv_geometry(layer: Layer, in_shape: Shape, out_shape: Shape) -> tuple[int, int, int, int, int, int]:
    """(batch, in_h, in_w, out_h, out_w, patch_len) as the conv kernels see them."""
    if layer.kind == "Conv1d":
        batch, in_w, _ = in_shape
        in_h, out_h, out_w = 1, 1, out_shape[1]
    else:
        batch, in_h, in_w, _ = in_shape
        out_h, out_w = out_shape[1], out_shape[2]
    return batch, in_h, in_w, out_h, out_w, layer.kernel[0] * layer.kernel[1] * (layer.in_ch // layer.groups)


def gemm_pack_floats(m: int, n: int, k: int) -> int:
    """kernels/gemm_f32.c mt_gemm_f32_pack_floats (MT_GEMM_ASM builds)."""
    budget, least = 2048, 16
    if m < least or n < least or k < least:
        return 0
    width = (n & ~3) + 4
    if budget // width < least:
        return 0
    return width * k if k <= budget // width else budget


def conv_f32_scratch_floats(layer: Layer, in_shape: Shape, out_shape: Shape, gemm_pack: bool) -> int:
    """kernels/conv2d_f32.c mt_conv2d_f32_scratch_floats: the im2col tile plus, for pointwise
    convs on packing builds, the GEMMs' workspace."""
    batch, in_h, in_w, out_h, out_w, patch = conv_geometry(layer, in_shape, out_shape)
    pixels = batch * out_h * out_w
    tile = 0
    if not (is_depthwise(layer) or is_pointwise(layer)):
        rows = max(4, min(64, 4096 // patch)) & ~3
        tile = min(pixels, rows) * patch
    pack = 0
    if gemm_pack and is_pointwise(layer) and batch > 0:
        rows = min(pixels, 65536) if (out_w == in_w and out_h == in_h) else out_w
        i, o = layer.in_ch, layer.out_ch
        pack = max(gemm_pack_floats(rows, o, i), gemm_pack_floats(rows, i, o), gemm_pack_floats(o, i, rows))
    return tile + pack


def _scratch_floats(layer: Layer, in_shape: Shape, out_shape: Shape, in_dtype: str, gemm_pack: bool) -> int:
    if layer.kind in ("Conv2d", "Conv1d"):
        return conv_f32_scratch_floats(layer, in_shape, out_shape, gemm_pack)
    if layer.kind == "Softmax" and in_dtype == "int8":
        return out_shape[-1]
    return 0  # Linear (full update), pools, BatchNorm (float32), activations, Flatten, Convert


def plan(arch: Arch, inference: bool = False, gemm_pack: bool = False) -> list[PlannedLayer]:
    """Each layer as a Sequential plans it for arch's input (seq_plan, mt_layer_plan)."""
    for layer in arch.layers:
        if layer.kind not in KINDS:
            raise ValueError(f"the memory model does not know {layer.kind}")
        if layer.has_params and layer.kind != "BatchNorm2d" and layer.dtype != "float32":
            raise NotImplementedError(f"{layer.kind}(dtype={layer.dtype}): only float32 weight layers are modelled")
    out: list[PlannedLayer] = []
    shape, dtype = arch.input_shape, "float32"
    for i, layer in enumerate(arch.layers):
        prev = out[i - 1] if i else None
        if prev is None:
            may_share = False  # the model's input is not ours to overwrite
        elif inference:
            may_share = prev.pooled or (prev.in_place and not prev.view)
        else:  # unless backward reads the layer before's output (mt_layer_output_needed)
            may_share = not (prev.layer.kind in NEEDS_OUTPUT or prev.view or prev.in_place)
        view = layer.kind == "Flatten"
        in_place = not view and layer.kind in IN_PLACE and may_share
        out_shape = layer.out_shape(shape)
        out_dtype = layer.dtype if layer.kind == "Convert" else dtype
        state = 2 * layer.in_ch * 4 if layer.kind == "BatchNorm2d" else 0
        out.append(PlannedLayer(layer, shape, out_shape, out_dtype, in_place, view,
                                inference and not view and not in_place,
                                _scratch_floats(layer, shape, out_shape, dtype, gemm_pack), state))
        shape, dtype = out_shape, out_dtype
    return out


def predict_memory(arch: Arch, inference: bool = False, optimizer: str = "sgd", momentum: bool = False,
                   gemm_pack: bool = False) -> dict[str, int]:
    """`model.memory(arch.input_shape, inference=inference)` of arch's model, trained by
    mt.SGD (momentum > 0 when `momentum`) or mt.Adam (`optimizer="adam"`), both float32 state,
    "none" for no optimizer built."""
    layers = plan(arch, inference, gemm_pack)
    weights = sum(size(shape) * DTYPE_BYTES[dt] for layer in arch.layers for _, shape, dt in layer.param_shapes())
    activations = sum(p.state_bytes for p in layers)
    if inference:
        pooled = [p.out_bytes for p in layers if p.pooled]
        activations += max(pooled, default=0) * min(len(pooled), 2)
        activations += sum(p.out_bytes for p in layers if not (p.pooled or p.in_place or p.view))
        gradients = optimizer_bytes = 0
    else:
        activations += sum(p.out_bytes for p in layers if not (p.in_place or p.view))
        n = len(layers)
        # two gradient buffers of the largest error between layers (one for two layers)
        grad = max((p.out_bytes for p in layers[:-1]), default=0)
        gradients = grad * (2 if n > 2 else n - 1) + layers[-1].out_bytes  # + the loss's output gradient
        per_param = {"sgd": 1 if momentum else 0, "adam": 3, "none": 0}[optimizer]
        trainable = sum(size(shape) for layer in arch.layers if layer.kind != "BatchNorm2d"
                        for _, shape, _ in layer.param_shapes())
        trainable += sum(2 * layer.in_ch for layer in arch.layers if layer.kind == "BatchNorm2d")
        optimizer_bytes = per_param * 4 * trainable
    scratch_floats = max((p.scratch_floats for p in layers), default=0)
    last = layers[-1]
    scratch = scratch_floats * 4 + last.out_shape[0] * 4  # + the labels
    if last.out_dtype != "float32":  # a float16/int8 output's loss widens chunks into scratch
        n_out = size(last.out_shape)
        row = n_out // last.out_shape[0]
        chunk = min(n_out, LOSS_CHUNK)
        loss_floats = row if len(last.out_shape) == 2 and row > chunk else chunk
        scratch += loss_floats * 4 if loss_floats > scratch_floats else 0
    total = weights + gradients + optimizer_bytes + activations + scratch
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer_bytes,
            "activations": activations, "scratch": scratch, "total": total}
