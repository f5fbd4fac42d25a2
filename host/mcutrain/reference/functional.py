"""Forward and backward of every mcutrain layer, loss and optimizer as numpy functions.

This is the reference the C engine is tested against, so it favours being obviously right over
being fast (it is still vectorized: a 32x32x16 convolution takes milliseconds). Everything is
computed in float64 whatever the input dtype; results are float64 arrays.

Layouts are the device's (see docs/device-api.md), channels-last throughout:
- images (N, H, W, C), Conv1d sequences (N, L, C), dense activations (N, F);
- Conv2d weight (O, KH, KW, I/groups) "OHWI", Conv1d weight (O, K, I/groups), Linear weight
  (O, I) as PyTorch, bias (O);
- output channel o is in group o // (O/groups) and sees input channels
  [g*I/groups, (g+1)*I/groups);
- flatten_forward keeps row-major (N, H, W, C) order, unlike PyTorch's NCHW flatten, so an
  exporter must permute the columns of the Linear that follows a Flatten.

Backward functions return gradients of a scalar loss given dy = dL/dy; they never accumulate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "BatchNormCache",
    "IntPair",
    "adam_step",
    "add_backward",
    "add_forward",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "batchnorm2d_backward",
    "batchnorm2d_eval_cache",
    "batchnorm2d_forward_eval",
    "batchnorm2d_forward_train",
    "batchnorm_fold",
    "conv1d_backward",
    "conv1d_forward",
    "conv2d_backward",
    "conv2d_forward",
    "conv2d_grad_input",
    "conv2d_grad_weight",
    "conv_output_size",
    "cross_entropy",
    "flatten_backward",
    "flatten_forward",
    "global_avgpool_backward",
    "global_avgpool_forward",
    "linear_backward",
    "linear_forward",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "mse",
    "relu6_backward",
    "relu6_forward",
    "relu_backward",
    "relu_forward",
    "sgd_step",
    "softmax_backward",
    "softmax_forward",
]

Array = NDArray[np.float64]
IntPair = int | Sequence[int]


# ---------------------------------------------------------------------------------------------
# helpers


def _f64(x: ArrayLike) -> Array:
    return np.asarray(x, dtype=np.float64)


def _bias(layer: str, b: ArrayLike, out_c: int) -> Array:
    b = _f64(b)
    if b.shape != (out_c,):
        raise ValueError(f"{layer}: bias {b.shape} does not match {out_c} output channels")
    return b


def _check_dy(layer: str, dy: Array, out_shape: tuple[int, ...]) -> None:
    if dy.shape != out_shape:
        raise ValueError(f"{layer}: dy {dy.shape} does not match the output {out_shape}")


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    """An int or an (h, w) pair as an (h, w) tuple of ints."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or an (h, w) pair, got {value!r}")
    return pair[0], pair[1]


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length along one axis, PyTorch's formula: (size + 2*padding - kernel)//stride + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def _check_window(
    layer: str, shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
    padding: tuple[int, int],
) -> tuple[int, int]:
    """Validates a 2-D window over an (N, H, W, C) input and returns (out_h, out_w)."""
    if len(shape) != 4:
        raise ValueError(f"{layer}: input must be (N, H, W, C), got shape {shape}")
    if min(kernel) < 1 or min(stride) < 1 or min(padding) < 0:
        raise ValueError(
            f"{layer}: kernel {kernel} and stride {stride} must be >= 1, padding {padding} >= 0"
        )
    out_h = conv_output_size(shape[1], kernel[0], stride[0], padding[0])
    out_w = conv_output_size(shape[2], kernel[1], stride[1], padding[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"{layer}: input {shape} is smaller than kernel {kernel} with padding {padding}"
        )
    return out_h, out_w


def _pad_hw(x: NDArray[Any], padding: tuple[int, int], value: float = 0.0) -> NDArray[Any]:
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=value)


def _windows(xp: Array, kernel: tuple[int, int], stride: tuple[int, int]) -> Array:
    """Read-only view (N, OH, OW, C, KH, KW) of the kernel windows of a padded input."""
    return sliding_window_view(xp, kernel, axis=(1, 2))[:, :: stride[0], :: stride[1]]


def _tap(k: int, stride: int, out: int) -> slice:
    """Rows (or columns) of the padded input that kernel tap k reads across all outputs."""
    return slice(k, k + stride * (out - 1) + 1, stride)


