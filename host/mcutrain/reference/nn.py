"""Layer, model and optimizer classes mirroring the device API (docs/device-api.md) in numpy.

Same names, constructor arguments, layouts and parameter names as on the board, so a model
built here and one built on the device from the same state_dict compute the same thing (up to
float32 rounding on the device). Parameters are float64 numpy arrays.

Differences from the device, all deliberate:
- inputs are always batched: x is (N, ...) and labels (N,) (a lone int label becomes (1,));
- `forward(x, training=True)` takes the mode explicitly (it matters for BatchNorm2d only);
- gradients live in `layer.grads` ("weight", "bias"; also `weight_grad`/`bias_grad`), not in a
  `.grad` attribute of the arrays. `backward` overwrites them; it never accumulates.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import functional as F

__all__ = [
    "SGD",
    "Adam",
    "Add",
    "AvgPool2d",
    "BatchNorm2d",
    "Conv1d",
    "Conv2d",
    "Flatten",
    "GlobalAvgPool",
    "Linear",
    "LossFn",
    "MaxPool2d",
    "Module",
    "Optimizer",
    "ReLU",
    "ReLU6",
    "Residual",
    "Sequential",
    "Softmax",
    "fold_batchnorm",
    "seed",
]

Array = NDArray[np.float64]
RngLike = np.random.Generator | int | None
# A loss maps (outputs, targets) to (mean loss, d loss / d outputs), as F.cross_entropy and F.mse.
LossFn = Callable[[Array, Any], tuple[float, Array]]

_default_rng = np.random.default_rng(0)


def seed(n: int) -> None:
    """Seeds the generator that layers created without an explicit `rng` draw from (mt.seed)."""
    global _default_rng
    _default_rng = np.random.default_rng(n)


def _generator(rng: RngLike) -> np.random.Generator:
    if rng is None:
        return _default_rng
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _kaiming_uniform(
    rng: np.random.Generator, shape: tuple[int, ...], fan_in: int
) -> Array:
    # PyTorch's default: kaiming_uniform_(a=sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    # and its bias init uses the same bound.
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape)


class Module:
    """Base of every layer and container: forward/backward plus parameter bookkeeping."""

    _param_names: tuple[str, ...] = ()
    _buffer_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._trainable = True
        self.grads: dict[str, Array] = {}

    # -- computation
    def forward(self, x: ArrayLike, training: bool = True) -> Array:
        """Output for a batch x; caches what backward needs."""
        raise NotImplementedError

    def backward(self, dy: ArrayLike) -> Array:
        """Input gradient for output gradient dy of the last forward; sets weight grads."""
        raise NotImplementedError

    def __call__(self, x: ArrayLike, training: bool = True) -> Array:
        return self.forward(x, training)

    # -- parameters
    @property
    def trainable(self) -> bool:
        """Whether backward computes weight gradients and optimizers update this layer."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)
        if not value:
            self.grads = {}

    @property
    def weight_grad(self) -> Array | None:
        return self.grads.get("weight")

    @property
    def bias_grad(self) -> Array | None:
        return self.grads.get("bias")

    def children(self) -> list[tuple[str, Module]]:
        """Sub-modules with their state_dict names."""
        return []

    def parameters(self) -> list[tuple[Module, str, Array]]:
        """(layer, name, array) for every parameter, depth-first; grads are layer.grads[name]."""
        out = [(self, n, getattr(self, n)) for n in self._param_names
               if getattr(self, n) is not None]
        for _, child in self.children():
            out += child.parameters()
        return out

    def named_parameters(self, prefix: str = "") -> list[tuple[str, Array]]:
        """(PyTorch-style name, array) for every parameter."""
        return [(k, v) for k, v, is_param in self._named_state(prefix) if is_param]

    def _named_state(self, prefix: str) -> list[tuple[str, Array, bool]]:
        out = []
        for names, is_param in ((self._param_names, True), (self._buffer_names, False)):
            for n in names:
                if getattr(self, n) is not None:
                    out.append((prefix + n, getattr(self, n), is_param))
        for name, child in self.children():
            out += child._named_state(f"{prefix}{name}.")
        return out

    def state_dict(self) -> dict[str, Array]:
        """Copies of parameters and buffers by PyTorch-style name ("0.weight", "2.body.0.bias")."""
        return {k: v.copy() for k, v, _ in self._named_state("")}

    def load_state_dict(self, state: Mapping[str, ArrayLike], strict: bool = True) -> None:
        """Copies values into the existing arrays (so optimizers keep tracking them).

        Names and shapes must match, with layouts already mcutrain's (OHWI convolutions,
        channels-last flatten order); PyTorch's `num_batches_tracked` entries are ignored.
        """
        own = {k: v for k, v, _ in self._named_state("")}
        given = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        missing = sorted(set(own) - set(given))
        unexpected = sorted(set(given) - set(own))
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        values = {k: np.asarray(given[k], dtype=np.float64) for k in own.keys() & given.keys()}
        for name, value in values.items():  # check everything before changing anything
            if value.shape != own[name].shape:
                raise ValueError(
                    f"load_state_dict: {name} has shape {value.shape}, expected {own[name].shape}"
                )
        for name, value in values.items():
            own[name][...] = value

    def zero_grad(self) -> None:
        """Drops the weight gradients of this module and its children."""
        self.grads = {}
        for _, child in self.children():
            child.zero_grad()

    def config(self) -> dict[str, Any]:
        """The constructor arguments (ints and tuples), as the device's layer.config()."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def _set_grads(self, **grads: Array) -> None:
        self.grads = {k: g for k, g in grads.items() if getattr(self, k) is not None}

    def _cached(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            raise RuntimeError(f"{type(self).__name__}: backward called before forward") from None


# ---------------------------------------------------------------------------------------------
# layers with parameters


class Linear(Module):
    """y = x @ weight.T + bias; weight (out_features, in_features) as PyTorch."""

    _param_names = ("weight", "bias")

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, rng: RngLike = None
    ) -> None:
        super().__init__()
        g = _generator(rng)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight: Array = _kaiming_uniform(g, (self.out_features, self.in_features),
                                              self.in_features)
        self.bias: Array | None = (
            _kaiming_uniform(g, (self.out_features,), self.in_features) if bias else None
        )

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None}

    def forward(self, x: ArrayLike, training: bool = True) -> Array:
        self._x = np.asarray(x, dtype=np.float64)
        return F.linear_forward(self._x, self.weight, self.bias)

    def backward(self, dy: ArrayLike) -> Array:
        x = self._cached("_x")
        dy = np.asarray(dy, dtype=np.float64)
        if not self.trainable:
            return dy @ self.weight
        dx, dw, db = F.linear_backward(x, self.weight, dy)
        self._set_grads(weight=dw, bias=db)
        return dx


class _Conv(Module):
    """Shared by Conv2d and Conv1d: both run as a 2-D convolution (Conv1d as 1 x K)."""

    _param_names = ("weight", "bias")

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: tuple[int, int],
        stride: tuple[int, int], padding: tuple[int, int], groups: int, bias: bool,
        rng: RngLike,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.groups = (
            int(in_channels), int(out_channels), int(groups))
        if self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"{type(self).__name__}: in_channels {in_channels} and out_channels "
                f"{out_channels} must be divisible by groups {groups}"
            )
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        g = _generator(rng)
        cg = self.in_channels // self.groups
        fan_in = cg * kernel_size[0] * kernel_size[1]
        self.weight: Array = _kaiming_uniform(g, (self.out_channels, *kernel_size, cg), fan_in)
        self.bias: Array | None = (
            _kaiming_uniform(g, (self.out_channels,), fan_in) if bias else None)

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self.padding, "groups": self.groups, "bias": self.bias is not None}

    # Conv1d overrides these three to view its tensors as 2-D ones with height 1.
    def _to_2d(self, a: Array) -> Array:
        return a

    def _from_2d(self, a: Array) -> Array:
        return a

    def _weight_2d(self) -> Array:
        return self.weight

    def forward(self, x: ArrayLike, training: bool = True) -> Array:
        self._x = self._to_2d(np.asarray(x, dtype=np.float64))
        y = F.conv2d_forward(self._x, self._weight_2d(), self.bias, self.stride, self.padding,
                             self.groups)
        return self._from_2d(y)

    def backward(self, dy: ArrayLike) -> Array:
        x = self._cached("_x")
        dy2, w2 = self._to_2d(np.asarray(dy, dtype=np.float64)), self._weight_2d()
        args = (self.stride, self.padding, self.groups)
        dx = F.conv2d_grad_input(x.shape, w2, dy2, *args)
        if self.trainable:
            dw, db = F.conv2d_grad_weight(x, w2.shape, dy2, *args)
            dw = dw.reshape(self.weight.shape)
            self._set_grads(weight=dw, bias=db)
        return self._from_2d(dx)


class Conv2d(_Conv):
    """2-D convolution over (N, H, W, C); weight (O, KH, KW, I/groups) "OHWI"."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: F.IntPair, stride: F.IntPair = 1,
        padding: F.IntPair = 0, groups: int = 1, bias: bool = True, *, rng: RngLike = None,
    ) -> None:
        super().__init__(in_channels, out_channels, F._pair(kernel_size, "kernel_size"),
                         F._pair(stride, "stride"), F._pair(padding, "padding"), groups, bias,
                         rng)


