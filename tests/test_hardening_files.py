"""Issue 15, files and flash: each bug found in the loaders, mt.save and the boards' boot code,
checked on every target (regressions; the random search is tests/test_fuzz_files.py)."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from mcutrain.emulator import FLASH_SIZE, Emulator
from mcutrain.formats import (
    DatasetReader,
    FormatError,
    ModelSpec,
    layer,
    model_bytes,
    read_model,
    sequential,
    write_dataset,
)
from mcutrain.quantize import dequantize_model
from mcutrain.runner import run_on
from test_device_formats import device_path, fetch, put, remove

ROOT = Path(__file__).resolve().parents[1]
SANITIZED = ROOT / "build" / "unix-san" / "micropython"


def crc(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def linear_mtm(**edit) -> bytes:
    """A Linear(3, 2) model whose graph JSON is changed by edit(doc) (CRCs recomputed)."""
    spec = ModelSpec(sequential(layer("Linear", in_features=3, out_features=2)),
                     {"0.weight": np.ones((2, 3), np.float32),
                      "0.bias": np.zeros(2, np.float32)})  # fmt: skip
    data = model_bytes(spec)
    if not edit:
        return data
    gsize, _, doff = struct.unpack_from("<III", data, 8)
    doc = json.loads(data[32 : 32 + gsize])
    graph = edit["fn"](doc) if "fn" in edit else edit["raw"]
    if not isinstance(graph, bytes):
        graph = json.dumps(graph).encode()
    payload = data[doff:]
    new_doff = (32 + len(graph) + 15) // 16 * 16
    head = struct.pack("<4sHH5I", b"MTM\0", 1, 32, len(graph), crc(graph), new_doff,
                       len(payload), 0)  # fmt: skip
    out = head + struct.pack("<I", crc(head)) + graph
    return out + bytes(new_doff - len(out)) + payload


def _set(doc, path, value):
    d = doc
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value
    return doc


def bad_models() -> dict[str, bytes]:
    """Files the old loaders met with RuntimeError, AttributeError, TypeError, MemoryError or
    accepted on one side only."""
    layers = ("model", "layers", 0)
    return {
        "deep.mtm": linear_mtm(raw=b'{"model": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
        "lenient.mtm": linear_mtm(raw=b'{"model": {"type": "Sequential", "layers": [],}, '
                                      b'"tensors": []}'),  # fmt: skip
        "layer_list.mtm": linear_mtm(fn=lambda d: _set(d, layers, [1, 2])),
        "entry_int.mtm": linear_mtm(fn=lambda d: _set(d, ("tensors", 0), 7)),
        "config_str.mtm": linear_mtm(fn=lambda d: _set(d, (*layers, "config"), "x")),
        "kernel_float.mtm": linear_mtm(fn=lambda d: _set(d, (*layers, "config", "in_features"),
                                                         3.0)),  # fmt: skip
        "huge.mtm": linear_mtm(fn=lambda d: _set(_set(d, (*layers, "config", "in_features"),
                                                      30000), (*layers, "config",
                                                               "out_features"), 30000)),
        "overlong_utf8.mtm": linear_mtm(raw=b'{"model": {"type": "Sequential", "layers": []},'
                                            b' "tensors": [], "meta": {"x": "\xc0\x80"}}'),
        "int8_tensor_on_float_layer.mtm": linear_mtm(
            fn=lambda d: _set(_set(_set(d, ("tensors", 0, "dtype"), "int8"), ("tensors", 0,
                                                                             "nbytes"), 6),
                              ("tensors", 0, "scale"), 1.0)),  # fmt: skip
        "dup_tensor.mtm": linear_mtm(fn=lambda d: _set(d, ("tensors",), d["tensors"] * 2)),
    }


def mtd_with(base: bytes, **fields: int | float) -> bytes:
    """base with header fields replaced (offsets by name) and the header CRC recomputed."""
    offsets = {"header_size": (6, "H"), "label_dtype": (34, "B"), "x_scale": (48, "f"),
               "x_zero_point": (52, "i"), "label_size": (60, "I")}  # fmt: skip
    b = bytearray(base)
    for name, value in fields.items():
        off, fmt = offsets[name]
        struct.pack_into("<" + fmt, b, off, value)
    struct.pack_into("<I", b, 76, crc(b[:76]))
    return bytes(b)


def mtd_info(base: bytes, info: bytes) -> bytes:
    """base with another info section of the same length, CRC recomputed."""
    b = bytearray(base)
    size = struct.unpack_from("<I", b, 24)[0]
    assert len(info) == size
    b[80 : 80 + size] = info
    struct.pack_into("<I", b, 28, crc(info))
    struct.pack_into("<I", b, 76, crc(b[:76]))
    return bytes(b)


def padded(json_text: bytes, size: int) -> bytes:
    """json_text with spaces before its last byte, `size` bytes long."""
    return json_text[:-1] + b" " * (size - len(json_text)) + json_text[-1:]


def bad_datasets(tmp_path: Path) -> dict[str, bytes]:
    write_dataset(tmp_path / "f.mtd", np.zeros((3, 4), np.float32), np.arange(3),
                  meta={"k": "abcdefgh"})  # fmt: skip
    f = (tmp_path / "f.mtd").read_bytes()
    write_dataset(tmp_path / "q.mtd", np.linspace(0, 1, 12).reshape(3, 4), np.arange(3),
                  dtype="int8")  # fmt: skip
    q = (tmp_path / "q.mtd").read_bytes()
    info = f[80 : 80 + struct.unpack_from("<I", f, 24)[0]]
    return {
        "header_size.mtd": mtd_with(f, header_size=81),
        "info_lenient.mtd": mtd_info(f, info.replace(b'"k":', b'"k" ')),
        "info_not_object.mtd": mtd_info(f, b"[" + b" " * (len(info) - 2) + b"]"),
        "info_names.mtd": mtd_info(f, padded(b'{"class_names":7}', len(info))),
        "scale_zero.mtd": mtd_with(q, x_scale=0.0),
        "scale_nan.mtd": mtd_with(q, x_scale=float("nan")),
        "zero_point.mtd": mtd_with(q, x_zero_point=300),
        "label_code_float16.mtd": mtd_with(f, label_dtype=2),
        "label_size.mtd": mtd_with(f, label_size=2),
    }


TRY_ALL = """
import mcutrain as mt
for p in {paths!r}:
    try:
        if p.endswith('.mtm'):
            mt.load(p)
        else:
            ds = mt.Dataset(p)
            ds[0]
            ds.close()
        print('ACCEPTED', p)
    except mt.FormatError as e:
        print('FormatError', p)
    except Exception as e:
        print(type(e).__name__, p, e)
