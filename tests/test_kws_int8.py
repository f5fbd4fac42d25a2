"""Device-side post-training quantization (mcutrain.quantize, frozen into the firmware) and
an int8 keyword-spotting fine-tuning smoke run of the demo's full-size DS-CNN on a 256 KB
board."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mcutrain.adapt_demo import TOPK_UPDATE
from mcutrain.demo_steps import script_with
from mcutrain.formats.mtd import write_dataset
from mcutrain.reference.quantized import dequantize_weights, quantize_weights

PRELUDE = """
import mcutrain as mt
from mcutrain.quantize import quantize_weights
"""

MODEL = """
import binascii, json
mt.seed(3)
model = mt.Sequential(
    mt.Conv2d(1, 8, (4, 3), stride=2, padding=1), mt.ReLU(),
    mt.Conv2d(8, 8, 3, padding=1, groups=8), mt.ReLU(), mt.Conv2d(8, 8, 1), mt.ReLU(),
    mt.AvgPool2d((2, 1)), mt.Flatten(), mt.Linear(8 * 3 * 3, 4))
mv = memoryview(model[4].weight)
for k in range(8):  # an all-zero output channel: scale 1
    mv[k] = 0.0
def sample(s):
    return mt.Tensor([(((i + s) * 7 + s * s) % 13) / 6.0 - 1 for i in range(12 * 6)], shape=(1, 12, 6, 1))
"""


def hexbits(expr: str) -> str:
    return f"binascii.hexlify(bytes(memoryview({expr}))).decode()"


def run_json(target, code: str, timeout: float = 120) -> dict:
    return json.loads(target.exec(PRELUDE + code, timeout=timeout).strip().splitlines()[-1])


def test_quantize_small_dscnn_weights_match_numpy_rule_and_predictions_agree(target):
    code = MODEL + f"""
xs = [sample(s) for s in range(16)]
q = mt.quantize(model, xs)
# each float layer with weights and its int8 counterpart, in order (where the Convert
# layers go depends on whether this firmware's AvgPool2d takes int8)
pairs = list(zip([i for i, l in enumerate(model) if l.weight is not None],
                 [j for j, l in enumerate(q) if getattr(l, 'weight', None) is not None]))
out = {{"kinds": [type(l).__name__ + ":" + str(getattr(l, "dtype", "")) for l in q],
        "ranges": [getattr(l, "quant_range", None) for l in q], "agree": 0,
        "w": [{hexbits("model[i].weight")} for i, j in pairs],
        "q": [{hexbits("q[j].weight")} for i, j in pairs],
        "s": [{hexbits("q[j].weight_scale")} for i, j in pairs]}}
for x in xs:
    a = model.predict(x).tolist()[0]
    b = q.predict(x).tolist()[0]
    out["agree"] += a.index(max(a)) == b.index(max(b))
d = mt.dequantize(q)
out["d"] = [{hexbits("d[i].weight")} for i in (0, 2, 4, 8)]
out["dkinds"] = [type(l).__name__ for l in d]
lo = min(min(memoryview(x)) for x in xs)
hi = max(max(memoryview(x)) for x in xs)
out["input_range"] = [lo, hi]
print(json.dumps(out))
"""
    r = run_json(target, code)
    assert r["kinds"][0] == "Convert:int8" and r["kinds"][-1] == "Convert:float32"
    assert [k for k in r["kinds"] if k.endswith("int8") and not k.startswith("Convert")] == [
        "Conv2d:int8", "Conv2d:int8", "Conv2d:int8", "Linear:int8"]
    # This firmware's AvgPool2d takes int8: the whole network is int8, one Convert back at the end.
    assert r["kinds"].count("Convert:float32") == 1 and "AvgPool2d:None" in r["kinds"]
    for w_hex, q_hex, s_hex in zip(r["w"], r["q"], r["s"]):
        w = np.frombuffer(bytes.fromhex(w_hex), np.float32)
        q = np.frombuffer(bytes.fromhex(q_hex), np.int8)
        s = np.frombuffer(bytes.fromhex(s_hex), np.float32)
        want_q, want_s = quantize_weights(w.reshape(len(s), -1))
        assert np.array_equal(q, want_q.ravel())  # the same rule, bit for bit
        assert np.array_equal(s.view(np.uint32), want_s.view(np.uint32))
        d = dequantize_weights(want_q, want_s).ravel()
        assert np.array_equal(np.frombuffer(bytes.fromhex(r["d"][r["w"].index(w_hex)]), np.float32), d)
    assert r["s"][2][:8] == np.float32(1.0).tobytes().hex()  # the all-zero channel
    assert r["dkinds"] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d", "ReLU", "AvgPool2d", "Flatten",
                           "Linear"]
    # Every int8 layer and input Convert is calibrated; the input's range is the samples'
    # (30-bit floats on the boards: a relative 1e-5).
    ranges = [rg for k, rg in zip(r["kinds"], r["ranges"]) if k.endswith("int8") and not k.startswith("AvgPool")]
    assert all(rg is not None and rg[0] <= rg[1] for rg in ranges)
    assert r["ranges"][0] == pytest.approx(r["input_range"], rel=1e-5)
    # int8 weights and activations move logits by a few percent: the top class rarely changes.
    assert r["agree"] >= 14


@pytest.mark.parametrize("case, error", [
    ("mt.quantize([model[0]], xs)", "TypeError: quantize: need a Sequential"),
    ("mt.quantize(model, [])", "ValueError: quantize: empty calibration set"),
    ("mt.quantize(model, [mt.zeros((1, 7, 6, 1))])", "ValueError: quantize: calibration samples of shape"),
    ("mt.quantize(model, [xs[0], mt.zeros((1, 6, 12, 1))])", "ValueError: quantize: calibration sample 1"),
    ("mt.quantize(mt.quantize(model, xs), xs)", "ValueError: quantize: layer 0 (Convert) is not float32"),
    ("mt.dequantize(5)", "TypeError: dequantize: need a Sequential"),
])
def test_quantize_bad_input_raises_clear_error_on_unix(target_pool, case, error):
    unix = target_pool.get("unix")
    code = MODEL + f"""
