"""Random Linear, Conv1d and Conv2d layer shapes for the shape tests: odd channel counts (1,
primes, not multiples of the kernels' 2- and 4-channel blocks), kernel sizes 1-4, strides 1-2,
paddings, depthwise and pointwise convolutions, batches of 1-3."""

from __future__ import annotations

import dataclasses

import numpy as np
from mcutrain.reference import nn as R

RATIOS = (0.05, 0.1, 0.25, 0.34, 0.5, 0.75, 1.0)  # update policies' ratios, 5% to all


@dataclasses.dataclass
class LayerShape:
    kind: str                 # linear, conv1d, conv, depthwise or pointwise
    in_c: int
    out_c: int
    kernel: tuple[int, int]   # (1, k) for Conv1d
    stride: int
    padding: tuple[int, int]  # (0, p) for Conv1d
    x_shape: tuple[int, ...]
    dy_shape: tuple[int, ...]

    @property
    def groups(self) -> int:
        return self.in_c if self.kind == "depthwise" else 1

    @property
    def w_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.out_c, self.in_c)
        if self.kind == "conv1d":
            return (self.out_c, self.kernel[1], self.in_c)
        return (self.out_c, *self.kernel, self.in_c // self.groups)

    @property
    def geometry(self) -> dict | None:
        """The conv geometry the references take (None for Linear)."""
        if self.kind == "linear":
            return None
        return dict(stride=self.stride, padding=self.padding, groups=self.groups)

    def device_src(self, dtype: str = "float32") -> str:
        d = "" if dtype == "float32" else f", dtype=mt.{dtype}"
        if self.kind == "linear":
            return f"mt.Linear({self.in_c}, {self.out_c}{d})"
        if self.kind == "conv1d":
            return (f"mt.Conv1d({self.in_c}, {self.out_c}, {self.kernel[1]}, stride={self.stride}, "
                    f"padding={self.padding[1]}{d})")
        return (f"mt.Conv2d({self.in_c}, {self.out_c}, {self.kernel}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}{d})")

    def reference(self) -> R.Module:
        if self.kind == "linear":
            return R.Linear(self.in_c, self.out_c)
        if self.kind == "conv1d":
            return R.Conv1d(self.in_c, self.out_c, self.kernel[1], stride=self.stride, padding=self.padding[1])
        return R.Conv2d(self.in_c, self.out_c, self.kernel, stride=self.stride, padding=self.padding,
                        groups=self.groups)


def _out(n: int, k: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - k) // stride + 1


def random_layer(rng: np.random.Generator) -> LayerShape:
    kind = str(rng.choice(["linear", "conv", "depthwise", "conv1d", "pointwise"]))
    n = int(rng.integers(1, 4))
    if kind == "linear":
        i, o = int(rng.integers(1, 70)), int(rng.integers(1, 40))
        return LayerShape(kind, i, o, (1, 1), 1, (0, 0), (n, i), (n, o))
    if kind == "conv1d":
        ci, co, k = int(rng.integers(1, 9)), int(rng.integers(1, 13)), int(rng.integers(1, 5))
        s, p = int(rng.integers(1, 3)), int(rng.integers(0, k))
        length = int(rng.integers(k, 20))
        return LayerShape(kind, ci, co, (1, k), s, (0, p), (n, length, ci), (n, _out(length, k, s, p), co))
    if kind == "pointwise":
        ci, co = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        h, w = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        return LayerShape(kind, ci, co, (1, 1), 1, (0, 0), (n, h, w, ci), (n, h, w, co))
    depthwise = kind == "depthwise"
    ci = int(rng.integers(1, 17 if depthwise else 9))
    co = ci if depthwise else int(rng.integers(1, 13))
    kh, kw, s = int(rng.integers(1, 5)), int(rng.integers(1, 5)), int(rng.integers(1, 3))
    ph, pw = int(rng.integers(0, kh)), int(rng.integers(0, kw))
    h, w = int(rng.integers(kh, 12)), int(rng.integers(kw, 12))
    return LayerShape(kind, ci, co, (kh, kw), s, (ph, pw), (n, h, w, ci),
                      (n, _out(h, kh, s, ph), _out(w, kw, s, pw), co))


def random_policy(rng: np.random.Generator) -> tuple[str, float, str]:
    """(kind, ratio, device source) of a TopK (fixed ratio, 70%), ChannelRatio (20%) or no
    policy (a full update, as ChannelRatio(1.0) selects it; 10%)."""
    ratio, u = float(rng.choice(RATIOS)), rng.random()
    if u < 0.7:
        return "topk", ratio, f"mt.TopK({ratio})"
    if u < 0.9:
        return "channels", ratio, f"mt.ChannelRatio({ratio})"
    return "channels", 1.0, "None"


def random_conv2d(rng: np.random.Generator, max_values: int) -> tuple:
    """(n, h, w, in_c, out_c, kernel, stride, padding, groups, bias) of a random Conv2d (grouped
    convolutions with and without channel multipliers, kernels to 5x5, strides to 3) whose
    input, output and weights hold at most max_values numbers."""
    while True:
        g = int(rng.choice([1, 1, 1, 2, 3, 0]))  # 0: depthwise, with a channel multiplier of 1 or 2
        if g == 0:
            cin = int(rng.integers(1, 40))
            g, cout = cin, cin * int(rng.choice([1, 1, 2]))
        else:
            cin, cout = g * int(rng.integers(1, 12)), g * int(rng.integers(1, 14))
        k = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        p = (int(rng.integers(0, k[0])), int(rng.integers(0, k[1])))
        h = int(rng.integers(max(1, k[0] - 2 * p[0]), 14))
        w = int(rng.integers(max(1, k[1] - 2 * p[1]), 14))
        n = int(rng.integers(1, 4))
        oh, ow = _out(h, k[0], s[0], p[0]), _out(w, k[1], s[1], p[1])
        if n * (h * w * cin + oh * ow * cout) + cout * k[0] * k[1] * cin // g <= max_values:
            return n, h, w, cin, cout, k, s, p, g, bool(rng.random() < 0.8)


def random_conv2d_arrays(rng: np.random.Generator, config: tuple, cast) -> tuple:
    """x, w, b (None without a bias) and dy of a random_conv2d config: standard normal values
    passed through `cast` (e.g. to float32, or to what float16 storage keeps)."""
    n, h, wd, cin, cout, k, s, p, g, bias = config
    oh, ow = _out(h, k[0], s[0], p[0]), _out(wd, k[1], s[1], p[1])
    x = cast(rng.standard_normal((n, h, wd, cin)))
    w = cast(rng.standard_normal((cout, k[0], k[1], cin // g)))
    b = cast(rng.standard_normal(cout)) if bias else None
    return x, w, b, cast(rng.standard_normal((n, oh, ow, cout)))


def case_count(target, unix: int, board: int) -> int:
    """How many random cases a test draws on `target`: the emulated boards run about 50x
    slower than the unix port, and every case is a script run."""
    return unix if target.name == "unix" else board