class Conv1d(_Conv):
    """1-D convolution over (N, L, C); weight (O, K, I/groups)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0, groups: int = 1,
        bias: bool = True, *, rng: RngLike = None,
    ) -> None:
        k, s, p = (F._single(v, n) for v, n in
                   ((kernel_size, "kernel_size"), (stride, "stride"), (padding, "padding")))
        super().__init__(in_channels, out_channels, (1, k), (1, s), (0, p), groups, bias, rng)
        self.weight = self.weight[:, 0].copy()

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(kernel_size=self.kernel_size[1], stride=self.stride[1],
                   padding=self.padding[1])
        return cfg

    def _to_2d(self, a: Array) -> Array:
        if a.ndim != 3:
            raise ValueError(f"Conv1d: expected (N, L, C), got shape {a.shape}")
        return a[:, None]

    def _from_2d(self, a: Array) -> Array:
        return a[:, 0]

    def _weight_2d(self) -> Array:
        return self.weight[:, None]


class BatchNorm2d(Module):
    """Batch norm over the last (channel) axis; weight = gamma, bias = beta, as PyTorch.

    forward(x, training=True) normalizes with batch statistics and updates running_mean and
    running_var; training=False uses the running statistics (and backward then treats them as
    constants, which is how a frozen-statistics fine-tune trains gamma and beta).
    """

    _param_names = ("weight", "bias")
    _buffer_names = ("running_mean", "running_var")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        self.weight: Array = np.ones(self.num_features)
        self.bias: Array = np.zeros(self.num_features)
        self.running_mean: Array = np.zeros(self.num_features)
        self.running_var: Array = np.ones(self.num_features)

    def config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}

    def forward(self, x: ArrayLike, training: bool = True) -> Array:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 2 or x.shape[-1] != self.num_features:
            raise ValueError(f"BatchNorm2d({self.num_features}): input shape {x.shape}")
        if training:
            y, self._cache = F.batchnorm2d_forward_train(
                x, self.weight, self.bias, self.running_mean, self.running_var, self.eps,
                self.momentum)
            return y
        self._cache = F.batchnorm2d_eval_cache(
            x, self.weight, self.running_mean, self.running_var, self.eps)
        return self.weight * self._cache.xhat + self.bias

    def backward(self, dy: ArrayLike) -> Array:
        dx, dgamma, dbeta = F.batchnorm2d_backward(dy, self._cached("_cache"))
        if self.trainable:
            self._set_grads(weight=dgamma, bias=dbeta)
        return dx


# ---------------------------------------------------------------------------------------------
# layers without parameters


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x: ArrayLike, training: bool = True) -> Array:
        self._y = F.relu_forward(x)
        return self._y

    def backward(self, dy: ArrayLike) -> Array:
        return F.relu_backward(self._cached("_y"), dy)


class ReLU6(Module):
    """min(max(x, 0), 6)."""

    def forward(self, x: ArrayLike, training: bool = True) -> Array:
        self._y = F.relu6_forward(x)
        return self._y

    def backward(self, dy: ArrayLike) -> Array:
        return F.relu6_backward(self._cached("_y"), dy)


class Softmax(Module):
    """Softmax over the last axis (do not put it before cross_entropy, which takes logits)."""

    def forward(self, x: ArrayLike, training: bool = True) -> Array:
        self._y = F.softmax_forward(x)
        return self._y

    def backward(self, dy: ArrayLike) -> Array:
        return F.softmax_backward(self._cached("_y"), dy)


class _Pool2d(Module):
    def __init__(
        self, kernel_size: F.IntPair, stride: F.IntPair | None = None, padding: F.IntPair = 0
    ) -> None:
        super().__init__()
        self.kernel_size = F._pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else F._pair(stride, "stride")
        self.padding = F._pair(padding, "padding")

    def config(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}


class MaxPool2d(_Pool2d):
    """Max pooling; padding is -inf and ties go to the first maximum in row-major order."""

    def forward(self, x: ArrayLike, training: bool = True) -> Array:
        self._x = np.asarray(x, dtype=np.float64)
        return F.maxpool2d_forward(self._x, self.kernel_size, self.stride, self.padding)

    def backward(self, dy: ArrayLike) -> Array:
        return F.maxpool2d_backward(self._cached("_x"), dy, self.kernel_size, self.stride,
                                    self.padding)


class AvgPool2d(_Pool2d):
    """Average pooling; zero padding is counted (PyTorch's count_include_pad=True)."""

    def forward(self, x: ArrayLike, training: bool = True) -> Array:
        x = np.asarray(x, dtype=np.float64)
        self._shape = x.shape
        return F.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding)

    def backward(self, dy: ArrayLike) -> Array:
        return F.avgpool2d_backward(self._cached("_shape"), dy, self.kernel_size, self.stride,
                                    self.padding)


