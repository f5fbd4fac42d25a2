"""Host side of the .mtd/.mtm formats: round trips, the documented byte layout, and clear errors
for truncated, foreign, newer and corrupted files; the dataset source loaders."""

from __future__ import annotations

import gzip
import json
import struct
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest
from mcutrain.formats import (
    FASHION_MNIST_DIR,
    DatasetReader,
    FormatError,
    ModelSpec,
    SpecError,
    expected_tensors,
    int8_params,
    layer,
    load_csv,
    load_idx,
    load_mnist_folder,
    load_npz,
    load_reference_model,
    load_source,
    load_wav_folder,
    mtd,
    read_dataset,
    read_model,
    residual,
    sequential,
    write_arrays,
    write_dataset,
    write_model,
)
from mcutrain.reference import functional as F

RNG = np.random.default_rng(7)


def images(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    return RNG.random((n, 5, 4, 2), dtype=np.float32), RNG.integers(0, 3, n)


@pytest.fixture
def dataset_file(tmp_path: Path) -> Path:
    x, y = images()
    path = tmp_path / "d.mtd"
    write_dataset(path, x, y, class_names=["a", "b", "c"], teacher_logits=RNG.normal(size=(40, 3)),
                  meta={"mfcc": {"n": 10}}, chunk_records=7)  # fmt: skip
    return path


def small_graph() -> dict:
    return sequential(
        layer("Conv2d", in_channels=2, out_channels=4, kernel_size=3, padding=1),
        layer("BatchNorm2d", num_features=4),
        layer("ReLU"),
        residual(sequential(layer("Conv2d", in_channels=4, out_channels=4, kernel_size=3,
                                  padding=1, groups=4, bias=False), layer("ReLU6"))),
        layer("MaxPool2d", kernel_size=2),
        layer("Flatten"),
        layer("Linear", in_features=2 * 2 * 4, out_features=3),
    )  # fmt: skip


def small_spec() -> ModelSpec:
    graph = small_graph()
    tensors = {k: RNG.normal(size=s).astype(np.float32) for k, s in expected_tensors(graph).items()}
    tensors["1.running_var"] = np.abs(tensors["1.running_var"]) + 0.5
    return ModelSpec(graph, tensors, input_shape=(5, 4, 2), meta={"note": "test"})


def corrupt(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------
# .mtd


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_dataset_round_trip_keeps_samples_labels_teacher_and_info(tmp_path, dtype):
    x, y = images()
    teacher = RNG.normal(size=(40, 3))
    path = tmp_path / "d.mtd"
    write_dataset(path, x, y, dtype=dtype, class_names=["a", "b", "c"], teacher_logits=teacher,
                  meta={"sample_rate": 16000})  # fmt: skip
    back = read_dataset(path)
    # float16 keeps 11 significant bits (relative error 2**-11); int8 rounds to half a step.
    tol = {"float32": 0.0, "float16": 2**-11, "int8": 0.5 / 255 + 1e-7}[dtype]
    assert back.x.dtype == np.dtype(dtype)
    assert np.abs(back.float_x() - x).max() <= tol
    assert back.y.tolist() == y.tolist()
    assert np.allclose(back.teacher_logits, teacher, rtol=1e-6, atol=1e-6)
    assert back.class_names == ["a", "b", "c"] and back.meta == {"sample_rate": 16000}


def test_dataset_float_targets_round_trip(tmp_path):
    x = RNG.random((9, 6), dtype=np.float32)
    y = RNG.normal(size=(9, 2)).astype(np.float32)
    write_dataset(tmp_path / "r.mtd", x, y)
    back = read_dataset(tmp_path / "r.mtd")
    assert np.array_equal(back.y, y) and np.array_equal(back.x, x)


def test_int8_params_map_unit_images_to_scale_1_over_255_and_zero_point_minus_128():
    scale, zero_point = int8_params(np.array([0.0, 0.3, 1.0]))
    assert scale == pytest.approx(1 / 255) and zero_point == -128


def test_dataset_reader_is_lazy_and_seeks_to_any_sample(dataset_file):
    x, y = read_dataset(dataset_file).x, read_dataset(dataset_file).y
    with DatasetReader(dataset_file) as r:
        assert len(r) == 40 and r.class_names == ["a", "b", "c"] and r.meta == {"mfcc": {"n": 10}}
        assert isinstance(r._records, np.memmap)
        for i in (0, 17, 39, -1):
            xi, yi = r[i]
            assert np.array_equal(xi, x[i]) and yi == y[i]
        with pytest.raises(IndexError):
            r[40]


def test_dataset_bytes_follow_docs_formats_md(dataset_file):
    """The header fields and record offsets are where docs/formats.md says."""
    data = dataset_file.read_bytes()
    x, y = images()
    assert data[:4] == b"MTD\0"
    version, header_size, count, record_size, chunk_records, data_offset, info_size = (
        struct.unpack_from("<HH5I", data, 4))  # fmt: skip
    assert (version, header_size, count, chunk_records) == (1, 80, 40, 7)
    assert struct.unpack_from("<4B3I", data, 32) == (1, 3, 4, 1, 5, 4, 2)  # f32, 3-d, u8, f32
    assert json.loads(data[80 : 80 + info_size])["class_names"] == ["a", "b", "c"]
    assert zlib.crc32(data[:76]) == struct.unpack_from("<I", data, 76)[0]
    # record: x (160 bytes) | label (1) | teacher (12) | pad to a multiple of 4
    assert record_size == 176
    assert data_offset % 16 == 0 and len(data) == data_offset + 40 * record_size
    written = read_dataset(dataset_file)
    i = 13
    rec = data[data_offset + i * record_size :][:record_size]
    assert rec[:160] == written.x[i].tobytes() and rec[160] == written.y[i]
    table_offset = struct.unpack_from("<I", data, 68)[0]
    first = struct.unpack_from("<I", data, table_offset)[0]
    assert first == zlib.crc32(data[data_offset : data_offset + 7 * record_size])


@pytest.mark.parametrize(
    "cut, what",
    [(2, "header"), (60, "header"), (90, "info"), (None, "records")],
)
def test_truncated_dataset_is_refused(dataset_file, cut, what):
    data = dataset_file.read_bytes()
    dataset_file.write_bytes(data[: cut if cut is not None else len(data) - 5])
    with pytest.raises(FormatError, match="truncated") as e:
        DatasetReader(dataset_file)
    assert str(dataset_file) in str(e.value)


def test_dataset_with_wrong_magic_or_a_model_file_is_refused(tmp_path, dataset_file):
    data = bytearray(dataset_file.read_bytes())
    data[:4] = b"RIFF"
    dataset_file.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="not an .mtd dataset"):
        DatasetReader(dataset_file)
    write_model(tmp_path / "m.mtm", small_spec())
    with pytest.raises(FormatError, match="that is an .mtm model"):
        read_dataset(tmp_path / "m.mtm")


def test_dataset_of_a_newer_version_is_refused(dataset_file):
    data = bytearray(dataset_file.read_bytes())
    data[4:6] = struct.pack("<H", 2)
    dataset_file.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="unsupported .mtd version 2"):
        read_dataset(dataset_file)


