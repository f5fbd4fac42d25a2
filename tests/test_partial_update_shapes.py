"""float32 and float16 partial updates on random layer shapes (random_layers.py) against the
float64 reference, TopK and ChannelRatio at ratios from 5% to all. The selected rows take the
reference's SGD step, every other row keeps its bytes, and the input gradient is the one of
the selected channels' error alone (test_partial_update_device.py has the fixed cases).
float16 layers get float16 parameters and tensors; the reference runs on the same values, and
the tolerances are float16's (11-bit significands)."""

from __future__ import annotations

import numpy as np
import pytest
from device_arrays import DeviceScript, tensor_expr
from mcutrain.reference.partial import topk_count, topk_indices
from random_layers import RATIOS, case_count, random_layer

CONFIGS, BOARD_CONFIGS, PER_SCRIPT = 160, 8, 4
LR = 0.25


def random_dy(rng: np.random.Generator, shape) -> np.ndarray:
    """An output error whose channels' magnitude sums are far apart (a distinct scale per
    channel), so fp32 and float64 sums rank them the same."""
    out = shape[-1]
    scale = 1.0 + 0.5 * rng.permutation(out)
    return (rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 1.5, shape) * scale * 0.01).astype(np.float32)


# rtol, atol of the input gradient and the updated parameters
TOLERANCE = {"float32": (1e-4, 1e-6), "float16": (4e-3, 4e-5)}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("policy_kind", ["topk", "channels"])
def test_partial_update_on_random_shapes(target, policy_kind, dtype):
    count = case_count(target, CONFIGS, BOARD_CONFIGS)
    rng = np.random.default_rng((31 if policy_kind == "topk" else 32) + (10 if dtype == "float16" else 0))
    rtol, atol = TOLERANCE[dtype]
    np_dtype = np.float32 if dtype == "float32" else np.float16
    for first in range(0, count, PER_SCRIPT):
        script, cases = DeviceScript(), []
        for i in range(first, min(first + PER_SCRIPT, count)):
            shape = random_layer(rng)
            src, ref, x_shape, dy_shape = shape.device_src(dtype), shape.reference(), shape.x_shape, shape.dy_shape
            ratio = float(rng.choice(RATIOS))
            policy = f"mt.TopK({ratio})" if policy_kind == "topk" else f"mt.ChannelRatio({ratio})"
            state = {k: np.asarray(v, np_dtype) for k, v in ref.state_dict().items()}
            ref.load_state_dict({k: v.astype(np.float64) for k, v in state.items()})
            x = rng.standard_normal(x_shape).astype(np_dtype)
            dy = random_dy(rng, dy_shape).astype(np_dtype)
            script.add(f"layer = {src}")
            for key, value in state.items():
                script.add(f"layer.{key}.copy_from({tensor_expr(value, dtype)})")
            script.add(f"opt = mt.SGD(layer, lr={LR}, update={policy})")
            script.add(f"layer.forward({tensor_expr(x, dtype)})")
            script.add(f"dx = layer.backward({tensor_expr(dy, dtype)}, opt)")
            script.emit(f"c{i}.dx", "dx", x_shape, dtype)
            for key, value in state.items():
                script.emit(f"c{i}.{key}", f"layer.{key}", value.shape, dtype)
            cases.append((i, f"{src} x{x_shape} {policy}", ref, state, x, dy, ratio))
        got = script.run(target, timeout=300)
        for i, what, ref, state, x, dy, ratio in cases:
            n = dy.shape[-1]
            k = topk_count(n, ratio, ratio, 1.0)
            magnitude = np.abs(dy.astype(np.float32)).reshape(-1, n).sum(axis=0)
            idx = topk_indices(magnitude, k) if policy_kind == "topk" else np.arange(k)
            mask = np.zeros(n)
            mask[idx] = 1.0
            ref.forward(x.astype(np.float64))
            dx = ref.backward(dy.astype(np.float64) * mask)
            np.testing.assert_allclose(got[f"c{i}.dx"], dx, rtol=rtol, atol=atol, err_msg=what)
            rest = np.setdiff1d(np.arange(n), idx)
            for key, before in state.items():
                expected = before.astype(np.float64) - LR * ref.grads[key]
                assert got[f"c{i}.{key}"][rest].tobytes() == before[rest].tobytes(), f"{what}: {key} rest changed"
                np.testing.assert_allclose(got[f"c{i}.{key}"][idx], expected[idx], rtol=rtol, atol=atol,
                                           err_msg=f"{what}: {key}")
