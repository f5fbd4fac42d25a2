"""A host-quantized int8 model runs on every target like its float original, and its
calibrated quant_range values survive mt.load and mt.save exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mcutrain.digits import split_digits
from mcutrain.formats import load_reference_model, read_model, read_model_graph
from mcutrain.pretrain import pretrain
from mcutrain.quantize import quantize_model
from mcutrain.runner import run_on
from test_device_formats import device_path, fetch, put, remove

N_EVAL = 64  # test samples run on the device: enough for a 90% agreement check to mean something


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """The digits CNN trained on the host (float32) and its int8 version calibrated on 256
    training images; plus held-out test images."""
    d = tmp_path_factory.mktemp("quant")
    pretrain(d / "cnn.mtm", list(range(10)), epochs=5)
    x_train, _, x_test, _ = split_digits()
    quantize_model(d / "cnn.mtm", x_train[:256, ..., None] / 16.0, out=d / "cnn_int8.mtm")
    return d / "cnn.mtm", d / "cnn_int8.mtm", (x_test[:N_EVAL, ..., None] / 16.0).astype(
        np.float32)  # fmt: skip


def ranges_of(graph: dict) -> list:
    return [n.get("quant_range") for n in graph["model"]["layers"]]


def firmware_keeps_quant_range(target, tmp_path: Path) -> bool:
    """Whether the frozen model_io writes quant_range (a firmware built before it does not)."""
    dest = device_path(target, tmp_path, "probe.mtm")
    run_on(target, f"""
import mcutrain as mt
m = mt.Sequential(mt.Convert(mt.int8))
m[0].quant_range = (-1.0, 2.0)
mt.save(m, {dest!r})
""")
    graph = read_model_graph(fetch(target, dest, tmp_path / "probe.mtm"))
    remove(target, dest)
    return graph["model"]["layers"][0].get("quant_range") is not None


def test_quantized_digits_cnn_agrees_with_float_model_on_device(target, digits_models, tmp_path):
    float_path, int8_path, x = digits_models
    (dev,) = put(target, int8_path)
    x_path = tmp_path / "x.bin"
    x_path.write_bytes(x.tobytes())
    (dev_x,) = put(target, x_path)
    out = run_on(target, f"""
import mcutrain as mt
m = mt.load({dev!r})
print([getattr(l, 'dtype', None) for l in m])
buf = bytearray(open({dev_x!r}, 'rb').read())
x = mt.frombuffer(buf, ({N_EVAL}, 8, 8, 1))
y = m.predict(x)
print(y.dtype, [r.index(max(r)) for r in y.tolist()])
""", timeout=300)  # fmt: skip
    remove(target, dev, dev_x)
    dtypes_line, pred_line = out.strip().splitlines()[-2:]
    assert "'int8'" in dtypes_line
    assert pred_line.startswith("float32 ")
    device_pred = np.array(json.loads(pred_line.split(" ", 1)[1]))
    float_pred = load_reference_model(float_path).predict(x.astype(np.float64)).argmax(axis=1)
    agreement = float((device_pred == float_pred).mean())
    # int8 activations and weights move a few logits by a step; argmax changes only on close calls.
    assert agreement >= 0.9, agreement


def test_load_restores_calibrated_quant_range_exactly(target, digits_models, tmp_path):
    _, int8_path, _ = digits_models
    if not firmware_keeps_quant_range(target, tmp_path):
        pytest.skip(f"{target.name} firmware's model_io predates quant_range (rebuild it)")
    want = ranges_of(read_model_graph(int8_path))
    (dev,) = put(target, int8_path)
    saved = device_path(target, tmp_path, "resaved.mtm")
    out = run_on(target, f"""
import struct
import mcutrain as mt
m = mt.load({dev!r})
print([None if getattr(l, 'quant_range', None) is None else
       list(struct.unpack('<2I', struct.pack('<2f', *l.quant_range))) for l in m])
mt.save(m, {saved!r})
""")  # fmt: skip
    got_bits = json.loads(out.strip().splitlines()[-1].replace("None", "null"))
    want_bits = [None if r is None else [int(np.float32(v).view(np.uint32)) for v in r]
                 for r in want]  # fmt: skip
    assert got_bits == want_bits
    back = read_model(fetch(target, saved, tmp_path / "resaved.mtm"))
    remove(target, dev, saved)
    # exact: the file keeps each range's float32 bit patterns
    assert [n.get("quant_range") for n in back.graph["layers"]] == [
        None if r is None else tuple(r) for r in want]  # fmt: skip


def test_save_load_of_trained_int8_model_keeps_quant_range(target, tmp_path):
    if not firmware_keeps_quant_range(target, tmp_path):
        pytest.skip(f"{target.name} firmware's model_io predates quant_range (rebuild it)")
    path = device_path(target, tmp_path, "trained_int8.mtm")
    out = run_on(target, f"""
import mcutrain as mt
mt.seed(1)
m = mt.Sequential(mt.Convert(mt.int8), mt.Linear(4, 8, dtype=mt.int8), mt.ReLU(),
                  mt.Linear(8, 3, dtype=mt.int8), mt.Convert(mt.float32))
opt = mt.SGD(m, lr=0.05)
x = mt.Tensor([[0.1, -0.5, 0.3, 0.9], [0.7, 0.2, -0.4, 0.0]])
for _ in range(5):
    m.train_step(x, [0, 2], mt.cross_entropy, opt)
before = [l.quant_range for l in (m[0], m[1], m[3])]
mt.save(m, {path!r})
m2 = mt.load({path!r})
after = [l.quant_range for l in (m2[0], m2[1], m2[3])]
print(before == after, None not in after)
""")  # fmt: skip
    remove(target, path)
    assert out.strip().splitlines()[-1] == "True True"


def test_load_rejects_quant_range_on_a_float_layer(target, tmp_path):
    if not firmware_keeps_quant_range(target, tmp_path):
        pytest.skip(f"{target.name} firmware's model_io predates quant_range (rebuild it)")
    from test_quantize_host import bad_graph_file

    bad = bad_graph_file(tmp_path / "bad.mtm", [2.0, 1.0])
    (dev,) = put(target, bad)
    out = run_on(target, f"""
import mcutrain as mt
try:
    mt.load({dev!r})
    print('loaded')
except ValueError as e:
    print('error', e)
""")  # fmt: skip
    remove(target, dev)
    assert "error" in out and "quant_range" in out, out
