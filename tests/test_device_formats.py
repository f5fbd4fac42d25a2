"""The device package reads what the host writes and the host reads what the device saves:
mcutrain.dataset.Dataset and mcutrain.model_io.load/save on every target, with clear errors for
damaged files, index-shuffled epochs and a sample loop that does not allocate."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from mcutrain.formats import (
    ModelSpec,
    expected_tensors,
    layer,
    read_model,
    residual,
    sequential,
    write_dataset,
    write_model,
)
from mcutrain.formats.mtd import read_dataset_header
from mcutrain.runner import run_on

RNG = np.random.default_rng(11)
N = 37  # samples: not a multiple of the chunk or batch sizes


def put(target, *files: Path) -> list[str]:
    """Device paths of host files: unix reads the host filesystem, a board gets copies in /flash."""
    if not target.board.emulated:
        return [str(f) for f in files]
    for f in files:
        target.mpremote("fs", "cp", str(f), ":" + f.name)
    return ["/flash/" + f.name for f in files]


def fetch(target, device_path: str, local: Path) -> Path:
    """A device file on the host."""
    if target.board.emulated:
        target.mpremote("fs", "cp", ":" + device_path.removeprefix("/flash/"), str(local))
        return local
    return Path(device_path)


def remove(target, *device_paths: str) -> None:
    if target.board.emulated:
        run_on(target, "import os\nfor p in %r:\n    try: os.remove(p)\n    except OSError: pass"
               % (list(device_paths),))  # fmt: skip


def device_path(target, tmp_path: Path, name: str) -> str:
    """Where a test's device script may write `name`."""
    return "/flash/" + name if target.board.emulated else str(tmp_path / name)


def require_engine(target) -> None:
    if run_on(target, "import mcutrain as mt; print(hasattr(mt, 'Tensor'))").strip() != "True":
        pytest.skip(f"{target.name} firmware has no mt.Tensor yet (the C engine has not landed)")


@pytest.fixture
def dataset_file(tmp_path: Path) -> Path:
    """x[i] = i + k/10 for element k, labels i % 5, teacher logits i * [1, 2, 3, 4, 5]."""
    x = np.arange(N, dtype=np.float32)[:, None, None] + np.arange(6, dtype=np.float32).reshape(
        1, 3, 2) / 10  # fmt: skip
    y = np.arange(N) % 5
    teacher = np.arange(N)[:, None] * np.arange(1, 6)
    path = tmp_path / "ds.mtd"
    write_dataset(path, x[..., None], y, class_names=list("abcde"), teacher_logits=teacher,
                  meta={"rate": 16000}, chunk_records=8)  # fmt: skip
    return path


READ_SAMPLES = """
import struct
from mcutrain.dataset import Dataset
ds = Dataset({path!r})
print(len(ds), ds.sample_shape, ds.dtype, ds.label_dtype, ds.teacher_dtype, ds.num_classes)
print(ds.class_names, ds.meta)
x, t = bytearray(24), bytearray(20)
for i in (0, 9, -1):
    label = ds.readinto(i, x, None, t)
    print(label, ['%.1f' % v for v in struct.unpack('<6f', x)], struct.unpack('<5f', t))
ds.close()
"""


def test_device_dataset_reads_header_info_and_any_sample_written_on_host(target, dataset_file):
    (path,) = put(target, dataset_file)
    try:
        lines = run_on(target, READ_SAMPLES.format(path=path)).splitlines()
    finally:
        remove(target, path)
    assert lines[0] == "37 (3, 2, 1) float32 uint8 float32 5"
    assert lines[1] == "['a', 'b', 'c', 'd', 'e'] {'rate': 16000}"
    assert lines[2] == "0 ['0.0', '0.1', '0.2', '0.3', '0.4', '0.5'] (0.0, 0.0, 0.0, 0.0, 0.0)"
    assert lines[3].startswith("4 ['9.0', '9.1'")
    assert lines[3].endswith("(9.0, 18.0, 27.0, 36.0, 45.0)")
    assert lines[4].startswith("1 ['36.0', ")


def damaged_datasets(good: Path) -> dict[str, bytes]:
    data = good.read_bytes()
    h = read_dataset_header(good)

    def flip(offset: int) -> bytes:
        return data[:offset] + bytes([data[offset] ^ 0x10]) + data[offset + 1 :]

    return {
        "truncated.mtd": data[: len(data) - 3],
        "short.mtd": data[:50],
        "magic.mtd": b"MTM\0" + data[4:],
        "version.mtd": data[:4] + struct.pack("<H", 7) + data[6:],
        "header.mtd": flip(20),
        "info.mtd": flip(82),
        "chunk.mtd": flip(h.data_offset + 20 * h.record_size),  # record 20 is in chunk 2
    }


TRY_OPEN = """
from mcutrain.dataset import Dataset, FormatError
for path in {paths!r}:
    try:
        Dataset(path).close()
        print('opened', path)
    except FormatError as e:
        print(type(e).__name__, e)
"""