class _Pool(NamedTuple):
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    out_h: int
    out_w: int


def _pool_args(
    layer: str, shape: tuple[int, ...], kernel: IntPair, stride: IntPair | None,
    padding: IntPair, dy: Array | None = None,
) -> _Pool:
    """Parses and checks pooling arguments (and dy's shape, for a backward)."""
    k = _pair(kernel, "kernel")
    st = k if stride is None else _pair(stride, "stride")
    pad = _pair(padding, "padding")
    oh, ow = _check_window(layer, shape, k, st, pad)
    # PyTorch's rule; it also guarantees that no window lies wholly in the padding.
    if pad[0] > k[0] // 2 or pad[1] > k[1] // 2:
        raise ValueError(f"{layer}: padding {pad} must be at most half of kernel {k}")
    if dy is not None:
        _check_dy(layer, dy, (shape[0], oh, ow, shape[3]))
    return _Pool(k, st, pad, oh, ow)


# ---------------------------------------------------------------------------------------------
# linear


def linear_forward(x: ArrayLike, w: ArrayLike, b: ArrayLike | None = None) -> Array:
    """y = x @ w.T + b for x (N, I), w (O, I), b (O)."""
    x, w = _f64(x), _f64(w)
    if w.ndim != 2 or x.shape[-1:] != w.shape[1:]:
        raise ValueError(f"linear: input {x.shape} does not match weight (O, I) {w.shape}")
    y = x @ w.T
    if b is not None:
        y = y + _bias("linear", b, w.shape[0])
    return y


def linear_backward(x: ArrayLike, w: ArrayLike, dy: ArrayLike) -> tuple[Array, Array, Array]:
    """(dx, dw, db) of linear_forward; leading axes of x and dy all count as batch."""
    x, w, dy = _f64(x), _f64(w), _f64(dy)
    if w.ndim != 2 or x.shape[-1:] != w.shape[1:] or dy.shape != x.shape[:-1] + w.shape[:1]:
        raise ValueError(f"linear: x {x.shape}, weight {w.shape} and dy {dy.shape} do not fit")
    x2 = x.reshape(-1, w.shape[1])
    dy2 = dy.reshape(-1, w.shape[0])
    return (dy @ w), dy2.T @ x2, dy2.sum(axis=0)


# ---------------------------------------------------------------------------------------------
# convolution


def _check_conv(
    layer: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: tuple[int, int],
    padding: tuple[int, int], groups: int,
) -> tuple[int, int]:
    """Validates conv shapes and returns (out_h, out_w)."""
    if len(w_shape) != 4:
        raise ValueError(f"{layer}: weight must be (O, KH, KW, I/groups), got {w_shape}")
    if len(x_shape) != 4:
        raise ValueError(f"{layer}: input must be (N, H, W, C), got {x_shape}")
    out_c, kh, kw, in_cg = w_shape
    if groups < 1 or out_c % groups or in_cg * groups != x_shape[3]:
        raise ValueError(
            f"{layer}: input {x_shape} and weight {w_shape} do not fit groups={groups} "
            "(need C == groups * weight.shape[3] and O divisible by groups)"
        )
    return _check_window(layer, x_shape, (kh, kw), stride, padding)


def _im2col(
    x: Array, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
    groups: int, out_hw: tuple[int, int],
) -> Array:
    """Patches as (groups, N*OH*OW, KH*KW*C/groups), taps in the weight's (KH, KW, I) order."""
    n, _, _, c = x.shape
    cg = c // groups
    win = _windows(_pad_hw(x, padding), kernel, stride)  # (N, OH, OW, C, KH, KW)
    win = win.reshape(n, out_hw[0], out_hw[1], groups, cg, kernel[0], kernel[1])
    cols = win.transpose(3, 0, 1, 2, 5, 6, 4)  # (G, N, OH, OW, KH, KW, Cg)
    return cols.reshape(groups, n * out_hw[0] * out_hw[1], kernel[0] * kernel[1] * cg)


