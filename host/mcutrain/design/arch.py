"""Candidate networks as data: a Sequential of layer specs, its shapes, its device source, and
random members of the student families (dscnn, cnn, mlp, conv1d) the cost model is checked on.

    arch = Arch((conv2d(1, 8, 3, padding=1), relu(), maxpool2d(2), flatten(), linear(128, 10)),
                sample=(8, 8, 1), batch=2)
    arch.source()        # "mt.Sequential(mt.Conv2d(1, 8, (3, 3), ...), ...)" for a device script
    arch.shapes()        # each layer's output shape, batch first
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FAMILIES = ("dscnn", "cnn", "mlp", "conv1d")
DTYPE_BYTES = {"float32": 4, "float16": 2, "int8": 1}

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Layer:
    """One layer of a Sequential, as its constructor takes it (pairs are (h, w); a Conv1d's
    are (1, w))."""

    kind: str
    in_ch: int = 0
    out_ch: int = 0
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    bias: bool = True
    dtype: str = "float32"  # Convert: the dtype it converts to

    @property
    def has_params(self) -> bool:
        return self.kind in ("Conv2d", "Conv1d", "Linear", "BatchNorm2d")

    def source(self) -> str:
        k = self.kind
        dt = "" if self.dtype == "float32" else f", dtype={self.dtype!r}"
        if k in ("Conv2d", "Conv1d"):
            one = k == "Conv1d"
            pair = (lambda p: str(p[1])) if one else (lambda p: f"({p[0]}, {p[1]})")
            return (f"mt.{k}({self.in_ch}, {self.out_ch}, {pair(self.kernel)}, stride={pair(self.stride)}, "
                    f"padding={pair(self.padding)}, groups={self.groups}, bias={self.bias}{dt})")
        if k == "Linear":
            return f"mt.Linear({self.in_ch}, {self.out_ch}, bias={self.bias}{dt})"
        if k in ("MaxPool2d", "AvgPool2d"):
            return (f"mt.{k}(({self.kernel[0]}, {self.kernel[1]}), stride=({self.stride[0]}, {self.stride[1]}), "
                    f"padding=({self.padding[0]}, {self.padding[1]}))")
        if k == "BatchNorm2d":
            return f"mt.BatchNorm2d({self.in_ch}{dt})"
        if k == "Convert":
            return f"mt.Convert({self.dtype!r})"
        return f"mt.{k}()"

    def out_shape(self, shape: Shape) -> Shape:
        """The output shape (batch first) for input `shape`, as the layer's plan() sets it."""
        k = self.kind
        if k in ("Conv2d", "Conv1d"):
            if k == "Conv1d":
                n, w, _ = shape
                h = 1
            else:
                n, h, w, _ = shape
            oh = (h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1
            ow = (w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1
            return (n, ow, self.out_ch) if k == "Conv1d" else (n, oh, ow, self.out_ch)
        if k == "Linear":
            return (shape[0], self.out_ch)
        if k in ("MaxPool2d", "AvgPool2d"):
            n, h, w, c = shape
            oh = (h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1
            ow = (w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1
            return (n, oh, ow, c)
        if k == "GlobalAvgPool":
            return (shape[0], shape[-1])
        if k == "Flatten":
            return (shape[0], size(shape) // shape[0])
        return shape

    def param_shapes(self) -> list[tuple[str, Shape, str]]:
        """(name, shape, dtype) of each parameter memory() counts as weights."""
        k = self.kind
        out: list[tuple[str, Shape, str]] = []
        if k in ("Conv2d", "Conv1d"):
            out.append(("weight", (self.out_ch, *self.kernel, self.in_ch // self.groups), self.dtype))
        elif k == "Linear":
            out.append(("weight", (self.out_ch, self.in_ch), self.dtype))
        elif k == "BatchNorm2d":
            # gamma, beta and the running statistics are float32 in every dtype
            return [(name, (self.in_ch,), "float32") for name in ("weight", "bias", "running_mean", "running_var")]
        else:
            return out
        if self.bias:
            out.append(("bias", (self.out_ch,), self.dtype))
        return out


def size(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class Arch:
    """A Sequential model of `layers` trained on batches of `batch` samples of `sample` shape."""

    layers: tuple[Layer, ...]
    sample: Shape
    batch: int = 1
    family: str = ""
    name: str = field(default="", compare=False)

    @property
    def input_shape(self) -> Shape:
        return (self.batch, *self.sample)

    def shapes(self) -> list[Shape]:
        """The output shape of each layer, batch first."""
        shape, out = self.input_shape, []
        for layer in self.layers:
            shape = layer.out_shape(shape)
            out.append(shape)
        return out

    def dtypes(self) -> list[str]:
        """Each layer's output dtype (the input is float32 unless the first layer says otherwise)."""
        dtype, out = "float32", []
        for layer in self.layers:
            if layer.kind == "Convert" or layer.has_params:
                dtype = layer.dtype
            out.append(dtype)
        return out

    @property
    def classes(self) -> int:
        return self.shapes()[-1][-1]

    def source(self) -> str:
        return "mt.Sequential(%s)" % ", ".join(layer.source() for layer in self.layers)


# Constructors with the defaults of the device API.
def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else v


def conv2d(in_ch: int, out_ch: int, kernel: int | tuple[int, int], stride: int | tuple[int, int] = 1,
           padding: int | tuple[int, int] = 0, groups: int = 1, bias: bool = True, dtype: str = "float32") -> Layer:
    return Layer("Conv2d", in_ch, out_ch, _pair(kernel), _pair(stride), _pair(padding), groups, bias, dtype)


def conv1d(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1,
           bias: bool = True, dtype: str = "float32") -> Layer:
    return Layer("Conv1d", in_ch, out_ch, (1, kernel), (1, stride), (0, padding), groups, bias, dtype)


def linear(in_f: int, out_f: int, bias: bool = True, dtype: str = "float32") -> Layer:
    return Layer("Linear", in_f, out_f, bias=bias, dtype=dtype)


def maxpool2d(kernel: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
              padding: int | tuple[int, int] = 0) -> Layer:
    k = _pair(kernel)
    return Layer("MaxPool2d", kernel=k, stride=k if stride is None else _pair(stride), padding=_pair(padding))


def avgpool2d(kernel: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
              padding: int | tuple[int, int] = 0) -> Layer:
    k = _pair(kernel)
    return Layer("AvgPool2d", kernel=k, stride=k if stride is None else _pair(stride), padding=_pair(padding))


def batchnorm2d(channels: int) -> Layer:
    return Layer("BatchNorm2d", channels, channels)


def relu() -> Layer:
    return Layer("ReLU")


def relu6() -> Layer:
    return Layer("ReLU6")


def flatten() -> Layer:
    return Layer("Flatten")


def global_avgpool() -> Layer:
    return Layer("GlobalAvgPool")


def softmax() -> Layer:
    return Layer("Softmax")


# ---- random members of the families ---------------------------------------------------------
# Small enough that a training step takes well under a second on qemu-m4f.

def _act(rng: random.Random) -> Layer:
    return relu6() if rng.random() < 0.25 else relu()


def random_mlp(rng: random.Random) -> Arch:
    features = rng.choice((16, 24, 32, 49, 64, 100))
    layers: list[Layer] = []
    width = features
    for _ in range(rng.randint(1, 3)):
        nxt = rng.choice((8, 12, 16, 24, 32, 48, 64))
        layers += [linear(width, nxt), _act(rng)]
        width = nxt
    layers.append(linear(width, rng.randint(2, 12)))
    if rng.random() < 0.2:
        layers.append(softmax())
    return Arch(tuple(layers), (features,), rng.randint(1, 4), "mlp")


def random_cnn(rng: random.Random) -> Arch:
    h, w, c = rng.choice((8, 10, 12, 16)), rng.choice((8, 10, 12, 16)), rng.choice((1, 2, 3))
    layers: list[Layer] = []
    shape: Shape = (1, h, w, c)
    for _ in range(rng.randint(1, 3)):
        out = rng.choice((4, 6, 8, 12, 16))
        k = rng.choice((3, 3, 5)) if min(shape[1], shape[2]) >= 5 else 3
        stride = 2 if rng.random() < 0.25 and min(shape[1], shape[2]) >= 6 else 1
        layers.append(conv2d(shape[3], out, k, stride=stride, padding=k // 2))
        if rng.random() < 0.25:
            layers.append(batchnorm2d(out))
        layers.append(_act(rng))
        shape = layers[-1].out_shape(_shape_of(layers[:-1], (1, h, w, c)))
        if min(shape[1], shape[2]) >= 4 and rng.random() < 0.6:
            layers.append(maxpool2d(2) if rng.random() < 0.7 else avgpool2d(2))
            shape = layers[-1].out_shape(shape)
    layers += [flatten(), linear(size(shape), rng.randint(2, 10))]
    return Arch(tuple(layers), (h, w, c), rng.randint(1, 3), "cnn")


def random_dscnn(rng: random.Random) -> Arch:
    h, w = rng.choice((12, 16, 20, 25)), rng.choice((8, 10, 12))
    width = rng.choice((8, 12, 16, 24))
    layers: list[Layer] = [conv2d(1, width, rng.choice(((3, 3), (5, 3), (4, 4))), stride=2, padding=1), _act(rng)]
    for _ in range(rng.randint(1, 3)):
        out = rng.choice((width, width, 2 * width)) if width < 24 else width
        layers += [conv2d(width, width, 3, padding=1, groups=width), _act(rng), conv2d(width, out, 1), _act(rng)]
        width = out
    shape = _shape_of(layers, (1, h, w, 1))
    if rng.random() < 0.5:
        layers.append(global_avgpool())
        features = width
    else:
        layers += [avgpool2d((shape[1], shape[2])), flatten()]
        features = width
    layers.append(linear(features, rng.randint(2, 12)))
    return Arch(tuple(layers), (h, w, 1), rng.randint(1, 3), "dscnn")


def random_conv1d(rng: random.Random) -> Arch:
    length, c = rng.choice((16, 24, 32, 48, 64)), rng.choice((1, 2, 3, 6))
    layers: list[Layer] = []
    shape: Shape = (1, length, c)
    for _ in range(rng.randint(1, 3)):
        out = rng.choice((4, 8, 12, 16, 24))
        k = rng.choice((3, 5, 7)) if shape[1] >= 7 else 3
        stride = 2 if rng.random() < 0.4 and shape[1] >= 8 else 1
        layers.append(conv1d(shape[2], out, k, stride=stride, padding=k // 2))
        layers.append(_act(rng))
        shape = layers[-2].out_shape(shape)
    if rng.random() < 0.6:
        layers += [global_avgpool(), linear(shape[2], rng.randint(2, 10))]
    else:
        layers += [flatten(), linear(size(shape), rng.randint(2, 10))]
    return Arch(tuple(layers), (length, c), rng.randint(1, 3), "conv1d")


def _shape_of(layers: list[Layer], shape: Shape) -> Shape:
    for layer in layers:
        shape = layer.out_shape(shape)
    return shape


GENERATORS = {"dscnn": random_dscnn, "cnn": random_cnn, "mlp": random_mlp, "conv1d": random_conv1d}


def random_archs(family: str, n: int, seed: int) -> list[Arch]:
    """n random members of `family`, the same for the same seed."""
    rng = random.Random(f"{family}-{seed}")
    out = []
    for i in range(n):
        a = GENERATORS[family](rng)
        out.append(Arch(a.layers, a.sample, a.batch, family, f"{family}-{seed}-{i}"))
    return out