@pytest.mark.parametrize(
    "where, message",
    [(12, "header CRC mismatch"), (85, "info section CRC mismatch"), ("table", "chunk CRC table")],
)
def test_corrupted_dataset_header_info_or_table_is_refused_at_open(dataset_file, where, message):
    if where == "table":
        where = struct.unpack_from("<I", dataset_file.read_bytes(), 68)[0] + 1
    corrupt(dataset_file, where)
    with pytest.raises(FormatError, match=message):
        DatasetReader(dataset_file)


def test_corrupted_record_is_found_by_verify_naming_its_chunk(dataset_file):
    h = mtd.read_dataset_header(dataset_file)
    corrupt(dataset_file, h.data_offset + 15 * h.record_size + 3)  # record 15: chunk 2 (14..20)
    with DatasetReader(dataset_file) as r:  # opening checks only the header, info and table
        with pytest.raises(FormatError, match=r"CRC mismatch in chunk 2 \(records 14..20\)"):
            r.verify()
    with pytest.raises(FormatError, match="chunk 2"):
        read_dataset(dataset_file)


def test_dataset_with_trailing_bytes_is_refused(dataset_file):
    dataset_file.write_bytes(dataset_file.read_bytes() + b"\0" * 4)
    with pytest.raises(FormatError, match="4 unexpected bytes"):
        DatasetReader(dataset_file)


def test_write_dataset_refuses_bad_inputs_clearly(tmp_path):
    x, y = images(4)
    with pytest.raises(ValueError, match="labels must be in"):
        write_dataset(tmp_path / "a.mtd", x, y, class_names=["only"])
    with pytest.raises(ValueError, match="teacher_logits have shape"):
        write_dataset(tmp_path / "a.mtd", x, y, teacher_logits=np.zeros((4, 7)))
    with pytest.raises(ValueError, match="dtype must be one of"):
        write_dataset(tmp_path / "a.mtd", x, y, dtype="int4")
    with pytest.raises(ValueError, match="overflow float16"):
        write_dataset(tmp_path / "a.mtd", x * 1e6, y, dtype="float16")
    assert not list(tmp_path.iterdir())  # nothing half-written