def conv2d_forward(
    x: ArrayLike, w: ArrayLike, b: ArrayLike | None = None, stride: IntPair = (1, 1),
    padding: IntPair = (0, 0), groups: int = 1,
) -> Array:
    """Grouped 2-D convolution (cross-correlation, as PyTorch): x (N, H, W, C), w OHWI."""
    x, w = _f64(x), _f64(w)
    st, pad = _pair(stride, "stride"), _pair(padding, "padding")
    oh, ow = _check_conv("conv2d", x.shape, w.shape, st, pad, groups)
    out_c, kh, kw, _ = w.shape
    cols = _im2col(x, (kh, kw), st, pad, groups, (oh, ow))
    wg = w.reshape(groups, out_c // groups, -1).transpose(0, 2, 1)  # (G, K, O/G)
    y = (cols @ wg).transpose(1, 0, 2).reshape(x.shape[0], oh, ow, out_c)
    if b is not None:
        y = y + _bias("conv2d", b, out_c)
    return y


def conv2d_grad_input(
    x_shape: Sequence[int], w: ArrayLike, dy: ArrayLike, stride: IntPair = (1, 1),
    padding: IntPair = (0, 0), groups: int = 1,
) -> Array:
    """dx of conv2d_forward for an input of shape x_shape (the input itself is not needed)."""
    w, dy = _f64(w), _f64(dy)
    shape = tuple(int(s) for s in x_shape)
    st, pad = _pair(stride, "stride"), _pair(padding, "padding")
    oh, ow = _check_conv("conv2d", shape, w.shape, st, pad, groups)
    n, h, wd, c = shape
    out_c, kh, kw, cg = w.shape
    _check_dy("conv2d", dy, (n, oh, ow, out_c))
    og = out_c // groups
    dyg = dy.reshape(n * oh * ow, groups, og).transpose(1, 0, 2)  # (G, M, O/G)
    dcols = dyg @ w.reshape(groups, og, -1)  # (G, M, K)
    dcols = dcols.reshape(groups, n, oh, ow, kh, kw, cg).transpose(1, 2, 3, 4, 5, 0, 6)
    dxp = np.zeros((n, h + 2 * pad[0], wd + 2 * pad[1], c))
    for i in range(kh):  # col2im: scatter each kernel tap back onto the pixels it read
        for j in range(kw):
            dxp[:, _tap(i, st[0], oh), _tap(j, st[1], ow), :] += dcols[:, :, :, i, j].reshape(
                n, oh, ow, c
            )
    return np.ascontiguousarray(dxp[:, pad[0] : pad[0] + h, pad[1] : pad[1] + wd, :])


def conv2d_grad_weight(
    x: ArrayLike, w_shape: Sequence[int], dy: ArrayLike, stride: IntPair = (1, 1),
    padding: IntPair = (0, 0), groups: int = 1,
) -> tuple[Array, Array]:
    """(dw, db) of conv2d_forward for a weight of shape w_shape."""
    x, dy = _f64(x), _f64(dy)
    wshape = tuple(int(s) for s in w_shape)
    st, pad = _pair(stride, "stride"), _pair(padding, "padding")
    oh, ow = _check_conv("conv2d", x.shape, wshape, st, pad, groups)
    n = x.shape[0]
    out_c, kh, kw, _ = wshape
    _check_dy("conv2d", dy, (n, oh, ow, out_c))
    dyg = dy.reshape(n * oh * ow, groups, out_c // groups).transpose(1, 0, 2)  # (G, M, O/G)
    cols = _im2col(x, (kh, kw), st, pad, groups, (oh, ow))  # (G, M, K)
    dw = (cols.transpose(0, 2, 1) @ dyg).transpose(0, 2, 1).reshape(wshape)
    return dw, dy.sum(axis=(0, 1, 2))


def conv2d_backward(
    x: ArrayLike, w: ArrayLike, dy: ArrayLike, stride: IntPair = (1, 1),
    padding: IntPair = (0, 0), groups: int = 1,
) -> tuple[Array, Array, Array]:
    """(dx, dw, db) of conv2d_forward given dy (N, OH, OW, O)."""
    x, w = _f64(x), _f64(w)
    dx = conv2d_grad_input(x.shape, w, dy, stride, padding, groups)
    dw, db = conv2d_grad_weight(x, w.shape, dy, stride, padding, groups)
    return dx, dw, db


def _single(value: int | Sequence[int], name: str) -> int:
    """An int or a 1-tuple (conv1d's kernel, stride, padding) as an int."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    items = tuple(value)
    if len(items) != 1:
        raise ValueError(f"conv1d: {name} must be an int or a 1-tuple, got {value!r}")
    return int(items[0])


def _conv1d_args(
    x: ArrayLike, w: ArrayLike, stride: int | Sequence[int], padding: int | Sequence[int]
) -> tuple[Array, Array, tuple[int, int], tuple[int, int]]:
    """conv1d as a conv2d with height 1: x (N, 1, L, C), w (O, 1, K, I/groups)."""
    x, w = _f64(x), _f64(w)
    if x.ndim != 3 or w.ndim != 3:
        raise ValueError(
            f"conv1d: input must be (N, L, C) and weight (O, K, I/groups), got {x.shape}, {w.shape}"
        )
    return x[:, None], w[:, None], (1, _single(stride, "stride")), (0, _single(padding, "padding"))


def conv1d_forward(
    x: ArrayLike, w: ArrayLike, b: ArrayLike | None = None, stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0, groups: int = 1,
) -> Array:
    """Grouped 1-D convolution: x (N, L, C), w (O, K, I/groups) -> (N, OL, O)."""
    x4, w4, st, pad = _conv1d_args(x, w, stride, padding)
    return conv2d_forward(x4, w4, b, st, pad, groups)[:, 0]


def conv1d_backward(
    x: ArrayLike, w: ArrayLike, dy: ArrayLike, stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0, groups: int = 1,
) -> tuple[Array, Array, Array]:
    """(dx, dw, db) of conv1d_forward given dy (N, OL, O)."""
    x4, w4, st, pad = _conv1d_args(x, w, stride, padding)
    dx, dw, db = conv2d_backward(x4, w4, _f64(dy)[:, None], st, pad, groups)
    return dx[:, 0], dw[:, 0], db


# ---------------------------------------------------------------------------------------------
# activations


def relu_forward(x: ArrayLike) -> Array:
    """max(x, 0)."""
    return np.maximum(_f64(x), 0.0)


def relu_backward(y: ArrayLike, dy: ArrayLike) -> Array:
    """dx from the forward *output* y: dy where y > 0."""
    return np.where(_f64(y) > 0, _f64(dy), 0.0)


def relu6_forward(x: ArrayLike) -> Array:
    """min(max(x, 0), 6)."""
    return np.clip(_f64(x), 0.0, 6.0)


def relu6_backward(y: ArrayLike, dy: ArrayLike) -> Array:
    """dx from the forward output y: dy where 0 < y < 6."""
    y = _f64(y)
    return np.where((y > 0) & (y < 6), _f64(dy), 0.0)


def softmax_forward(x: ArrayLike) -> Array:
    """Softmax over the last axis, with the maximum subtracted so large inputs stay finite."""
    x = _f64(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(y: ArrayLike, dy: ArrayLike) -> Array:
    """dx from the forward output y: y * (dy - sum(dy * y))."""
    y, dy = _f64(y), _f64(dy)
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def add_forward(a: ArrayLike, b: ArrayLike) -> Array:
    """Residual join a + b (shapes must match: no broadcasting, as on the device)."""
    a, b = _f64(a), _f64(b)
    if a.shape != b.shape:
        raise ValueError(f"add: shapes {a.shape} and {b.shape} differ")
    return a + b


def add_backward(dy: ArrayLike) -> tuple[Array, Array]:
    """(da, db) of add_forward: both are dy."""
    dy = _f64(dy)
    return dy, dy.copy()


# ---------------------------------------------------------------------------------------------
# pooling and reshaping


def maxpool2d_forward(
    x: ArrayLike, kernel: IntPair, stride: IntPair | None = None, padding: IntPair = 0
) -> Array:
    """Max over each window of x (N, H, W, C); padding is -inf."""
    x = _f64(x)
    p = _pool_args("maxpool2d", x.shape, kernel, stride, padding)
    return _windows(_pad_hw(x, p.padding, -np.inf), p.kernel, p.stride).max(axis=(4, 5))


def maxpool2d_backward(
    x: ArrayLike, dy: ArrayLike, kernel: IntPair, stride: IntPair | None = None,
    padding: IntPair = 0,
) -> Array:
    """dx of maxpool2d_forward: each dy goes to its window's first maximum (row-major order)."""
    x, dy = _f64(x), _f64(dy)
    p = _pool_args("maxpool2d", x.shape, kernel, stride, padding, dy)
    (kh, kw), (sh, sw), (ph, pw) = p.kernel, p.stride, p.padding
    n, h, w, c = x.shape
    win = _windows(_pad_hw(x, p.padding, -np.inf), p.kernel, p.stride)
    first = win.reshape(n, p.out_h, p.out_w, c, kh * kw).argmax(axis=-1)  # first of equal maxima
    dxp = np.zeros((n, h + 2 * ph, w + 2 * pw, c))
    for i in range(kh):
        for j in range(kw):
            dxp[:, _tap(i, sh, p.out_h), _tap(j, sw, p.out_w), :] += np.where(
                first == i * kw + j, dy, 0.0
            )
    return np.ascontiguousarray(dxp[:, ph : ph + h, pw : pw + w, :])


def avgpool2d_forward(
    x: ArrayLike, kernel: IntPair, stride: IntPair | None = None, padding: IntPair = 0
) -> Array:
    """Mean over each window of x (N, H, W, C); zero padding counts (count_include_pad=True)."""
    x = _f64(x)
    p = _pool_args("avgpool2d", x.shape, kernel, stride, padding)
    window_sum = _windows(_pad_hw(x, p.padding), p.kernel, p.stride).sum(axis=(4, 5))
    return window_sum / (p.kernel[0] * p.kernel[1])


def avgpool2d_backward(
    x_shape: Sequence[int], dy: ArrayLike, kernel: IntPair, stride: IntPair | None = None,
    padding: IntPair = 0,
) -> Array:
    """dx of avgpool2d_forward for an input of shape x_shape."""
    dy = _f64(dy)
    shape = tuple(int(s) for s in x_shape)
    p = _pool_args("avgpool2d", shape, kernel, stride, padding, dy)
    (kh, kw), (sh, sw), (ph, pw) = p.kernel, p.stride, p.padding
    n, h, w, c = shape
    share = dy / (kh * kw)
    dxp = np.zeros((n, h + 2 * ph, w + 2 * pw, c))
    for i in range(kh):
        for j in range(kw):
            dxp[:, _tap(i, sh, p.out_h), _tap(j, sw, p.out_w), :] += share
    return np.ascontiguousarray(dxp[:, ph : ph + h, pw : pw + w, :])


def global_avgpool_forward(x: ArrayLike) -> Array:
    """Mean over all positions: (N, H, W, C) -> (N, C); also (N, L, C) -> (N, C)."""
    x = _f64(x)
    if x.ndim < 3:
        raise ValueError(f"global_avgpool: input must be (N, ..., C), got {x.shape}")
    return x.mean(axis=tuple(range(1, x.ndim - 1)))


def global_avgpool_backward(x_shape: Sequence[int], dy: ArrayLike) -> Array:
    """dx of global_avgpool_forward: dy spread evenly over the positions."""
    dy = _f64(dy)
    shape = tuple(int(s) for s in x_shape)
    positions = int(np.prod(shape[1:-1]))
    expand = dy.reshape(shape[0], *([1] * (len(shape) - 2)), shape[-1])
    return np.broadcast_to(expand / positions, shape).copy()


def flatten_forward(x: ArrayLike) -> Array:
    """(N, ...) -> (N, F) in row-major order: channels-last (H, W, C), not PyTorch's (C, H, W)."""
    x = _f64(x)
    return x.reshape(x.shape[0], -1)


def flatten_backward(x_shape: Sequence[int], dy: ArrayLike) -> Array:
    """dx of flatten_forward: dy reshaped back to x_shape."""
    return _f64(dy).reshape(tuple(int(s) for s in x_shape))


# ---------------------------------------------------------------------------------------------
# batch normalization (channels last: statistics over every axis but the last)


class BatchNormCache(NamedTuple):
    """What batchnorm2d_backward needs from the forward pass."""

    xhat: Array  # normalized input (x - mean) * inv_std
    gamma: Array
    inv_std: Array  # 1 / sqrt(var + eps) per channel
    batch_stats: bool  # True: mean and var came from this batch (training forward)


def _check_bn(x: Array, *params: ArrayLike | None) -> None:
    if x.ndim < 2:
        raise ValueError(f"batchnorm2d: input must be (N, ..., C), got {x.shape}")
    for p in params:
        if p is not None and np.shape(p) != (x.shape[-1],):
            raise ValueError(
                f"batchnorm2d: parameter of shape {np.shape(p)} does not match input {x.shape}"
            )


def batchnorm2d_forward_train(
    x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, running_mean: NDArray[np.floating] | None,
    running_var: NDArray[np.floating] | None, eps: float = 1e-5, momentum: float = 0.1,
) -> tuple[Array, BatchNormCache]:
    """Training forward with batch statistics (biased variance), as PyTorch's BatchNorm2d.

    Updates running_mean and running_var in place (skipped where None):
    running = (1 - momentum) * running + momentum * batch value, with the unbiased variance;
    the variance is left alone when the batch has a single row (N*H*W == 1).
    """
    x, gamma, beta = _f64(x), _f64(gamma), _f64(beta)
    _check_bn(x, gamma, beta, running_mean, running_var)
    axes = tuple(range(x.ndim - 1))
    rows = x.size // x.shape[-1]
    mean = x.mean(axis=axes)
    var = ((x - mean) ** 2).mean(axis=axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * inv_std
    if running_mean is not None:
        running_mean[...] = (1 - momentum) * running_mean + momentum * mean
    if running_var is not None and rows > 1:
        running_var[...] = (1 - momentum) * running_var + momentum * var * rows / (rows - 1)
    return gamma * xhat + beta, BatchNormCache(xhat, gamma, inv_std, True)


def batchnorm2d_forward_eval(
    x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, running_mean: ArrayLike,
    running_var: ArrayLike, eps: float = 1e-5,
) -> Array:
    """Inference forward with the running statistics."""
    x = _f64(x)
    _check_bn(x, gamma, beta, running_mean, running_var)
    inv_std = 1.0 / np.sqrt(_f64(running_var) + eps)
    return _f64(gamma) * (x - _f64(running_mean)) * inv_std + _f64(beta)


def batchnorm2d_eval_cache(
    x: ArrayLike, gamma: ArrayLike, running_mean: ArrayLike, running_var: ArrayLike,
    eps: float = 1e-5,
) -> BatchNormCache:
    """Cache for backpropagating through batchnorm2d_forward_eval (frozen statistics).

    The eval output is gamma * cache.xhat + beta.
    """
    x = _f64(x)
    _check_bn(x, gamma, running_mean, running_var)
    inv_std = 1.0 / np.sqrt(_f64(running_var) + eps)
    return BatchNormCache((x - _f64(running_mean)) * inv_std, _f64(gamma), inv_std, False)


def batchnorm2d_backward(dy: ArrayLike, cache: BatchNormCache) -> tuple[Array, Array, Array]:
    """(dx, dgamma, dbeta) of the forward that produced cache."""
    dy = _f64(dy)
    xhat, gamma, inv_std, batch_stats = cache
    axes = tuple(range(dy.ndim - 1))
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    if not batch_stats:
        return dy * (gamma * inv_std), dgamma, dbeta
    # Batch statistics depend on x too: the standard closed form (Ioffe & Szegedy 2015, sec. 3).
    rows = dy.size // dy.shape[-1]
    dx = (gamma * inv_std / rows) * (rows * dy - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta


def batchnorm_fold(
    w: ArrayLike, b: ArrayLike | None, gamma: ArrayLike, beta: ArrayLike,
    running_mean: ArrayLike, running_var: ArrayLike, eps: float = 1e-5,
) -> tuple[Array, Array]:
    """(w2, b2) of a conv/linear (output channels first in w) with eval batch norm folded in.

    bn(layer(x)) == layer2(x): w2 = w * s per output channel and b2 = (b - mean) * s + beta,
    with s = gamma / sqrt(running_var + eps). b may be None (no bias).
    """
    w = _f64(w)
    scale = _f64(gamma) / np.sqrt(_f64(running_var) + eps)
    if scale.shape != (w.shape[0],):
        raise ValueError(f"batchnorm_fold: {scale.shape[0]} channels but weight {w.shape}")
    bias = np.zeros(w.shape[0]) if b is None else _f64(b)
    w2 = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    return w2, (bias - _f64(running_mean)) * scale + _f64(beta)


# ---------------------------------------------------------------------------------------------
# losses: each returns (mean loss, gradient of that mean with respect to its first argument)


def cross_entropy(logits: ArrayLike, labels: ArrayLike) -> tuple[float, Array]:
    """Softmax cross-entropy of logits (N, C) and integer labels (N,) in [0, C)."""
    logits = _f64(logits)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be (N, C), got {logits.shape}")
    n, classes = logits.shape
    if n == 0 or classes == 0:
        raise ValueError(f"cross_entropy: empty logits {logits.shape}")
    lab = np.asarray(labels)
    if lab.ndim == 0:
        lab = lab.reshape(1)
    if lab.dtype == np.bool_ or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"cross_entropy: labels must be integers, got dtype {lab.dtype}")
    if lab.shape != (n,):
        raise ValueError(f"cross_entropy: labels {lab.shape} do not match logits {logits.shape}")
    if lab.min() < 0 or lab.max() >= classes:
        raise ValueError(
            f"cross_entropy: labels must be in [0, {classes}), got {lab.min()}..{lab.max()}"
        )
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, lab]))
    grad = e / total
    grad[rows, lab] -= 1.0
    return loss, grad / n