class GlobalAvgPool(Module):
    """(N, H, W, C) -> (N, C) mean over positions (also (N, L, C) -> (N, C))."""

    def forward(self, x: ArrayLike, training: bool = True) -> Array:
        x = np.asarray(x, dtype=np.float64)
        self._shape = x.shape
        return F.global_avgpool_forward(x)

    def backward(self, dy: ArrayLike) -> Array:
        return F.global_avgpool_backward(self._cached("_shape"), dy)


class Flatten(Module):
    """(N, H, W, C) -> (N, H*W*C) in channels-last order (PyTorch flattens C, H, W)."""

    def forward(self, x: ArrayLike, training: bool = True) -> Array:
        x = np.asarray(x, dtype=np.float64)
        self._shape = x.shape
        return F.flatten_forward(x)

    def backward(self, dy: ArrayLike) -> Array:
        return F.flatten_backward(self._cached("_shape"), dy)


class Add:
    """The residual join as a standalone two-input layer: forward(a, b) = a + b."""

    trainable = False

    def forward(self, a: ArrayLike, b: ArrayLike, training: bool = True) -> Array:
        return F.add_forward(a, b)

    def backward(self, dy: ArrayLike) -> tuple[Array, Array]:
        return F.add_backward(dy)

    def parameters(self) -> list[tuple[Module, str, Array]]:
        return []

    def config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return "Add()"


