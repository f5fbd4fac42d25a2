"""The numpy integer reference of one partial int8 backward (layer_s8_partial.c), shared by
the partial-update tests: what the device must give bit for bit."""

from __future__ import annotations

import dataclasses

import numpy as np
from device_arrays import int8_layer_rng_state, tensor_expr
from mcutrain.reference import quantized as Q
from mcutrain.reference.partial import s8_compact, s8_error_magnitudes, topk_count, topk_indices

# Values the emulated boards' 30-bit floats hold exactly (they reach the device as literals).
X_SCALE, X_ZP, DY_SCALE, LR, SEED = 0.046875, 5, 0.0078125, 0.0625, 4321
F32 = np.float32


def as_2d(x_shape, w_shape):
    """Conv1d runs the 2-D kernels with a height of one."""
    if len(x_shape) == 3:
        return (x_shape[0], 1, x_shape[1], x_shape[2]), (w_shape[0], 1, w_shape[1], w_shape[2])
    return tuple(x_shape), tuple(w_shape)


def partial_s8_reference(kind, x, w, ws, b, dy, geometry, k, rounding, state):
    """(selected, dx, w, w_scale, bias) of one partial int8 backward, from the kernels'
    reference run on the selected channels (the first pass: the input error's range is
    measured at scale 1, then dx is quantized to it)."""
    idx = np.arange(k) if kind == "channels" else topk_indices(s8_error_magnitudes(dy), k)
    w_s, ws_s = s8_compact(idx, w, ws)
    (dy_s,) = s8_compact(idx, dy, axis=-1)
    bias_q = Q.quantize_bias(b, X_SCALE, ws)
    bq_s = bias_q[idx]
    q = Q.S8Quant(X_SCALE, X_ZP, dy_scale=DY_SCALE)
    u = Q.S8Update(lr=LR, eps=1e-8, rescale_below=0.5, rng=Q.Rng(state) if rounding == "stochastic" else None)
    if geometry is None:
        grad_input = lambda qq: Q.linear_s8_grad_input(w_s, ws_s, dy_s, qq)  # noqa: E731
        update = lambda: Q.linear_s8_update(x, dy_s, w_s, ws_s, bq_s, q, u)  # noqa: E731
        dx_shape = x.shape
    else:
        depthwise = geometry["groups"] > 1
        x4 = x.reshape(as_2d(x.shape, w.shape)[0])
        w4 = w_s.reshape((k, 1) + w_s.shape[1:]) if w.ndim == 3 else w_s
        dy4 = dy_s.reshape(dy_s.shape[0], 1, *dy_s.shape[1:]) if w.ndim == 3 else dy_s
        xv = x4[..., idx] if depthwise else x4
        groups = k if depthwise else 1
        args = dict(stride=geometry["stride"], padding=geometry["padding"], groups=groups)
        grad_input = lambda qq: Q.conv2d_s8_grad_input(xv.shape, w4, ws_s, dy4, qq, **args)  # noqa: E731
        update = lambda: Q.conv2d_s8_update(xv, dy4, w4, ws_s, bq_s, q, u, **args)  # noqa: E731
        dx_shape = xv.shape
    _, absmax = grad_input(dataclasses.replace(q, dx_scale=1.0))
    tracked = F32(F32(absmax) / F32(DY_SCALE))
    dx_scale = Q.qparams_symmetric(float(F32(tracked * F32(DY_SCALE)))).scale
    dx_sel, _ = grad_input(dataclasses.replace(q, dx_scale=dx_scale))
    if geometry is not None and geometry["groups"] > 1:
        dx = np.zeros(x4.shape, np.int8)
        dx[..., idx] = dx_sel
    else:
        dx = dx_sel.reshape(dx_shape)
    r = update()
    w_new, ws_new, b_new = w.copy(), ws.copy(), b.copy()
    w_new[idx] = r.w.reshape(w_s.shape)
    ws_new[idx] = r.w_scale
    b_new[idx] = (r.bias.astype(np.float32) * (F32(X_SCALE) * r.w_scale)).astype(np.float32)
    return idx, dx.reshape(x.shape), w_new, ws_new, b_new