# ---------------------------------------------------------------------------------------------
# .mtm


def test_model_round_trip_keeps_graph_tensors_shape_and_meta(tmp_path):
    spec = small_spec()
    write_model(tmp_path / "m.mtm", spec)
    back = read_model(tmp_path / "m.mtm")
    assert back.graph == spec.graph and back.input_shape == (5, 4, 2)
    assert back.meta == {"note": "test"}
    assert list(back.tensors) == list(expected_tensors(spec.graph))
    for name, t in spec.tensors.items():
        assert np.array_equal(back.tensors[name], t)


def test_model_int8_tensor_keeps_its_scale_and_zero_point(tmp_path):
    # An int8 tensor belongs to an int8 layer: a float32 layer stores float32 (the device
    # refuses anything else, so the host reader does too).
    graph = sequential(layer("Linear", dtype="int8", in_features=3, out_features=2))
    q = np.array([[1, -2, 3], [4, 5, -128]], dtype=np.int8)
    spec = ModelSpec(graph, {"0.weight": q, "0.bias": np.zeros(2, np.float32),
                             "0.weight_scale": np.ones(2, np.float32)},
                     quant={"0.weight": (0.05, -3)})  # fmt: skip
    write_model(tmp_path / "q.mtm", spec)
    back = read_model(tmp_path / "q.mtm")
    assert back.tensors["0.weight"].dtype == np.int8 and back.quant["0.weight"] == (0.05, -3)


def test_model_bytes_follow_docs_formats_md(tmp_path):
    spec = small_spec()
    write_model(tmp_path / "m.mtm", spec)
    data = (tmp_path / "m.mtm").read_bytes()
    magic, version, header_size, graph_size, graph_crc, data_offset, data_size, flags, crc = (
        struct.unpack_from("<4sHH6I", data))  # fmt: skip
    assert (magic, version, header_size, flags) == (b"MTM\0", 1, 32, 0)
    assert crc == zlib.crc32(data[:28]) and graph_crc == zlib.crc32(data[32 : 32 + graph_size])
    assert data_offset % 16 == 0 and len(data) == data_offset + data_size
    doc = json.loads(data[32 : 32 + graph_size])
    entry = next(e for e in doc["tensors"] if e["name"] == "3.body.0.weight")
    assert entry["shape"] == [4, 3, 3, 1] and entry["offset"] % 16 == 0
    raw = data[data_offset + entry["offset"] :][: entry["nbytes"]]
    assert raw == spec.tensors["3.body.0.weight"].tobytes() and entry["crc"] == zlib.crc32(raw)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d[:20], "truncated: header"),
        (lambda d: d[:-1], "truncated: the model needs"),
        (lambda d: b"MTD\0" + d[4:], "that is an .mtd dataset"),
        (lambda d: d[:4] + struct.pack("<H", 9) + d[6:], "unsupported .mtm version 9"),
        (lambda d: d[:9] + bytes([d[9] ^ 1]) + d[10:], "header CRC mismatch"),
        (lambda d: d[:40] + bytes([d[40] ^ 1]) + d[41:], "graph section CRC mismatch"),
        (lambda d: d[:-3] + bytes([d[-3] ^ 1]) + d[-2:], "tensor 6.bias: CRC mismatch"),
        (lambda d: d + b"xx", "2 unexpected bytes"),
    ],
)
def test_damaged_model_file_is_refused_naming_the_problem(tmp_path, mutate, message):
    path = tmp_path / "m.mtm"
    write_model(path, small_spec())
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(FormatError, match=message) as e:
        read_model(path)
    assert str(e.value).startswith(str(path))


def test_model_spec_errors_name_the_layer():
    with pytest.raises(SpecError, match=r"model\[1\]: unknown layer type 'GELU'"):
        ModelSpec(sequential(layer("ReLU"), {"type": "GELU", "config": {}}), {})
    with pytest.raises(SpecError, match="Residual"):
        ModelSpec(sequential({"type": "Add", "config": {}}), {})
    spec = small_spec()
    spec.tensors["6.weight"] = np.zeros((3, 5), np.float32)
    with pytest.raises(SpecError, match=r"6.weight has shape \(3, 5\), the graph needs \(3, 16\)"):
        spec.validate()
    spec = small_spec()
    spec.input_shape = (6, 4, 2)
    with pytest.raises(SpecError, match="in_features 16 but input has 24"):
        spec.validate()


