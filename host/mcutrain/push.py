"""Datasets and models to and from a board: convert with mcutrain.formats / mcutrain.export,
move with the framed transfer (transfer.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .device import Device
from .emulator import run_mpremote
from .errors import DeviceError
from .formats import (
    DatasetHeader,
    read_dataset,
    read_dataset_header,
    read_model,
    write_arrays,
)
from .formats.checks import CheckedDataset, load_checked
from .transfer import ProgressFn, TransferResult, pull_bytes, push_file

DATASET_DTYPES = ("int8", "float16", "float32")
MODEL_SUFFIXES = (".mtm", ".npz", ".pt", ".pth")


def stream_dir() -> Path:
    """Where `push-dataset --stream` keeps converted datasets for `mpremote mount`."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mcutrain" / "stream"


def dataset_name(src: Path | str) -> str:
    """`digits.npz` -> `digits.mtd`; a folder's name for a folder of WAV or idx files."""
    p = Path(src)
    stem = p.name if p.is_dir() else p.name.split(".")[0]
    return f"{stem or 'dataset'}.mtd"


def convert_dataset(
    src: Path | str,
    out: Path | str,
    *,
    dtype: str | None = None,
    teacher: Path | str | None = None,
    **options: Any,
) -> tuple[CheckedDataset, DatasetHeader]:
    """Load and check a dataset source (formats.checks.load_checked: .npz, .csv, idx files, a
    folder of per-class WAV folders, or an .mtd; options label_column, shape, layout, header)
    and write it as an .mtd at `out` (an .mtd is checked and copied). With `teacher` (a model
    file, see mcutrain.teacher) its logits for every sample go into the file's teacher_logits.
    The checked arrays (for formats.checks.describe) and the written header."""
    src, out = Path(src), Path(out)
    if dtype is not None and dtype not in DATASET_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DATASET_DTYPES)}, got {dtype!r}")
    checked = load_checked(src, **options)
    if teacher is not None:
        from .teacher import with_teacher_logits

        # An .mtd keeps its dtype (and int8 quantization) unless told otherwise.
        data = read_dataset(src) if src.suffix == ".mtd" else checked.data
        if src.suffix == ".mtd" and dtype is None:
            dtype = read_dataset_header(src).dtype
        header = write_arrays(out, with_teacher_logits(data, teacher), dtype=dtype)
        checked.notes.append(f"teacher logits from {Path(teacher).name}")
        return checked, header
    if src.suffix == ".mtd":
        header = read_dataset_header(src)
        if dtype is not None and dtype != header.dtype:
            raise ValueError(f"{src} is already an .mtd of {header.dtype}; convert from the source")
        if src.resolve() != out.resolve():
            shutil.copyfile(src, out)
        return checked, header
    return checked, write_arrays(out, checked.data, dtype=dtype)


def prepare_dataset(
    src: Path | str, out: Path | str, *, dtype: str | None = None, **options: Any
) -> DatasetHeader:
    """convert_dataset(), for the header only."""
    return convert_dataset(src, out, dtype=dtype, **options)[1]


@dataclass
class PushResult:
    """What was pushed where; `transfer` is None when nothing crossed a serial link."""

    source: Path
    dest: str
    size: int
    header: Any  # DatasetHeader or ModelSpec
    transfer: TransferResult | None
    unchanged: bool = False  # the board had this very file already: nothing was sent


def _push(device: Device, path: Path, dest: str, progress: ProgressFn | None) -> TransferResult | None:
    if device.port is None:
        # The unix port reads the host's files: the "board's" path is a host path.
        target = Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.resolve() != target.resolve():
            shutil.copyfile(path, target)
        return None
    with device.uart() as port:
        return push_file(port, path, dest, progress=progress)