"""


def test_malformed_files_give_format_error_on_host_and_device(target, tmp_path):
    files = {**bad_models(), **bad_datasets(tmp_path)}
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
        with pytest.raises(FormatError):  # the host reader refuses each one too
            if name.endswith(".mtm"):
                read_model(tmp_path / name)
            else:
                with DatasetReader(tmp_path / name, verify=True) as r:
                    r[0]
    dev = put(target, *paths)
    try:
        out = run_on(target, TRY_ALL.format(paths=dev), timeout=120).splitlines()
    finally:
        remove(target, *dev)
    assert len(out) == len(files), out
    for line in out:
        assert line.startswith("FormatError "), line


DATASET_FLOAT_TARGETS = """
import mcutrain as mt
ds = mt.Dataset({path!r})
x, y = ds[1]
print(ds.label_dtype, y.shape, [round(v, 2) for v in y.tolist()[0]])
for xb, yb in ds.batches(2):
    pass
print(yb.shape)
"""


def test_float_target_dataset_reads_everywhere_and_clean_under_sanitizers(target, tmp_path):
    y = np.arange(12, dtype=np.float32).reshape(4, 3) / 4
    write_dataset(tmp_path / "t.mtd", np.zeros((4, 5), np.float32), y)
    (path,) = put(target, tmp_path / "t.mtd")
    try:
        out = run_on(target, DATASET_FLOAT_TARGETS.format(path=path)).splitlines()
    finally:
        remove(target, path)
    assert out == ["float32 (1, 3) [0.75, 1.0, 1.25]", "(2, 3)"]
    if target.name == "unix" and SANITIZED.is_file():  # bytearray(0) tripped UBSan here
        r = subprocess.run([str(SANITIZED), "-c", DATASET_FLOAT_TARGETS.format(path=path)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0 and "runtime error" not in r.stderr, r.stderr
        assert r.stdout.splitlines() == out


SAVE_INT8 = """
import array, mcutrain as mt
mt.seed(4)
m = mt.Sequential(mt.Conv2d(1, 4, 3, padding=1), mt.ReLU(), mt.MaxPool2d(2), mt.Flatten(),
                  mt.Linear(16, 3))