def test_reference_model_runs_an_mtm_as_the_functional_reference_computes_it(tmp_path):
    spec = small_spec()
    write_model(tmp_path / "m.mtm", spec)
    x = RNG.normal(size=(3, 5, 4, 2))
    t = spec.tensors
    h = F.conv2d_forward(x, t["0.weight"], t["0.bias"], padding=1)
    h = F.relu_forward(F.batchnorm2d_forward_eval(h, t["1.weight"], t["1.bias"],
                                                  t["1.running_mean"], t["1.running_var"]))
    h = h + F.relu6_forward(F.conv2d_forward(h, t["3.body.0.weight"], None, padding=1, groups=4))
    h = F.flatten_forward(F.maxpool2d_forward(h, 2))
    want = F.linear_forward(h, t["6.weight"], t["6.bias"])  # fmt: skip
    got = load_reference_model(tmp_path / "m.mtm").predict(x)
    assert np.allclose(got, want, rtol=1e-12, atol=1e-12)  # same float64 maths


# ---------------------------------------------------------------------------------------------
# sources


def write_idx(path: Path, array: np.ndarray) -> None:
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(head + array.astype(np.uint8).tobytes())


def test_idx_folder_loads_as_channels_last_unit_images_with_class_names(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    imgs = RNG.integers(0, 256, (6, 28, 28))
    write_idx(folder / "train-images-idx3-ubyte.gz", imgs)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(6))
    data = load_source(folder)
    assert data.x.shape == (6, 28, 28, 1) and data.x.dtype == np.float32
    assert np.allclose(data.x[..., 0] * 255, imgs)
    assert data.y.tolist() == list(range(6)) and data.class_names[0] == "T-shirt/top"
    write_arrays(tmp_path / "f.mtd", data, dtype="int8")
    back = read_dataset(tmp_path / "f.mtd")
    assert np.array_equal(back.x.astype(int) + 128, imgs[..., None])  # int8 is exact for bytes


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_installed_fashion_mnist_test_split_loads():
    data = load_mnist_folder(FASHION_MNIST_DIR, "t10k")
    assert data.x.shape == (10000, 28, 28, 1) and len(data.class_names) == 10


def test_idx_images_file_finds_its_labels_file(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", RNG.integers(0, 256, (2, 4, 4)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 1]))
    data = load_idx(tmp_path / "t10k-images-idx3-ubyte")
    assert data.y.tolist() == [3, 1] and data.class_names == [str(d) for d in range(10)]


def test_npz_source_with_teacher_logits(tmp_path):
    x, y = images(5)
    np.savez(tmp_path / "d.npz", x=x, y=y, teacher_logits=np.ones((5, 3)))
    data = load_npz(tmp_path / "d.npz")
    assert data.teacher_logits.shape == (5, 3) and np.array_equal(data.x, x)
    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(ValueError, match="lacks"):
        load_npz(tmp_path / "bad.npz")


def test_csv_source_with_header_and_named_classes(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,species\n1,2,cat\n3,4.5,dog\n5,6,cat\n")
    data = load_csv(tmp_path / "d.csv", label_column="species")
    assert data.x.tolist() == [[1, 2], [3, 4.5], [5, 6]]
    assert data.class_names == ["cat", "dog"] and data.y.tolist() == [0, 1, 0]
    (tmp_path / "n.csv").write_text("0.5,0.25,2\n1,1,0\n")
    assert load_source(tmp_path / "n.csv").y.tolist() == [2, 0]


def write_wav(path: Path, samples: np.ndarray, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


def test_wav_folder_pads_clips_and_applies_a_feature_function(tmp_path):
    for cls, n in (("no", 100), ("yes", 80)):
        (tmp_path / cls).mkdir()
        write_wav(tmp_path / cls / "a.wav", np.full(n, 16384))
    data = load_source(tmp_path)
    assert data.class_names == ["no", "yes"] and data.x.shape == (2, 100, 1)
    assert data.x[1, 79, 0] == 0.5 and data.x[1, 80, 0] == 0.0  # 16384/32768, zero padding
    assert data.meta["sample_rate"] == 8000

    def energy(audio: np.ndarray, rate: int) -> np.ndarray:
        return (audio.reshape(-1, 10) ** 2).mean(axis=1, keepdims=True)

    feats = load_wav_folder(tmp_path, length=50, features=energy)
    assert feats.x.shape == (2, 5, 1) and feats.meta["features"] == "energy"