# ---------------------------------------------------------------------------------------------
# containers


class _Container(Module):
    @property
    def trainable(self) -> bool:
        """True if any child is trainable; setting it sets every child."""
        return any(child.trainable for _, child in self.children())

    @trainable.setter
    def trainable(self, value: bool) -> None:
        for _, child in self.children():
            child.trainable = value


class Residual(_Container):
    """y = body(x) + shortcut(x), the shortcut being the identity when None (ResNet blocks)."""

    def __init__(self, body: Module, shortcut: Module | None = None) -> None:
        super().__init__()
        if not isinstance(body, Module) or not isinstance(shortcut, (Module, type(None))):
            raise TypeError("Residual: body and shortcut must be layers (shortcut may be None)")
        self.body = body
        self.shortcut = shortcut

    def children(self) -> list[tuple[str, Module]]:
        kids = [("body", self.body)]
        if self.shortcut is not None:
            kids.append(("shortcut", self.shortcut))
        return kids

    def forward(self, x: ArrayLike, training: bool = True) -> Array:
        x = np.asarray(x, dtype=np.float64)
        main = self.body.forward(x, training)
        skip = x if self.shortcut is None else self.shortcut.forward(x, training)
        if main.shape != skip.shape:
            raise ValueError(
                f"Residual: body output {main.shape} and shortcut output {skip.shape} differ"
            )
        return main + skip

    def backward(self, dy: ArrayLike) -> Array:
        d_main, d_skip = F.add_backward(dy)
        dx = self.body.backward(d_main)
        if self.shortcut is not None:
            d_skip = self.shortcut.backward(d_skip)
        return dx + d_skip

    def __repr__(self) -> str:
        body = _indent(repr(self.body))
        shortcut = _indent(repr(self.shortcut))
        return f"Residual(\n  body={body},\n  shortcut={shortcut}\n)"


