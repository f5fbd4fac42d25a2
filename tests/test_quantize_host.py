"""Host side of int8 models: .mtm with Convert, per-layer dtypes, weight_scale and
quant_range; post-training quantization with calibration data; dequantization; the CLI."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from mcutrain.cli import main
from mcutrain.formats import (
    FormatError,
    ModelSpec,
    SpecError,
    layer,
    load_reference_model,
    model_bytes,
    read_model,
    sequential,
    write_dataset,
    write_model,
)
from mcutrain.quantize import QuantizeError, dequantize_model, load_calibration, quantize_model

RNG = np.random.default_rng(5)


def float_spec(bn: bool = False, avgpool: bool = False) -> ModelSpec:
    layers = [layer("Conv2d", in_channels=2, out_channels=4, kernel_size=3, padding=1)]
    if bn:
        layers.append(layer("BatchNorm2d", num_features=4))
    layers.append(layer("ReLU"))
    layers.append(layer("AvgPool2d" if avgpool else "MaxPool2d", kernel_size=2))
    layers += [layer("Flatten"), layer("Linear", in_features=16, out_features=3)]
    graph = sequential(*layers)
    from mcutrain.formats import expected_tensors

    tensors = {n: RNG.standard_normal(s).astype(np.float32) for n, s in
               expected_tensors(graph).items()}  # fmt: skip
    for n in tensors:
        if n.endswith("running_var"):
            tensors[n] = np.abs(tensors[n]) + 0.5
    tensors["0.weight"][1] = 0.0  # an all-zero output channel gets scale 1
    return ModelSpec(graph, tensors, input_shape=(4, 4, 2))


def calib(n: int = 32) -> np.ndarray:
    return RNG.uniform(-1, 1, (n, 4, 4, 2)).astype(np.float32)


def int8_linear_spec(quant_range=(-1.5, 2.25)) -> ModelSpec:
    node = layer("Linear", dtype="int8", in_features=3, out_features=2)
    node["quant_range"] = quant_range
    conv = layer("Convert", dtype="int8")
    conv["quant_range"] = (0.0, 1.0)
    graph = sequential(conv, node, layer("Convert", dtype="float32"))
    return ModelSpec(graph, {"1.weight": np.array([[1, -2, 3], [127, 0, -127]], np.int8),
                             "1.bias": np.array([0.5, -0.5], np.float32),
                             "1.weight_scale": np.array([0.1, 0.02], np.float32)},
                     quant={"1.weight": (1.0, 0)})  # fmt: skip


def rewrite_graph(data: bytes, edit) -> bytes:
    """An .mtm with its graph JSON changed by edit(doc) and every CRC fixed up."""
    graph_size = struct.unpack_from("<I", data, 8)[0]
    data_offset, data_size = struct.unpack_from("<2I", data, 16)
    doc = json.loads(data[32:32 + graph_size])
    edit(doc)
    graph = json.dumps(doc).encode()
    new_offset = (32 + len(graph) + 15) // 16 * 16
    head = struct.pack("<4sHH5I", b"MTM\0", 1, 32, len(graph), zlib.crc32(graph), new_offset,
                       data_size, 0)  # fmt: skip
    out = head + struct.pack("<I", zlib.crc32(head)) + graph
    return out + bytes(new_offset - len(out)) + data[data_offset:]


def bad_graph_file(path: Path, quant_range) -> Path:
    """An int8 Linear model whose graph holds quant_range as given (no bits)."""
    def edit(doc):
        node = doc["model"]["layers"][1]
        node["quant_range"] = quant_range
        node.pop("quant_range_bits", None)

    path.write_bytes(rewrite_graph(model_bytes(int8_linear_spec()), edit))
    return path


def test_int8_model_round_trips_with_dtype_weight_scale_convert_and_quant_range(tmp_path):
    spec = int8_linear_spec((-1.5, 0.1))
    write_model(tmp_path / "q.mtm", spec)
    back = read_model(tmp_path / "q.mtm")
    assert back.graph == spec.graph
    assert back.graph["layers"][0] == {"type": "Convert", "config": {"dtype": "int8"},
                                       "quant_range": (0.0, 1.0)}  # fmt: skip
    assert back.graph["layers"][1]["dtype"] == "int8"
    # quant_range is float32 as on the device, kept bit-exactly
    assert back.graph["layers"][1]["quant_range"] == (-1.5, float(np.float32(0.1)))
    for name, t in spec.tensors.items():
        assert np.array_equal(back.tensors[name], t) and back.tensors[name].dtype == t.dtype


def test_reference_model_of_int8_layer_uses_scale_times_q():
    spec = int8_linear_spec()
    x = np.array([[0.1, 0.2, 0.3]])
    w = np.array([[1, -2, 3], [127, 0, -127]], np.float32) * np.array([[0.1], [0.02]], np.float32)
    want = x @ w.T.astype(np.float64) + [0.5, -0.5]
    from mcutrain.formats import build_reference_model

    np.testing.assert_allclose(build_reference_model(spec).predict(x), want, rtol=1e-12)


def test_old_file_without_new_keys_still_loads(tmp_path):
    spec = float_spec()
    data = model_bytes(spec)
    assert b"quant_range" not in data and b"weight_scale" not in data
    assert read_model_bytes(tmp_path, data).graph == spec.graph


def read_model_bytes(tmp_path: Path, data: bytes) -> ModelSpec:
    (tmp_path / "m.mtm").write_bytes(data)
    return read_model(tmp_path / "m.mtm")


@pytest.mark.parametrize("bad", [[1.0], [2.0, 1.0], [0.0, float("inf")], [0.0, float("nan")],
                                 ["a", 1.0], [0.0, 1e39], "x"])  # fmt: skip
def test_reader_rejects_malformed_quant_range(tmp_path, bad):
    # inf and nan are written as Infinity/NaN, which is not JSON: refused before the layer.
    with pytest.raises(FormatError, match="quant_range|not valid JSON"):
        read_model(bad_graph_file(tmp_path / "bad.mtm", bad))


def test_reader_rejects_quant_range_bits_that_disagree_and_quant_range_on_float_layer(tmp_path):
    def bits(doc):
        doc["model"]["layers"][1]["quant_range_bits"] = [0, 0]

    with pytest.raises(FormatError, match="quant_range_bits"):
        read_model_bytes(tmp_path, rewrite_graph(model_bytes(int8_linear_spec()), bits))

    def on_float(doc):
        doc["model"]["layers"][2]["quant_range"] = [0.0, 1.0]  # Convert to float32

    with pytest.raises(FormatError, match="quant_range is only for"):
        read_model_bytes(tmp_path, rewrite_graph(model_bytes(int8_linear_spec()), on_float))


def test_int8_layer_needs_int8_weight_and_weight_scale():
    spec = int8_linear_spec()
    del spec.tensors["1.weight_scale"]
    with pytest.raises(SpecError, match="missing \\['1.weight_scale'\\]"):
        spec.validate()
    spec = int8_linear_spec()
    spec.tensors["1.weight"] = spec.tensors["1.weight"].astype(np.float32)
    with pytest.raises(SpecError, match="int8 weight"):
        spec.validate()


def test_mixed_and_float16_layers_are_stored_like_int8_and_float32(tmp_path):
    spec = int8_linear_spec()
    spec.graph["layers"][1]["dtype"] = "mixed"
    write_model(tmp_path / "m.mtm", spec)
    assert read_model(tmp_path / "m.mtm").graph["layers"][1]["dtype"] == "mixed"
    half = ModelSpec(sequential(layer("Linear", dtype="float16", in_features=2, out_features=2)),
                     {"0.weight": np.eye(2, dtype=np.float16),
                      "0.bias": np.zeros(2, np.float16)})  # fmt: skip
    write_model(tmp_path / "h.mtm", half)
    back = read_model(tmp_path / "h.mtm")
    assert back.graph["layers"][0]["dtype"] == "float16"
    assert back.tensors["0.weight"].dtype == np.float16


def test_quantize_weights_per_channel_match_numpy(tmp_path):
    spec = float_spec()
    q = quantize_model(spec, calib(), out=tmp_path / "q.mtm")
    names = [n["type"] for n in q.graph["layers"]]
    assert names == ["Convert", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "Convert"]
    for old, new in (("0.", "1."), ("4.", "5.")):
        w = spec.tensors[old + "weight"]
        rows = w.reshape(len(w), -1)
        m = np.abs(rows).max(axis=1)
        scale = np.where(m > 0, m / np.float32(127), np.float32(1)).astype(np.float32)
        want = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
        assert np.array_equal(q.tensors[new + "weight_scale"], scale)
        assert np.array_equal(q.tensors[new + "weight"].reshape(len(w), -1), want)
        assert np.array_equal(q.tensors[new + "bias"], spec.tensors[old + "bias"])
    assert q.tensors["1.weight_scale"][1] == 1.0  # the all-zero channel
    assert read_model(tmp_path / "q.mtm").graph == q.graph


def test_quant_ranges_are_the_float_outputs_min_max_over_calibration():
    spec, x = float_spec(), calib()
    q = quantize_model(spec, x)
    from mcutrain.formats import build_reference_model

    ref = build_reference_model(spec)
    h0 = ref[0].forward(x.astype(np.float64), training=False)
    h = h0
    for i in range(1, 5):
        h = ref[i].forward(h, training=False)
    for i, a in ((0, x), (1, h0), (5, h)):
        lo, hi = q.graph["layers"][i]["quant_range"]
        # float32, widened by < 4 ulps so that the boards' 30-bit floats hold it exactly
        assert lo <= a.min() and hi >= a.max()
        np.testing.assert_allclose((lo, hi), (a.min(), a.max()), rtol=4 * 2**-23, atol=1e-37)
        assert all(int(np.float32(v).view(np.uint32)) & 3 == 0 for v in (lo, hi))


def test_quantize_dequantize_round_trip_keeps_predictions(tmp_path):
    spec, x = float_spec(), calib(64)
    write_model(tmp_path / "f.mtm", spec)
    quantize_model(tmp_path / "f.mtm", x, out=tmp_path / "q.mtm")
    dq = dequantize_model(tmp_path / "q.mtm", out=tmp_path / "dq.mtm")
    assert dq.graph == spec.graph
    f = load_reference_model(tmp_path / "f.mtm").predict(x.astype(np.float64))
    d = load_reference_model(tmp_path / "dq.mtm").predict(x.astype(np.float64))
    # weights move by at most half a step, scale/2 = max|w|/254 per channel: outputs by ~1%.
    assert np.abs(f - d).max() < 0.05 * np.abs(f).max()
    again = quantize_model(dq, x)
    q = read_model(tmp_path / "q.mtm")
    for name, t in q.tensors.items():  # requantizing scale * q gives q back
        assert np.array_equal(again.tensors[name], t), name


def test_batchnorm_is_folded_and_avgpool_stays_float_between_converts():
    q = quantize_model(float_spec(bn=True, avgpool=True), calib())
    assert [(n["type"], n.get("dtype", n["config"].get("dtype"))) for n in q.graph["layers"]] == [
        ("Convert", "int8"), ("Conv2d", "int8"), ("ReLU", None), ("Convert", "float32"),
        ("AvgPool2d", None), ("Flatten", None), ("Convert", "int8"), ("Linear", "int8"),
        ("Convert", "float32")]  # fmt: skip


@pytest.mark.parametrize("case, match", [
    ("dtype", "dtype must be one of"), ("shape", "calibration samples have shape"),
    ("empty", "empty calibration"), ("nan", "NaN"), ("int8_model", "not float32"),
])  # fmt: skip
def test_quantize_rejects_bad_input(case, match):
    spec, x, dtype = float_spec(), calib(), "int8"
    if case == "dtype":
        dtype = "int4"
    elif case == "shape":
        x = RNG.uniform(size=(4, 5, 5, 2))
    elif case == "empty":
        x = np.zeros((0, 4, 4, 2))
    elif case == "nan":
        x[3, 1, 1, 0] = np.nan
    elif case == "int8_model":
        spec = quantize_model(spec, x)
    with pytest.raises(QuantizeError, match=match):
        quantize_model(spec, x, dtype=dtype)


def test_quantize_rejects_corrupt_file(tmp_path):
    data = bytearray(model_bytes(float_spec()))
    data[-1] ^= 0xFF
    (tmp_path / "c.mtm").write_bytes(data)
    with pytest.raises(FormatError, match="CRC"):
        quantize_model(tmp_path / "c.mtm", calib())


def test_cli_quantize_dequantize_and_info(tmp_path, capsys):
    write_model(tmp_path / "f.mtm", float_spec())
    x = calib(300)
    np.savez(tmp_path / "cal.npz", x=x)
    assert main(["quantize", str(tmp_path / "f.mtm"), "--calibration", str(tmp_path / "cal.npz"),
                 "--samples", "10", "-o", str(tmp_path / "q.mtm")]) == 0  # fmt: skip
    q = read_model(tmp_path / "q.mtm")
    assert q.meta["quantized"] == {"dtype": "int8", "calibration_samples": 10}
    write_dataset(tmp_path / "cal.mtd", x, np.zeros(len(x), np.int64))
    assert main(["quantize", str(tmp_path / "f.mtm"), "--calibration", str(tmp_path / "cal.mtd"),
                 "--dtype", "int8", "-o", str(tmp_path / "q2.mtm")]) == 0  # fmt: skip
    assert read_model(tmp_path / "q2.mtm").meta["quantized"]["calibration_samples"] == 256
    assert main(["dequantize", str(tmp_path / "q.mtm"), "-o", str(tmp_path / "d.mtm")]) == 0
    assert main(["info", str(tmp_path / "q.mtm")]) == 0
    out = capsys.readouterr().out
    assert "int8" in out and "Convert" in out and "quant_range" in out
    np.savez(tmp_path / "bad.npz", x=np.full((3, 4, 4, 2), np.nan))
    assert main(["quantize", str(tmp_path / "f.mtm"), "--calibration", str(tmp_path / "bad.npz"),
                 "-o", str(tmp_path / "x.mtm")]) == 1  # fmt: skip
    assert "NaN" in capsys.readouterr().err


@pytest.mark.parametrize("content, match", [
    (b"garbage", "not a readable .npz"), (b"", "not a readable .npz"),
    ("strings", "non-empty numeric array"), ("empty", "non-empty numeric array"), ("no_x", "has no array x"),
])  # fmt: skip
def test_calibration_file_errors_name_the_file(tmp_path, content, match):
    path = tmp_path / "cal.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "strings":
        np.savez(path, x=np.array(["a", "b"]))
    elif content == "empty":
        np.savez(path, x=np.zeros((0, 4, 4, 2)))
    else:
        np.savez(path, y=np.zeros(3))
    with pytest.raises(QuantizeError, match=match) as e:
        load_calibration(path)
    assert "cal.npz" in str(e.value)