def test_device_dataset_refuses_damaged_files_naming_the_fault(target, dataset_file, tmp_path):
    files = []
    for name, data in damaged_datasets(dataset_file).items():
        (tmp_path / name).write_bytes(data)
        files.append(tmp_path / name)
    paths = put(target, *files)
    try:
        out = run_on(target, TRY_OPEN.format(paths=paths)).splitlines()
    finally:
        remove(target, *paths)
    want = [
        "truncated: 37 records need",
        "truncated: header needs 80 bytes, file has 50",
        "not an .mtd dataset: magic b'MTM\\x00'",
        "unsupported .mtd version 7 (this reader reads 1)",
        "header CRC mismatch",
        "info section CRC mismatch",
        "CRC mismatch in chunk 2 (records 16..23)",
    ]
    assert len(out) == len(want)
    for line, path, message in zip(out, paths, want):
        assert line.startswith(f"FormatError {path}: {message}"), line


SHUFFLE = """
import micropython
from mcutrain.dataset import Dataset
ds = Dataset({path!r}, teacher=True)
def firsts(seed):
    out = []
    for x, y, t in ds.shuffled(seed):
        out.append(int(memoryview(x)[0]))
        assert y == out[-1] % 5 and memoryview(t)[1] == 2 * out[-1]
    return out
a, b = firsts(1), firsts(1)
print(sorted(a) == list(range(len(ds))), a == b, a != firsts(2), a != sorted(a))
def locked(it):
    # After the first item has allocated the buffers, the loop allocates nothing.
    next(it)
    count = 1
    micropython.heap_lock()
    try:
        for x, y, t in it:
            count += 1
    finally:
        micropython.heap_unlock()
    return count
print(locked(ds.shuffled(5)), locked(ds.batches(10, shuffle=True, seed=3, drop_last=True)))
batches = []
for x, y, t in ds.batches(10):
    batches.append((x.shape, list(y), t.shape, int(memoryview(x)[6])))
print(batches)
"""


def test_device_dataset_shuffles_epochs_and_batches_without_allocating(target, dataset_file):
    require_engine(target)
    (path,) = put(target, dataset_file)
    try:
        lines = run_on(target, SHUFFLE.format(path=path)).splitlines()
    finally:
        remove(target, path)
    assert lines[0] == "True True True True"  # a permutation, seeded, differing per seed
    assert lines[1] == "37 3"
    batches = eval(lines[2])
    assert [b[0] for b in batches] == [(10, 3, 2, 1)] * 3 + [(7, 3, 2, 1)]
    assert batches[0][1] == [i % 5 for i in range(10)] and batches[3][2] == (7, 5)
    assert [b[3] for b in batches] == [1, 11, 21, 31]  # sample 1, 11, ... is row 1's first value


INT8 = """
from mcutrain.dataset import Dataset
ds = Dataset({path!r})
x, y = ds[2]
print(x.dtype, x.shape, '%.6f' % x.scale, x.zero_point, list(memoryview(x)), y, sep='|')
"""


def test_device_int8_dataset_gives_int8_tensors_with_the_dataset_scale(target, tmp_path):
    require_engine(target)
    x = np.linspace(0, 1, 5 * 4, dtype=np.float32).reshape(5, 4)
    write_dataset(tmp_path / "q.mtd", x, np.arange(5), dtype="int8")
    (path,) = put(target, tmp_path / "q.mtd")
    try:
        out = run_on(target, INT8.format(path=path)).strip().split("|")
    finally:
        remove(target, path)
    q = np.rint(x[2] * 255) - 128
    assert out[:4] == ["int8", "(1, 4)", "0.003922", "-128"]
    assert out[4:] == [str([int(v) for v in q]), "2"]


def small_spec() -> ModelSpec:
    graph = sequential(
        layer("Conv2d", in_channels=2, out_channels=4, kernel_size=3, padding=1),
        layer("BatchNorm2d", num_features=4),
        layer("ReLU"),
        residual(sequential(layer("Conv2d", in_channels=4, out_channels=4, kernel_size=3,
                                  padding=1, groups=4, bias=False), layer("ReLU6"))),
        layer("MaxPool2d", kernel_size=2),
        layer("Flatten"),
        layer("Linear", in_features=2 * 2 * 4, out_features=3),
    )  # fmt: skip
    tensors = {k: RNG.normal(size=s).astype(np.float32) for k, s in expected_tensors(graph).items()}
    tensors["1.running_var"] = np.abs(tensors["1.running_var"]) + 0.5
    return ModelSpec(graph, tensors, input_shape=(4, 4, 2))


LOAD_SAVE = """
import mcutrain as mt
from mcutrain.model_io import load, save
m = load({src!r})
print([type(m[i]).__name__ for i in range(len(m))], type(m[3].body[0]).__name__)
print(m[3].body[0].config()['groups'], m[1].running_var.tolist())
m[6].trainable = False
save(m, {dst!r}, meta={{'epochs': 3}})
again = load({dst!r})
a, b = m.state_dict(), again.state_dict()
print(sorted(a) == sorted(b) and all(a[k].tolist() == b[k].tolist() for k in a), again[6].trainable)
"""