def mse(pred: ArrayLike, target: ArrayLike) -> tuple[float, Array]:
    """Mean squared error over all elements; gradient 2 * (pred - target) / numel."""
    pred, target = _f64(pred), _f64(target)
    if pred.shape != target.shape:
        raise ValueError(f"mse: pred {pred.shape} and target {target.shape} differ")
    if pred.size == 0:
        raise ValueError("mse: empty input")
    diff = pred - target
    return float(np.mean(diff * diff)), 2.0 * diff / diff.size


# ---------------------------------------------------------------------------------------------
# optimizers: PyTorch's update rules, applied in place to one parameter array


def _check_state(name: str, w: np.ndarray, g: Array, **state: np.ndarray | None) -> None:
    if not isinstance(w, np.ndarray) or not np.issubdtype(w.dtype, np.floating):
        raise TypeError(f"{name}: w must be a float numpy array (updated in place)")
    if g.shape != w.shape:
        raise ValueError(f"{name}: gradient {g.shape} does not match w {w.shape}")
    for key, arr in state.items():
        if arr is not None and (not isinstance(arr, np.ndarray) or arr.shape != w.shape):
            raise ValueError(f"{name}: {key} must be an array of w's shape {w.shape}")


def sgd_step(
    w: NDArray[np.floating], g: ArrayLike, v: NDArray[np.floating] | None, lr: float,
    momentum: float = 0.0, weight_decay: float = 0.0,
) -> tuple[NDArray[np.floating], NDArray[np.floating] | None]:
    """torch.optim.SGD (no dampening, no Nesterov); w and v are updated in place and returned.

    g' = g + weight_decay * w; with momentum v = momentum * v + g' (v starts at zero, so the
    first v is g' as in PyTorch) and w -= lr * v; without, w -= lr * g' and v may be None.
    """
    grad = _f64(g)
    _check_state("sgd_step", w, grad, v=v)
    if weight_decay:
        grad = grad + weight_decay * w
    if momentum:
        if v is None:
            raise ValueError("sgd_step: momentum needs a velocity array v")
        v[...] = momentum * v + grad
        w -= lr * v
    else:
        w -= lr * grad
    return w, v


def adam_step(
    w: NDArray[np.floating], g: ArrayLike, m: NDArray[np.floating], v: NDArray[np.floating],
    t: int, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> tuple[NDArray[np.floating], NDArray[np.floating], NDArray[np.floating]]:
    """torch.optim.Adam (L2 weight decay, not AdamW) for step t >= 1; w, m, v updated in place.

    Kingma & Ba 2015, Algorithm 1, in PyTorch's arrangement:
    w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
    """
    grad = _f64(g)
    _check_state("adam_step", w, grad, m=m, v=v)
    if t < 1:
        raise ValueError(f"adam_step: step t counts from 1, got {t}")
    if weight_decay:
        grad = grad + weight_decay * w
    m[...] = beta1 * m + (1 - beta1) * grad
    v[...] = beta2 * v + (1 - beta2) * grad * grad
    bias1 = 1 - beta1**t
    bias2 = 1 - beta2**t
    w -= (lr / bias1) * m / (np.sqrt(v) / np.sqrt(bias2) + eps)
    return w, m, v