# Size and, when it is `size` bytes, the sha256 of a file on the board ("" without hashlib).
_FILE_ON_BOARD = """
import os
p = %r
try:
    s = os.stat(p)[6]
except OSError:
    s = -1
d = ''
if s == %d:
    try:
        import hashlib, binascii
        h = hashlib.sha256()
        b = bytearray(1024)
        m = memoryview(b)
        with open(p, 'rb') as f:
            while True:
                n = f.readinto(b)
                if not n:
                    break
                h.update(m[:n])
        d = binascii.hexlify(h.digest()).decode()
    except ImportError:
        pass
print('@file', s, d)
"""


def file_on_board(device: Device, path: str, like: bytes = b"") -> tuple[int, bool] | None:
    """(size, whether its content equals `like`) of the file at `path` on the board (relative
    to its working directory), or None when there is none. Compared by sha256 on the board."""
    if device.port is None:
        p = Path(path)
        if not p.exists():
            return None
        size = p.stat().st_size
        return size, size == len(like) and p.read_bytes() == like
    with device.session():
        out = device.exec(_FILE_ON_BOARD % (path, len(like)), timeout=60)
    found = [line.split() for line in out.splitlines() if line.startswith("@file ")]
    if not found:
        raise DeviceError(f"could not check for {path} on the board", out)
    size = int(found[-1][1])
    if size < 0:
        return None
    digest = found[-1][2] if len(found[-1]) > 2 else ""
    return size, digest == hashlib.sha256(like).hexdigest()


def check_free(device: Device, dest: str, data: bytes = b"") -> bool:
    """Whether the board already has `data` at `dest` (True: nothing to send); a ValueError
    naming --force when it has another file there."""
    from .progress import human_bytes

    found = file_on_board(device, dest, data)
    if found is None:
        return False
    size, same = found
    if not same:
        raise ValueError(f"{dest} is already on the board ({human_bytes(size)}): pass --force "
                         "to replace it, or --dest to choose another name")  # fmt: skip
    return True


def push_dataset(
    device: Device,
    src: Path | str,
    *,
    dtype: str | None = None,
    dest: str | None = None,
    save: Path | str | None = None,
    progress: ProgressFn | None = None,
    force: bool = False,
    **options: Any,
) -> PushResult:
    """Convert `src` to .mtd (convert_dataset(); kept at `save` if given) and copy it to `dest`
    on the board (default: the dataset's name in the board's working directory, /flash on
    emulated boards). A file already at `dest` is replaced only with force=True."""
    dest = dest or dataset_name(src)
    with tempfile.TemporaryDirectory(prefix="mcutrain-push-") as tmp:
        path = Path(save) if save is not None else Path(tmp) / dataset_name(src)
        header = prepare_dataset(src, path, dtype=dtype, **options)
        pushed = send_dataset(device, path, dest, force=force, progress=progress, header=header)
        pushed.source = Path(src)
        return pushed


def send_dataset(
    device: Device,
    path: Path | str,
    dest: str,
    *,
    force: bool = False,
    progress: ProgressFn | None = None,
    header: DatasetHeader | None = None,
) -> PushResult:
    """Copy an .mtd file (made by convert_dataset) to `dest` on the board. Another file
    already there is replaced only with force=True; the same file is not sent again
    (`unchanged` in the result)."""
    path = Path(path)
    header = header if header is not None else read_dataset_header(path)
    if not force and check_free(device, dest, path.read_bytes()):
        return PushResult(path, dest, path.stat().st_size, header, None, unchanged=True)
    result = _push(device, path, dest, progress)
    return PushResult(path, dest, path.stat().st_size, header, result)


def serve_dataset(
    src: Path | str,
    *,
    dtype: str | None = None,
    directory: Path | str | None = None,
    **options: Any,
) -> tuple[Path, DatasetHeader]:
    """Convert `src` into `directory` (default stream_dir()) for `mpremote mount`; the file."""
    folder = Path(directory) if directory is not None else stream_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / dataset_name(src)
    return path, prepare_dataset(src, path, dtype=dtype, **options)


