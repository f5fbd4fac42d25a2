"""int8 training keeps going through the corners that used to stop it: a tracked error range
far below a new step's errors ("a quantization scale is out of range", at lr 0.01), and a
loss gradient smaller than the smallest int8 step ("the gradient is not finite", at lr
0.002 in the fourth epoch)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import ROOT
from device_arrays import DeviceScript, int8_layer_rng_state, tensor_expr
from mcutrain.digits import write_digits
from mcutrain.reference import quantized as Q

SCRIPT = ROOT / "examples" / "train_digits.py"


@pytest.mark.parametrize("lr, epochs", [(0.01, 1), (0.002, 4)])
def test_int8_cnn_trains_through_range_corners_on_unix(target_pool, tmp_path, lr, epochs):
    unix = target_pool.get("unix")
    write_digits(tmp_path)
    source = SCRIPT.read_text()
    for key, value in {"MODEL": '"cnn"', "DTYPE": '"int8"', "MOMENTUM": "0.0", "LR": str(lr), "EPOCHS": str(epochs),
                       "DATA": repr(str(tmp_path))}.items():
        source = re.sub(rf"^{key} = .*$", f"{key} = {value}", source, count=1, flags=re.M)
    script = tmp_path / "int8.py"
    script.write_text(source)
    result = json.loads(unix.run_file(script, timeout=300).strip().splitlines()[-1])
    assert result["dtype"] == "int8" and result["epochs"] == epochs


# ---- the update's paths on every target, bit for bit against the integer reference --------

# Values the emulated boards' 30-bit Python floats hold exactly (they reach the device as
# literals); arrays travel as bytes.
X_SCALE, X_ZP, DY_SCALE, LR, SEED = 0.046875, 5, 0.0078125, 0.0625, 1234


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_int8_update_takes_every_path_bit_for_bit(target, rounding):
    # Rows built for each path of the update (conv2d_s8.h): 0 zero error (skipped), 1 small
    # steps (kept scale, fixed point: SMMLSR or SMLAL on the Cortex-M4, int64 C elsewhere),
    # 2 a weight at 127 pushed up and 3 small weights (both rescaled by the float rule),
    # 4 over half a quantum per accumulator unit (float rule), 5 and 6 random.
    rng = np.random.default_rng(16)
    batch, inp, out = 2, 40, 7
    x = rng.integers(-128, 128, (batch, inp)).astype(np.int8)
    x[:, 0] = 127
    w = rng.integers(-100, 101, (out, inp)).astype(np.int8)
    w[1, 5], w[2, 0] = 100, 127
    w[3] = rng.integers(-30, 31, inp)
    ws = np.full(out, 0.01, np.float32)
    ws[4] = 1e-5
    ws[5:] = rng.uniform(0.002, 0.02, 2)
    b = rng.uniform(-0.5, 0.5, out).astype(np.float32)
    dy = rng.integers(-127, 128, (batch, out)).astype(np.int8)
    dy[:, 0] = 0
    dy[:, 1] = (1, -1)
    dy[:, 2] = (-20, -20)
    dy[:, 3] = (2, 1)

    script = DeviceScript()
    script.add(f"mt.seed({SEED})")
    script.add(f"layer = mt.Linear({inp}, {out}, dtype=mt.int8)")
    script.add(f"layer.weight.copy_from({tensor_expr(w, 'int8')})")
    script.add(f"layer.weight_scale.copy_from({tensor_expr(ws)})")
    script.add(f"layer.bias.copy_from({tensor_expr(b)})")
    script.add(f"x = mt.Tensor(bytes.fromhex('{x.tobytes().hex()}'), {x.shape}, dtype=mt.int8, "
               f"scale={X_SCALE}, zero_point={X_ZP})")
    script.add(f"dy = mt.Tensor(bytes.fromhex('{dy.tobytes().hex()}'), {dy.shape}, dtype=mt.int8, "
               f"scale={DY_SCALE})")
    script.add("layer.forward(x)")
    script.add(f"layer.backward(dy, mt.SGD(layer, lr={LR}, rounding={rounding!r}))")
    script.emit("w", "layer.weight", w.shape, "int8")
    script.emit("ws", "layer.weight_scale", ws.shape)
    script.emit("b", "layer.bias", b.shape)
    got = script.run(target)

    state = int8_layer_rng_state(SEED, out * inp + out)
    q = Q.S8Quant(X_SCALE, X_ZP, dy_scale=DY_SCALE)
    bias_q = Q.quantize_bias(b, X_SCALE, ws)
    ref = Q.linear_s8_update(x, dy, w, ws, bias_q, q, Q.S8Update(
        lr=LR, eps=1e-8, rescale_below=0.5, rng=Q.Rng(state) if rounding == "stochastic" else None))
    np.testing.assert_array_equal(got["w"], ref.w)
    np.testing.assert_array_equal(got["ws"], ref.w_scale)
    expected_b = (ref.bias.astype(np.float32) * (np.float32(X_SCALE) * ref.w_scale)).astype(np.float32)
    np.testing.assert_array_equal(got["b"], expected_b)
    # Each row took its path.
    np.testing.assert_array_equal(got["w"][0], w[0])
    assert got["ws"][1] == ws[1] and not np.array_equal(got["w"][1], w[1])
    assert got["ws"][2] > ws[2] and got["ws"][3] < ws[3] and got["ws"][4] > ws[4]


# (in, out, x zero point): Linear sizes off the four-weight rounds, zero points at both ends
RANK1_SIZES = [(1, 3, -128), (3, 6, 127), (17, 6, 0), (33, 7, -128), (256, 9, 127)]


def _rank1_case(rng, inp, out, zp):
    """A batch-1 Linear whose rows take each path of the update (conv2d_s8.h) by o % 6:
    0 zero error (skipped), 1 small steps (kept scale, fixed point), 2 a weight at 127 pushed
    outward (the kept scale overflows), 3 small weights (below rescale_below), 4 a large
    error on a small scale (dy * m leaves int32: the accumulator row is built), 5 random."""
    x = rng.integers(-128, 128, (1, inp)).astype(np.int8)
    x[0, 0] = 127 if zp <= 0 else -128  # far from the zero point: the largest |x - zp|
    xz = x[0].astype(np.int64) - zp
    w = rng.integers(-100, 101, (out, inp)).astype(np.int8)
    w[:, 0] = 90
    ws = rng.uniform(0.004, 0.02, out).astype(np.float32)
    dy = rng.integers(-3, 4, (1, out)).astype(np.int8)
    dy[dy == 0] = 1
    for o in range(out):
        kind = o % 6
        if kind == 0:
            dy[0, o] = 0
        elif kind == 2:
            dy[0, o] = 127 if o % 4 else -127
            w[o, 0] = -127 if dy[0, o] * xz[0] > 0 else 127  # the step moves it outward
        elif kind == 3:
            w[o] = rng.integers(-30, 31, inp)
        elif kind == 4:
            dy[0, o] = -127 if o % 4 else 127
            ws[o] = 0.0005
    b = rng.uniform(-0.5, 0.5, out).astype(np.float32)
    return x, w, ws, b, dy


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_int8_linear_batch1_update_matches_the_integer_reference(target, rounding):
    # At batch 1 the update takes each row's gradient dy[o] * (x - zp) straight from x - zp
    # (linear_s8.c; on the Cortex-M4 an SMLAL and an SMLABB range check a weight): rows
    # with no error draw nothing, others draw in order, with and without weight decay.
    rng = np.random.default_rng(61)
    script = DeviceScript()
    cases = []
    for i, (inp, out, zp) in enumerate(RANK1_SIZES):
        for wd in (0.0, 0.015625):
            name = f"r{i}wd{int(wd > 0)}"
            x, w, ws, b, dy = _rank1_case(rng, inp, out, zp)
            script.add(f"mt.seed({SEED})")
            script.add(f"layer = mt.Linear({inp}, {out}, dtype=mt.int8)")
            script.add(f"layer.weight.copy_from({tensor_expr(w, 'int8')})")
            script.add(f"layer.weight_scale.copy_from({tensor_expr(ws)})")
            script.add(f"layer.bias.copy_from({tensor_expr(b)})")
            script.add(f"layer.forward(mt.Tensor(bytes.fromhex('{x.tobytes().hex()}'), {x.shape}, "
                       f"dtype=mt.int8, scale={X_SCALE}, zero_point={zp}))")
            script.add(f"dy = mt.Tensor(bytes.fromhex('{dy.tobytes().hex()}'), {dy.shape}, dtype=mt.int8, "
                       f"scale={DY_SCALE})")
            script.add(f"layer.backward(dy, mt.SGD(layer, lr={LR}, weight_decay={wd}, standardize=False, "
                       f"rounding={rounding!r}))")
            script.emit(f"{name}.w", "layer.weight", w.shape, "int8")
            script.emit(f"{name}.ws", "layer.weight_scale", ws.shape)
            script.emit(f"{name}.b", "layer.bias", b.shape)
            cases.append((name, inp, out, zp, wd, x, w, ws, b, dy))
    got = script.run(target, timeout=300)
    for name, inp, out, zp, wd, x, w, ws, b, dy in cases:
        state = int8_layer_rng_state(SEED, out * inp + out)
        q = Q.S8Quant(X_SCALE, zp, dy_scale=DY_SCALE)
        bias_q = Q.quantize_bias(b, X_SCALE, ws)
        ref = Q.linear_s8_update(x, dy, w, ws, bias_q, q, Q.S8Update(
            lr=LR, weight_decay=wd, eps=1e-8, rescale_below=0.5,
            rng=Q.Rng(state) if rounding == "stochastic" else None))
        np.testing.assert_array_equal(got[f"{name}.w"], ref.w, err_msg=name)
        np.testing.assert_array_equal(got[f"{name}.ws"], ref.w_scale, err_msg=name)
        expected_b = (ref.bias.astype(np.float32) * (np.float32(X_SCALE) * ref.w_scale)).astype(np.float32)
        np.testing.assert_array_equal(got[f"{name}.b"], expected_b, err_msg=name)
        if wd == 0.0:  # rows 0-2 took their paths: skipped, kept scale, rescaled
            np.testing.assert_array_equal(got[f"{name}.w"][0], w[0], err_msg=name)
            assert got[f"{name}.ws"][0] == ws[0] and got[f"{name}.ws"][1] == ws[1], name
            assert got[f"{name}.ws"][2] != ws[2], name
