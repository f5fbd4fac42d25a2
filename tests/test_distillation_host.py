"""Teacher logits on the host: mcutrain.teacher from an .mtm (numpy reference), a whole
PyTorch module and TorchScript, written into the .mtd by prepare_dataset and by
`mcutrain push-dataset --teacher`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mcutrain.formats import (
    DatasetArrays,
    ModelSpec,
    layer,
    read_dataset,
    read_dataset_header,
    sequential,
    write_dataset,
    write_model,
)
from mcutrain.push import prepare_dataset
from mcutrain.teacher import BATCH, load_teacher, teacher_logits, with_teacher_logits
from test_cli import mcutrain_cli

RNG = np.random.default_rng(41)


def torch_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(3 * 4 * 4, 5))  # fmt: skip


def images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n channels-last (4, 4, 2) samples and labels in [0, 5)."""
    return RNG.standard_normal((n, 4, 4, 2)).astype(np.float32), RNG.integers(0, 5, n)


def torch_reference(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).double().numpy()


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # still how TorchScript is saved and loaded
@pytest.mark.parametrize("form", ["module", "torchscript"])
def test_torch_teacher_gets_channels_first_samples_in_batches(tmp_path, form):
    module = torch_cnn().eval()
    path = tmp_path / "teacher.pt"
    if form == "module":
        torch.save(module, path)
    else:
        torch.jit.script(module).save(str(path))
    x, y = images(BATCH + 7)  # more than one batch
    got = teacher_logits(load_teacher(path), DatasetArrays(x, y))
    # The same fp32 module on the same inputs: only batching may reorder sums (~1e-6).
    np.testing.assert_allclose(got, torch_reference(module, x), rtol=1e-5, atol=1e-5)


def linear_mtm(tmp_path) -> tuple[object, np.ndarray, np.ndarray]:
    w = RNG.standard_normal((5, 6)).astype(np.float32)
    b = RNG.standard_normal(5).astype(np.float32)
    spec = ModelSpec(graph=sequential(layer("Linear", in_features=6, out_features=5)),
                     tensors={"0.weight": w, "0.bias": b}, input_shape=(6,))  # fmt: skip
    path = tmp_path / "teacher.mtm"
    write_model(path, spec)
    return path, w, b


def test_mtm_teacher_runs_reference_model(tmp_path):
    path, w, b = linear_mtm(tmp_path)
    x = RNG.standard_normal((9, 6)).astype(np.float32)
    got = teacher_logits(load_teacher(path), DatasetArrays(x, RNG.integers(0, 5, 9)))
    np.testing.assert_allclose(got, x.astype(np.float64) @ w.T + b, rtol=1e-6, atol=1e-6)


def test_prepare_dataset_writes_teacher_logits_from_npz_and_mtd(tmp_path):
    module = torch_cnn().eval()
    teacher = tmp_path / "teacher.pt"
    torch.save(module, teacher)
    x, y = images(20)
    src = tmp_path / "small.npz"
    np.savez(src, x=x, y=y)
    out = tmp_path / "small.mtd"
    header = prepare_dataset(src, out, teacher=teacher)
    assert header.teacher_dtype == "float32" and header.num_classes == 5
    data = read_dataset(out)
    np.testing.assert_allclose(data.teacher_logits, torch_reference(module, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data.x, x)

    # An existing int8 .mtd keeps its samples (and scale) and gains the logits of them.
    plain = tmp_path / "plain.mtd"
    write_dataset(plain, x, y, dtype="int8")
    again = tmp_path / "again.mtd"
    header = prepare_dataset(plain, again, teacher=teacher)
    before, after = read_dataset(plain), read_dataset(again)
    assert header.dtype == "int8" and header.scale == read_dataset_header(plain).scale
    np.testing.assert_array_equal(after.x, before.x)
    np.testing.assert_allclose(after.teacher_logits, torch_reference(module, before.float_x()), rtol=1e-5,
                               atol=1e-5)  # fmt: skip


def test_bad_teachers_are_refused_clearly(tmp_path):
    x, y = images(4)
    state = tmp_path / "state.pt"
    torch.save(torch_cnn().state_dict(), state)
    with pytest.raises(ValueError, match="a teacher must be a whole module .* not a OrderedDict"):
        load_teacher(state)
    with pytest.raises(ValueError, match="unknown teacher model"):
        load_teacher(tmp_path / "teacher.onnx")
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 7)), wrong)
    with pytest.raises(ValueError, match=r"teacher_logits have shape \(4, 7\), expected \(4, 5\)"):
        write_dataset(tmp_path / "x.mtd", x, y, num_classes=5,
                      teacher_logits=with_teacher_logits(DatasetArrays(x, y), wrong).teacher_logits)  # fmt: skip
    with pytest.raises(ValueError, match="need class labels"):
        teacher_logits(load_teacher(wrong), DatasetArrays(x, np.zeros((4, 2), np.float32)))


def test_cli_push_dataset_teacher_writes_logits_the_board_reads(tmp_path):
    path, w, b = linear_mtm(tmp_path)
    x = RNG.standard_normal((30, 6)).astype(np.float32)
    y = (x @ w.T + b).argmax(axis=1)
    src = tmp_path / "kd.npz"
    np.savez(src, x=x, y=y, class_names=np.array(list("abcde")))
    dest = tmp_path / "board" / "kd.mtd"
    done = mcutrain_cli("push-dataset", str(src), "--board", "unix", "--dest", str(dest), "--teacher", str(path))
    assert done.returncode == 0, done.stderr
    data = read_dataset(dest)
    np.testing.assert_allclose(data.teacher_logits, x.astype(np.float64) @ w.T + b, rtol=1e-5, atol=1e-5)

    done = mcutrain_cli("push-dataset", str(src), "--board", "unix", "--dest", str(dest),
                        "--teacher", str(tmp_path / "missing.pt"))  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "missing.pt" in done.stderr