@dataclasses.dataclass
class PartialCase:
    """One int8 layer, its arrays and policy: what a device script sets up and what the
    reference expects of one backward(dy, opt)."""
    name: str
    layer_src: str
    policy_src: str
    kind: str              # "topk" or "channels" (policy_src "None": a full update, ratio 1)
    ratio: float
    geometry: dict | None  # conv stride/padding/groups, None for Linear
    x: np.ndarray
    w: np.ndarray
    ws: np.ndarray
    b: np.ndarray
    dy: np.ndarray

    @property
    def full(self) -> bool:
        """No policy: the layer updates in full and reports no selection."""
        return self.policy_src == "None"

    @property
    def k(self) -> int:
        return topk_count(self.w.shape[0], self.ratio, self.ratio, 1.0)

    def add_to(self, script, rounding: str) -> None:
        """The device lines: the layer with these parameters, one forward and backward."""
        n, x, dy = self.name, self.x, self.dy
        script.add(f"mt.seed({SEED})")
        script.add(f"layer = {self.layer_src}")
        script.add(f"layer.weight.copy_from({tensor_expr(self.w, 'int8')})")
        script.add(f"layer.weight_scale.copy_from({tensor_expr(self.ws)})")
        script.add(f"layer.bias.copy_from({tensor_expr(self.b)})")
        script.add(f"x = mt.Tensor(bytes.fromhex('{x.tobytes().hex()}'), {x.shape}, dtype=mt.int8, "
                   f"scale={X_SCALE}, zero_point={X_ZP})")
        script.add(f"dy = mt.Tensor(bytes.fromhex('{dy.tobytes().hex()}'), {dy.shape}, dtype=mt.int8, "
                   f"scale={DY_SCALE})")
        # A policy plans the layer again: the optimizer comes before the forward pass.
        script.add(f"opt = mt.SGD(layer, lr={LR}, rounding={rounding!r}, update={self.policy_src})")
        script.add("layer.forward(x)")
        script.add("dx = layer.backward(dy, opt)")
        script.emit(f"{n}.dx", "dx", x.shape, "int8")
        script.emit(f"{n}.w", "layer.weight", self.w.shape, "int8")
        script.emit(f"{n}.ws", "layer.weight_scale", self.ws.shape)
        script.emit(f"{n}.b", "layer.bias", self.b.shape)
        if not self.full:
            script.emit(f"{n}.sel", "mt.Tensor(layer.selected)", (self.k,))

    def check(self, got: dict, rounding: str) -> None:
        """The device's results against the reference, bit for bit; the rest untouched."""
        state = int8_layer_rng_state(SEED, self.w.size + self.w.shape[0])
        idx, dx, w_new, ws_new, b_new = partial_s8_reference(
            self.kind, self.x, self.w, self.ws, self.b, self.dy, self.geometry, self.k, rounding, state)
        n, what = self.name, f"{self.name}: {self.layer_src} x{self.x.shape} {self.policy_src}"
        if not self.full:
            assert list(got[f"{n}.sel"].astype(int)) == list(idx), what
        np.testing.assert_array_equal(got[f"{n}.dx"], dx, err_msg=what)
        np.testing.assert_array_equal(got[f"{n}.w"], w_new, err_msg=what)
        np.testing.assert_array_equal(got[f"{n}.ws"], ws_new, err_msg=what)
        np.testing.assert_array_equal(got[f"{n}.b"], b_new, err_msg=what)
        rest = np.setdiff1d(np.arange(len(self.ws)), idx)
        assert got[f"{n}.w"][rest].tobytes() == self.w[rest].tobytes(), what
        assert got[f"{n}.b"][rest].tobytes() == self.b[rest].tobytes(), what


def random_arrays(rng: np.random.Generator, x_shape, w_shape, dy_shape):
    """x, w, w_scale, bias, dy of a case: int8 values over the whole range, scales and biases
    as a trained layer's."""
    out = w_shape[0]
    return (rng.integers(-128, 128, x_shape).astype(np.int8), rng.integers(-110, 111, w_shape).astype(np.int8),
            rng.uniform(0.004, 0.02, out).astype(np.float32), rng.uniform(-0.5, 0.5, out).astype(np.float32),
            rng.integers(-20, 21, dy_shape).astype(np.int8))