def check_mounted(device: Device, path: Path) -> int:
    """The size the board sees for `path` through `mpremote mount` of its folder."""
    with device.uart() as port:
        out = run_mpremote(
            port, "mount", str(path.parent),
            "exec", f"import os; print(os.stat({path.name!r})[6])", timeout=60,
        )  # fmt: skip
    return int(out.strip().splitlines()[-1])


def prepare_model(
    src: Path | str,
    out: Path | str,
    *,
    graph: Path | str | None = None,
    input_shape: tuple[int, ...] | None = None,
    layout: str | None = None,
    fold_bn: bool | None = None,
) -> Any:
    """Write the .mtm for `src`, whose kind is told by its content (export.model_kind): an .mtm
    (checked, copied), an .npz state dict (graph from `graph` or the npz's __graph__ entry), a
    PyTorch state dict (needs `graph`), a whole pickled nn.Module (unpickling runs the file's
    code: trusted files only), a TorchScript file or an ONNX file (their layers are derived).
    input_shape is the device layout's for npz, PyTorch's (C, H, W) otherwise; a graph file's
    or an ONNX input's own shape is used without it. Batch norms are folded by default for
    PyTorch and ONNX sources, kept for npz. Returns the ModelSpec."""
    from .export.sources import model_kind

    src, out = Path(src), Path(out)
    kind = model_kind(src)
    if kind == "mtm":
        spec = read_model(src)
        if src.resolve() != out.resolve():
            shutil.copyfile(src, out)
        return spec
    if kind == "npz":
        from .export import export_npz

        return export_npz(src, out, graph, input_shape=input_shape, layout=layout or "device",
                          fold_bn=bool(fold_bn))  # fmt: skip
    from .export.sources import derive
    from .formats import write_model

    spec = derive(src, input_shape, graph).export_spec(True if fold_bn is None else fold_bn)
    write_model(out, spec)
    return spec


def push_model(
    device: Device,
    src: Path | str,
    *,
    dest: str | None = None,
    progress: ProgressFn | None = None,
    **options: Any,
) -> PushResult:
    """prepare_model() then copy the .mtm to `dest` on the board (default NAME.mtm)."""
    name = Path(src).name.split(".")[0] + ".mtm"
    dest = dest or name
    with tempfile.TemporaryDirectory(prefix="mcutrain-push-") as tmp:
        path = Path(tmp) / name
        spec = prepare_model(src, path, **options)
        result = _push(device, path, dest, progress)
        return PushResult(Path(src), dest, path.stat().st_size, spec, result)


def pull_model(
    device: Device, path: str, out: Path | str, *, layout: str = "device", like: Any = None
) -> Path:
    """Copy an .mtm from the board to `out`: .mtm as is, .npz (mtm_to_npz; layout device or
    torch) or .pt (a PyTorch state dict). With `like` (the model file or object it was
    exported from, see export.derive) the .pt's names are the source's, batch norms folded at
    export unfolded again (export/origin.py), so the source module loads it strictly."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".mtm", ".npz", ".pt", ".pth"):
        raise ValueError(f"{out}: pull writes .mtm, .npz or .pt files")
    if like is not None and suffix not in (".pt", ".pth"):
        raise ValueError(f"{out}: --like names a PyTorch state dict: pull to a .pt file")
    if device.port is None:
        data = Path(path).read_bytes()
    else:
        with device.uart() as port:
            data = pull_bytes(port, path)
    with tempfile.TemporaryDirectory(prefix="mcutrain-pull-") as tmp:
        mtm = out if suffix == ".mtm" else Path(tmp) / "model.mtm"
        mtm.write_bytes(data)
        read_model(mtm)  # a clear error now if it is not a valid model
        if suffix == ".npz":
            from .export import mtm_to_npz

            mtm_to_npz(mtm, out, layout)
        elif suffix in (".pt", ".pth"):
            from .export import mtm_to_torch_state_dict

            mtm_to_torch_state_dict(mtm, out, like=like)
    return out