class Sequential(_Container):
    """Layers applied in order; also the training entry point (train_step, evaluate)."""

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: item {i} is a {type(layer).__name__}, not a layer")
        self.layers: list[Module] = list(layers)

    def children(self) -> list[tuple[str, Module]]:
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def __repr__(self) -> str:
        lines = [f"  ({i}): {_indent(repr(layer))}" for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"

    def forward(self, x: ArrayLike, training: bool = True) -> Array:
        out = np.asarray(x, dtype=np.float64)
        for layer in self.layers:
            out = layer.forward(out, training)
        return out

    def backward(self, dy: ArrayLike) -> Array:
        grad = np.asarray(dy, dtype=np.float64)
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return grad

    def train_step(self, x: ArrayLike, y: Any, loss: LossFn, opt: Optimizer) -> float:
        """Forward in training mode, loss, backward and one optimizer step; returns the loss."""
        out = self.forward(x, training=True)
        value, dout = loss(out, _targets(y))
        self.backward(dout)
        opt.step()
        return float(value)

    def predict(self, x: ArrayLike, batch_size: int | None = None) -> Array:
        """Outputs in inference mode (BatchNorm2d uses its running statistics)."""
        x = np.asarray(x, dtype=np.float64)
        step = batch_size or max(len(x), 1)
        outs = [self.forward(x[i : i + step], training=False) for i in range(0, len(x), step)]
        return np.concatenate(outs) if outs else self.forward(x, training=False)

    def evaluate(
        self, x: ArrayLike, y: Any, loss: LossFn = F.cross_entropy, batch_size: int | None = None
    ) -> tuple[float, float]:
        """(mean loss, accuracy) in inference mode.

        Accuracy compares the argmax of the outputs with integer labels, or with the argmax of
        2-D float targets (one-hot or soft labels); it is nan for other targets.
        """
        target = _targets(y)
        out = self.predict(x, batch_size)
        value, _ = loss(out, target)
        if target.ndim == 1 and np.issubdtype(target.dtype, np.integer) and out.ndim == 2:
            acc = float(np.mean(out.argmax(axis=1) == target))
        elif target.shape == out.shape and out.ndim == 2:
            acc = float(np.mean(out.argmax(axis=1) == target.argmax(axis=1)))
        else:
            acc = float("nan")
        return float(value), acc


def _targets(y: Any) -> np.ndarray:
    t = np.asarray(y)
    return t.reshape(1) if t.ndim == 0 else t


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


def fold_batchnorm(model: Sequential) -> Sequential:
    """A copy of model with each BatchNorm2d that follows a Conv2d/Conv1d/Linear folded into it.

    The copy computes the same as model in inference mode (training=False). Nested Sequential
    and Residual bodies and shortcuts are folded too; a BatchNorm2d with no layer to fold into
    stays.
    """
    def fold(seq: Sequential) -> Sequential:
        layers: list[Module] = []
        for layer in seq.layers:
            if isinstance(layer, Sequential):
                layer = fold(layer)
            elif isinstance(layer, Residual):
                body = fold(layer.body) if isinstance(layer.body, Sequential) else layer.body
                short = layer.shortcut
                if isinstance(short, Sequential):
                    short = fold(short)
                layer = Residual(body, short)
            prev = layers[-1] if layers else None
            if isinstance(layer, BatchNorm2d) and isinstance(prev, (_Conv, Linear)):
                w2, b2 = F.batchnorm_fold(prev.weight, prev.bias, layer.weight, layer.bias,
                                          layer.running_mean, layer.running_var, layer.eps)
                prev.weight, prev.bias = w2, b2
                continue
            layers.append(layer)
        return Sequential(*layers)

    return fold(copy.deepcopy(model))


# ---------------------------------------------------------------------------------------------
# optimizers


class Optimizer:
    """Updates the trainable parameters of a model from the grads of its last backward.

    State (velocity, moments) is kept per (layer, parameter name), so replacing a layer's
    arrays or loading a state_dict keeps working.
    """

    def __init__(self, model: Module, lr: float) -> None:
        self.model = model
        self.lr = float(lr)
        self._state: dict[tuple[int, str], dict[str, Any]] = {}

    def step(self) -> None:
        """One update of every trainable parameter that has a gradient."""
        for layer, name, w in self.model.parameters():
            grad = layer.grads.get(name)
            if not layer.trainable or grad is None:
                continue
            self._update(w, grad, self._state.setdefault((id(layer), name), {}))

    def zero_grad(self) -> None:
        self.model.zero_grad()

    def _update(self, w: Array, grad: Array, state: dict[str, Any]) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """torch.optim.SGD with momentum and L2 weight decay (no dampening or Nesterov)."""

    def __init__(
        self, model: Module, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
    ) -> None:
        super().__init__(model, lr)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)

    def _update(self, w: Array, grad: Array, state: dict[str, Any]) -> None:
        v = state.setdefault("velocity", np.zeros_like(w)) if self.momentum else None
        F.sgd_step(w, grad, v, self.lr, self.momentum, self.weight_decay)


class Adam(Optimizer):
    """torch.optim.Adam with L2 weight decay; the step count is kept per parameter, as torch."""

    def __init__(
        self, model: Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8, weight_decay: float = 0.0,
    ) -> None:
        super().__init__(model, lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def _update(self, w: Array, grad: Array, state: dict[str, Any]) -> None:
        if not state:
            state.update(step=0, m=np.zeros_like(w), v=np.zeros_like(w))
        state["step"] += 1
        F.adam_step(w, grad, state["m"], state["v"], state["step"], self.lr, *self.betas,
                    self.eps, self.weight_decay)