def test_device_loads_host_model_and_host_reads_device_saved_model(target, tmp_path):
    require_engine(target)
    spec = small_spec()
    write_model(tmp_path / "host.mtm", spec)
    (src,) = put(target, tmp_path / "host.mtm")
    dst = device_path(target, tmp_path, "saved.mtm")
    try:
        lines = run_on(target, LOAD_SAVE.format(src=src, dst=dst)).splitlines()
        back = read_model(fetch(target, dst, tmp_path / "back.mtm"))
    finally:
        remove(target, src, dst)
    assert lines[0] == ("['Conv2d', 'BatchNorm2d', 'ReLU', 'Residual', 'MaxPool2d', 'Flatten', "
                        "'Linear'] Conv2d")  # fmt: skip
    assert lines[1].startswith("4 [") and lines[2] == "True False"
    assert back.meta == {"epochs": 3} and back.graph["layers"][6]["trainable"] is False
    for name, t in spec.tensors.items():
        assert np.array_equal(back.tensors[name], t), name  # float32 bits survive both ways


ATOMIC = """
from mcutrain import model_io
from mcutrain.model_io import load, save
import os
m = load({src!r})
save(m, {dst!r})
class Crash:
    def rename(self, a, b):
        raise OSError(28, 'power cut')
    def remove(self, p):
        os.remove(p)
real, model_io.os = model_io.os, Crash()
m[0].weight.fill(7.0)
try:
    save(m, {dst!r})
except OSError as e:
    print('save failed:', e.args[1])
model_io.os = real
print(load({dst!r})[0].weight.tolist() != m[0].weight.tolist(), {tmp!r} in [
    d + '/' + n for d in [{folder!r}] for n in os.listdir(d)])
"""


def test_device_save_that_fails_leaves_the_old_model_and_no_temp_file(target, tmp_path):
    require_engine(target)
    write_model(tmp_path / "host.mtm", small_spec())
    (src,) = put(target, tmp_path / "host.mtm")
    dst = device_path(target, tmp_path, "kept.mtm")
    folder = dst.rsplit("/", 1)[0]
    try:
        out = run_on(target, ATOMIC.format(src=src, dst=dst, tmp=dst + ".tmp", folder=folder))
    finally:
        remove(target, src, dst)
    assert out.splitlines() == ["save failed: power cut", "True False"]


TRY_LOAD = """
from mcutrain.model_io import load
from mcutrain.dataset import FormatError
for path in {paths!r}:
    try:
        load(path)
        print('loaded', path)
    except FormatError as e:
        print(type(e).__name__, e)
"""


def test_device_refuses_damaged_model_files_naming_the_fault(target, tmp_path):
    require_engine(target)
    write_model(tmp_path / "good.mtm", small_spec())
    data = (tmp_path / "good.mtm").read_bytes()
    damaged = {
        "cut.mtm": data[:-8],
        "version.mtm": data[:4] + struct.pack("<H", 3) + data[6:],
        "graph.mtm": data[:50] + bytes([data[50] ^ 1]) + data[51:],
        "tensor.mtm": data[:-2] + bytes([data[-2] ^ 1]) + data[-1:],
    }
    for name, blob in damaged.items():
        (tmp_path / name).write_bytes(blob)
    paths = put(target, *(tmp_path / n for n in damaged))
    try:
        out = run_on(target, TRY_LOAD.format(paths=paths)).splitlines()
    finally:
        remove(target, *paths)
    want = ["truncated: the model needs", "unsupported .mtm version 3",
            "graph section CRC mismatch", "tensor 6.bias: CRC mismatch"]  # fmt: skip
    for line, path, message in zip(out, paths, want, strict=True):
        assert line.startswith(f"FormatError {path}: {message}"), line


PREDICT = """
import struct
from mcutrain.model_io import load
import mcutrain as mt
m = load({src!r})
x = mt.Tensor(open({inputs!r}, 'rb').read(), shape={shape!r})
print(m.predict(x).tolist())
"""


def test_device_runs_an_exported_torch_model_as_pytorch_does(target, tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    require_engine(target)
    from mcutrain.export import export_torch
    from mcutrain.export.torch_modules import Residual
    from torch import nn

    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ReLU6())),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2)
    export_torch(model, tmp_path / "t.mtm", input_shape=(1, 6, 6))
    x = torch.randn(2, 1, 6, 6)
    (tmp_path / "x.bin").write_bytes(x.permute(0, 2, 3, 1).contiguous().numpy().tobytes())
    src, inputs = put(target, tmp_path / "t.mtm", tmp_path / "x.bin")
    try:
        got = np.array(eval(run_on(target, PREDICT.format(src=src, inputs=inputs,
                                                          shape=(2, 6, 6, 1)))))
    finally:
        remove(target, src, inputs)
    with torch.no_grad():
        want = model(x).numpy()
    # float32 on both sides, different summation orders: a few ulps of outputs around 1.
    assert np.abs(got - want).max() < 1e-4