x = mt.zeros((1, 4, 4, 1))
x.copy_from(array.array('f', [((7 * i) % 11) / 10 for i in range(16)]))
m.forward(x)
mt.save(m, {float_path!r})
q = mt.quantize(m, [x])
q.forward(x)
mt.save(q, {int8_path!r})
print([type(l).__name__ + ':' + str(getattr(l, 'dtype', None)) for l in q])
"""


def test_int8_model_saved_on_device_dequantizes_on_host(target, tmp_path):
    fpath = device_path(target, tmp_path, "f.mtm")
    qpath = device_path(target, tmp_path, "q.mtm")
    try:
        out = run_on(target, SAVE_INT8.format(float_path=fpath, int8_path=qpath))
        assert "ReLU:int8" in out  # parameterless layers carry their input's dtype
        local_q = fetch(target, qpath, tmp_path / "pulled_q.mtm")
        local_f = fetch(target, fpath, tmp_path / "pulled_f.mtm")
    finally:
        remove(target, fpath, qpath)
    back = dequantize_model(local_q, out=tmp_path / "deq.mtm")  # was a KeyError
    original = read_model(local_f)
    quant = read_model(local_q)
    for name in ("0.weight", "4.weight"):
        qname = str(int(name[0]) + 1) + name[1:]  # quantize put a Convert in front
        scale = quant.tensors[qname.replace("weight", "weight_scale")]
        err = np.abs(back.tensors[name] - original.tensors[name])
        assert np.all(err <= scale.reshape((-1,) + (1,) * (err.ndim - 1)) / 2 + 1e-7), name
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "mcutrain", "dequantize",
                    str(local_q), "-o", str(tmp_path / "cli.mtm")], check=True,
                   env={"PYTHONPATH": str(ROOT / "host")}, capture_output=True)  # fmt: skip
    assert read_model(tmp_path / "cli.mtm").graph == back.graph


STALE_TMP = """
import os, mcutrain as mt
p = {path!r}
with open(p + '.tmp', 'wb') as f:
    f.write(b'MTM\\x00 half a model from a save the power cut short')
mt.save(mt.Sequential(mt.Linear(2, 2)), p)
print(sorted(n for n in os.listdir({folder!r}) if n.startswith('m.mtm')), len(mt.load(p)))
"""


def test_save_replaces_a_stale_temporary(target, tmp_path):
    path = device_path(target, tmp_path, "m.mtm")
    folder = path.rsplit("/", 1)[0]
    try:
        out = run_on(target, STALE_TMP.format(path=path, folder=folder))
    finally:
        remove(target, path, path + ".tmp")
    assert out.strip() == "['m.mtm'] 1"


def test_boot_removes_stale_save_temporaries_only(emulated):
    run_on(emulated, "for n, d in (('s.mtm.tmp', b'MTM\\x00x'), ('e.mtd.tmp', b''),"
                     " ('notes.tmp', b'mine')):\n    open(n, 'wb').write(d)")  # fmt: skip
    try:  # every script starts after a soft reset, which runs _boot.py again
        out = run_on(emulated, "import os; print(sorted(n for n in os.listdir() "
                               "if n.endswith('.tmp')))")  # fmt: skip
    finally:
        remove(emulated, "/flash/notes.tmp", "/flash/s.mtm.tmp", "/flash/e.mtd.tmp")
    assert out.strip() == "['notes.tmp']"


def test_boot_keeps_a_flash_image_it_cannot_mount(emulated_board, tmp_path):
    flash = tmp_path / "flash.img"
    rng = np.random.default_rng(3)
    image = bytearray(FLASH_SIZE)
    image[: 3 * 4096] = rng.integers(0, 256, 3 * 4096, dtype=np.uint8).tobytes()
    flash.write_bytes(bytes(image))
    before = hashlib.sha256(flash.read_bytes()).hexdigest()
    with Emulator(emulated_board, flash=flash) as emu:
        out = emu.exec("import os\nprint(os.listdir('/'))\nimport _boot")
        assert "'flash'" not in out.splitlines()[0]
        assert "/flash NOT mounted" in out and "kept untouched" in out
    assert hashlib.sha256(flash.read_bytes()).hexdigest() == before
    with Emulator(emulated_board, flash=flash) as emu:  # the explicit way to erase it
        emu.exec("import vfs, qemu\nvfs.VfsLfs2.mkfs(qemu.Flash())")
        emu.restart()
        assert emu.exec("import os\nprint(os.getcwd())").strip() == "/flash"


def test_boot_formats_a_blank_erased_image(emulated_board, tmp_path):
    flash = tmp_path / "flash.img"
    flash.write_bytes(b"\xff" * FLASH_SIZE)  # erased NOR flash
    with Emulator(emulated_board, flash=flash) as emu:
        assert emu.exec("import os\nprint(os.getcwd())").strip() == "/flash"


def test_emulate_format_flash_blanks_the_image_it_is_given(tmp_path):
    from mcutrain.cli import _blank_flash_image

    image = tmp_path / "flash.img"
    image.write_bytes(b"\x5a" * 8192)
    _blank_flash_image(image)  # `mcutrain emulate --format-flash`
    assert image.read_bytes() == bytes(8192)
    with open(image, "rb") as held:  # an emulator holds its image locked
        import fcntl

        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ValueError, match="in use"):
            _blank_flash_image(image)