xs = [sample(s) for s in range(2)]
try:
    {case}
    print("no error")
except Exception as e:
    print(type(e).__name__ + ": " + str(e))
"""
    assert unix.exec(PRELUDE + code).strip().splitlines()[-1].startswith(error)


def test_int8_kws_fine_tuning_smoke_run_on_qemu_m4f(target_pool, tmp_path):
    board = target_pool.get("qemu-m4f")
    rng = np.random.default_rng(0)
    names = ["c%d" % i for i in range(12)]
    for split, n in (("train", 24), ("test", 12)):
        y = np.arange(n) % 12
        x = rng.normal(0, 1, (n, 49, 10, 1)).astype(np.float32) + y[:, None, None, None] * 0.1
        write_dataset(tmp_path / f"kws_{split}.mtd", x, y, dtype="int8", class_names=names)
    source = script_with({"DTYPE": '"int8"', "EPOCHS": "1", "LR": "0.001", "MOMENTUM": "0.0", "SAVE": "None",
                          "CALIBRATION": "8"})  # the demo's width: the float model and its int8 copy meet in RAM
    (tmp_path / "kws_int8.py").write_text(PRELUDE + source)
    out = board.mpremote("mount", str(tmp_path), "run", str(tmp_path / "kws_int8.py"), timeout=80)
    done = [json.loads(line[4:]) for line in out.splitlines() if line.startswith("@mt ")][-1]
    assert done["kind"] == "done" and done["dtype"] == "int8" and done["epochs"] == 1
    assert 0.0 <= done["test_accuracy"] <= 1.0 and done["step_instructions"] > 0
    assert done["peak_ram_bytes"] < 256 * 1024


def test_int8_kws_adaptation_mode_on_unix_scores_before_and_after(target_pool, tmp_path):
    """train_kws.py as make demo runs it (TRAIN on enrollment clips, EVAL_BEFORE, top-k on the
    convolutions of the quantized model) on the unix port; the boards run it in test_demo.py."""
    unix = target_pool.get("unix")
    rng = np.random.default_rng(1)
    names = ["c%d" % i for i in range(12)]
    for split, n in (("train", 24), ("test", 12), ("enroll", 12)):
        y = np.arange(n) % 12
        x = rng.normal(0, 1, (n, 49, 10, 1)).astype(np.float32) + y[:, None, None, None] * 0.1
        write_dataset(tmp_path / f"kws_{split}.mtd", x, y, dtype="int8", class_names=names)
    source = script_with({"DTYPE": '"int8"', "EPOCHS": "2", "LR": "0.002", "MOMENTUM": "0.0", "SAVE": "None",
                          "CALIBRATION": "8", "DATA": repr(str(tmp_path)), "TRAIN": '"kws_enroll.mtd"',
                          "EVAL_BEFORE": "True", "UPDATE": TOPK_UPDATE})  # fmt: skip
    out = unix.exec(PRELUDE + source, timeout=120)
    done = [json.loads(line[4:]) for line in out.splitlines() if line.startswith("@mt ")][-1]
    assert done["kind"] == "done" and done["train_file"] == "kws_enroll.mtd" and done["train_samples"] == 12
    assert 0 <= done["accuracy_before"] <= 1 and done["accuracy_after"] == done["test_accuracy"]
    assert 0 < done["backward_mac_fraction"] < 1 and "TopK" in done["update"]


def test_quantize_weights_ties_and_extremes_match_numpy_rule(target):
    # Values at and next to the half-way points between int8 steps, where rounding w / scale
    # in double precision (or in the boards' 30-bit floats) would give a different q.
    rng = np.random.default_rng(1)
    rows = []
    for top in (1.0, 3e-3, 0.7071, 1e-30, 2e20):
        s = np.float32(top) / np.float32(127)
        halves = (np.arange(-127, 127) + np.float32(0.5)).astype(np.float32) * s
        near = np.concatenate([halves, np.nextafter(halves, np.float32(np.inf)),
                               np.nextafter(halves, np.float32(-np.inf))])
        rows.append(np.concatenate([[np.float32(top)], near, rng.normal(0, top / 3, 37)]).astype(np.float32))
    w = np.stack(rows).astype(np.float32)
    code = f"""
import binascii
w = mt.frombuffer(bytearray(binascii.unhexlify({w.tobytes().hex()!r})), {w.shape}, mt.float32)
q = mt.zeros({w.shape}, mt.int8)
s = mt.zeros(({len(w)},))
quantize_weights(w, q, s)
print({hexbits("q")} + " " + {hexbits("s")})
"""
    q_hex, s_hex = target.exec(PRELUDE + code, timeout=120).strip().splitlines()[-1].split()
    want_q, want_s = quantize_weights(w)
    assert np.array_equal(np.frombuffer(bytes.fromhex(q_hex), np.int8), want_q.ravel())
    assert np.array_equal(np.frombuffer(bytes.fromhex(s_hex), np.uint32), want_s.view(np.uint32))
