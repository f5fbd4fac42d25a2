"""`mcutrain export` from a whole pickled module, TorchScript, ONNX and a state dict + graph:
the derived graph computes what the PyTorch module does (run by the numpy reference on the
exported .mtm), unsupported operators and attributes are refused by name and position, and
`pull --like` gives a state dict the original module loads strictly (batch norms unfolded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from mcutrain.export import derive, export_torch, model_kind, mtm_to_torch_state_dict
from mcutrain.formats import SpecError, load_reference_model, read_model, write_model
from mcutrain.push import prepare_model
from onnx import TensorProto, helper, numpy_helper
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # export_models, for torch.load
from export_models import (
    MODELS,
    ConvBlock,
    randomize_bn,
)


def save_source(model: nn.Module, kind: str, shape: tuple[int, ...], path: Path) -> Path:
    if kind == "module":
        torch.save(model, path)
    elif kind == "torchscript":
        torch.jit.save(torch.jit.script(model), path)
    elif kind == "onnx":
        torch.onnx.export(model, (torch.zeros(1, *shape),), path, dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                          input_names=["x"])  # fmt: skip
    return path


def run_mtm(path: Path, x: torch.Tensor) -> np.ndarray:
    xd = x.numpy()
    xd = np.moveaxis(xd, 1, -1) if xd.ndim > 2 else xd  # NCHW -> the device's NHWC
    return load_reference_model(path).predict(xd)


SOURCES = ["module", "torchscript", "onnx"]


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "kept"])
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_exported_mtm_matches_the_torch_module(tmp_path, arch, source, fold):
    model, shape = MODELS[arch]()
    src = save_source(model, source, shape, tmp_path / f"m.{source}")
    assert model_kind(src) == source
    spec = prepare_model(src, tmp_path / "m.mtm", input_shape=None if source == "onnx" else shape,
                         fold_bn=fold)  # fmt: skip
    kinds = json.dumps(spec.graph)
    assert ("BatchNorm2d" in kinds) == (not fold and arch != "mlp")
    x = torch.randn(5, *shape)
    with torch.no_grad():
        want = model(x).numpy()
    got = run_mtm(tmp_path / "m.mtm", x)
    # PyTorch runs float32, the reference float64 on float32 weights; outputs are O(1) and the
    # deepest model sums ~150 products per output over 6 layers: float32 rounding stays <1e-5
    # relative; folding adds one more float32 rounding of each weight.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_residual_blocks_become_residual_nodes_with_the_right_shortcuts(tmp_path):
    model, shape = MODELS["resnet"]()
    spec = derive(model, shape).spec
    blocks = [n for n in spec.graph["layers"] if n["type"] == "Residual"]
    assert len(blocks) == 2
    assert blocks[0]["shortcut"] is None  # identity
    assert [n["type"] for n in blocks[1]["shortcut"]["layers"]] == ["Conv2d", "BatchNorm2d"]


def test_state_dict_with_graph_uses_the_graph_files_own_input_shape(tmp_path):
    # Issue 20: the graph's stored input shape used to be ignored for a .pt state dict, so a
    # Linear after a spatial Flatten could not be converted without --input-shape.
    model, shape = MODELS["cnn"]()
    spec = export_torch(model, tmp_path / "a.mtm", input_shape=shape, fold_bn=False)
    graph = tmp_path / "g.json"
    graph.write_text(json.dumps({"model": spec.graph, "input_shape": list(spec.input_shape)},
                                default=list))  # fmt: skip
    torch.save(mtm_to_torch_state_dict(tmp_path / "a.mtm"), tmp_path / "w.pt")
    assert model_kind(tmp_path / "w.pt") == "state_dict"
    again = prepare_model(tmp_path / "w.pt", tmp_path / "b.mtm", graph=graph, fold_bn=False)
    assert again.input_shape == spec.input_shape
    x = torch.randn(3, *shape)
    np.testing.assert_allclose(run_mtm(tmp_path / "b.mtm", x), run_mtm(tmp_path / "a.mtm", x),
                               rtol=0, atol=1e-6)  # the same float32 weights  # fmt: skip


def test_a_state_dict_without_graph_says_what_else_works(tmp_path):
    model, _ = MODELS["mlp"]()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match="needs --graph.*whole module"):
        prepare_model(tmp_path / "w.pt", tmp_path / "w.mtm")


def test_kind_is_told_by_content_not_suffix(tmp_path):
    model, shape = MODELS["mlp"]()
    save_source(model, "onnx", shape, tmp_path / "model.pt")
    save_source(model, "torchscript", shape, tmp_path / "model.onnx")
    torch.save(model, tmp_path / "model.bin")
    assert model_kind(tmp_path / "model.pt") == "onnx"
    assert model_kind(tmp_path / "model.onnx") == "torchscript"
    assert model_kind(tmp_path / "model.bin") == "module"
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(ValueError, match="not a model file"):
        model_kind(tmp_path / "junk.onnx")


# ---------------------------------------------------------------------------------------------
# Refusals


def onnx_model(nodes, inits, in_shape=(1, 2, 6, 6), out_shape=None):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


W = {"w": np.ones((2, 2, 3, 3)), "b": np.zeros(2)}


@pytest.mark.parametrize("node, message", [
    (helper.make_node("Sigmoid", ["c"], ["y"], name="/layer2/act/Sigmoid"),
     r"node 1 'Sigmoid' \(/layer2/act/Sigmoid\) is not supported: supported are Conv"),
    (helper.make_node("Conv", ["c", "w", "b"], ["y"], name="/c2", dilations=[2, 2]),
     r"node 1 'Conv' \(/c2\) is not supported with dilations \[2, 2\]"),
    (helper.make_node("Conv", ["c", "w", "b"], ["y"], name="/c2", pads=[1, 1, 0, 0]),
     r"node 1 'Conv' \(/c2\) is not supported with asymmetric pads \[1, 1, 0, 0\]"),
    (helper.make_node("MaxPool", ["c"], ["y"], name="/p", kernel_shape=[2, 2], ceil_mode=1),
     r"node 1 'MaxPool' \(/p\) is not supported with ceil_mode 1"),
    (helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="/clip"),
     r"node 1 'Clip' \(/clip\) is not supported with min -1.0, max 1.0"),
    (helper.make_node("AveragePool", ["c"], ["y"], name="/a", kernel_shape=[3, 3],
                      pads=[1, 1, 1, 1]),
     r"node 1 'AveragePool' \(/a\) is not supported with padding and count_include_pad 0"),
])  # fmt: skip
def test_onnx_unsupported_operators_and_attributes_are_refused_by_name_and_position(node, message):
    first = helper.make_node("Conv", ["x", "w", "b"], ["c"], name="/c1", pads=[1, 1, 1, 1])
    model = onnx_model([first, node], {**W, "lo": -1.0, "hi": 1.0})
    with pytest.raises(SpecError, match=message):
        derive(model)


def test_onnx_branches_that_are_not_a_residual_block_are_refused():
    c1 = helper.make_node("Conv", ["x", "w", "b"], ["c"], name="/c1", pads=[1, 1, 1, 1])
    r1 = helper.make_node("Relu", ["c"], ["r1"], name="/r1")
    r2 = helper.make_node("Relu", ["c"], ["r2"], name="/r2")
    r3 = helper.make_node("Relu", ["c"], ["r3"], name="/r3")
    add = helper.make_node("Add", ["r1", "r2"], ["y"], name="/add")
    with pytest.raises(SpecError, match=r"node 3 'Relu' \(/r3\) is not supported: a value used "
                       "by 3 nodes"):  # fmt: skip
        derive(onnx_model([c1, r1, r2, r3, add], W))


def test_torch_unsupported_function_and_module_are_refused_by_name_and_position():
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return torch.sigmoid(self.conv(x))

    with pytest.raises(SpecError, match=r"module 'layer2' \(Gate\) node 2 'sigmoid'.* is not "
                       "supported: supported are submodules"):  # fmt: skip
        derive(nn.Sequential(OrderedDict([("layer1", nn.Conv2d(2, 2, 1)), ("layer2", Gate())])))
    with pytest.raises(SpecError, match=r"'1' \(Conv2d\): padding_mode 'reflect'"):
        derive(nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")))
    with pytest.raises(SpecError, match=r"'0' \(MaxPool2d\): ceil_mode"):
        derive(nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)))


def test_torchscript_without_input_shape_says_to_give_one(tmp_path):
    model, shape = MODELS["mlp"]()
    src = save_source(model, "torchscript", shape, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="TorchScript model needs --input-shape"):
        prepare_model(src, tmp_path / "m.mtm")


# ---------------------------------------------------------------------------------------------
# Pull back into the original module


def train_on_host(path: Path) -> None:
    """Stand-in for the board's training: perturb every tensor of the .mtm."""
    spec = read_model(path)
    rng = np.random.default_rng(7)
    for k, v in spec.tensors.items():
        if k.endswith("running_var"):
            spec.tensors[k] = (v * rng.uniform(0.8, 1.2, v.shape)).astype(np.float32)
        else:
            spec.tensors[k] = (v + rng.normal(0, 0.05, v.shape)).astype(np.float32)
    write_model(path, spec)


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "kept"])
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("arch", ["resnet", "dscnn"])
def test_pull_like_the_source_loads_strictly_and_computes_the_trained_model(
    tmp_path, arch, source, fold
):
    model, shape = MODELS[arch]()
    src = save_source(model, source, shape, tmp_path / f"m.{source}")
    prepare_model(src, tmp_path / "m.mtm", input_shape=shape, fold_bn=fold)
    train_on_host(tmp_path / "m.mtm")
    state = mtm_to_torch_state_dict(tmp_path / "m.mtm", like=src)
    if source == "onnx":
        # ONNX keeps the module's parameter names, not its buffers' (num_batches_tracked).
        state.update({k: v for k, v in model.state_dict().items()
                      if k.endswith("num_batches_tracked")})  # fmt: skip
    model.load_state_dict(state, strict=True)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        got = model(x).numpy()
    # Unfolding divides by s = gamma / sqrt(var + eps) (~1 here) in float64 then rounds to
    # float32: the module's output equals the trained folded model's to float32 rounding.
    np.testing.assert_allclose(got, run_mtm(tmp_path / "m.mtm", x), rtol=1e-4, atol=1e-4)


def test_pull_like_a_different_model_is_refused(tmp_path):
    model, shape = MODELS["resnet"]()
    export_torch(model, tmp_path / "m.mtm", input_shape=shape)
    other, _ = MODELS["dscnn"]()
    with pytest.raises(ValueError, match="not the one exported from the source"):
        mtm_to_torch_state_dict(tmp_path / "m.mtm", like=other)


def test_unfold_keeps_a_zero_gamma_channel_exact(tmp_path):
    model = nn.Sequential(ConvBlock(2, 3)).eval()
    randomize_bn(model)
    with torch.no_grad():
        model[0].bn.weight[1] = 0.0
    export_torch(model, tmp_path / "m.mtm", input_shape=(2, 5, 5))
    train_on_host(tmp_path / "m.mtm")
    model.load_state_dict(mtm_to_torch_state_dict(tmp_path / "m.mtm", like=model))
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        got = model(x).permute(0, 2, 3, 1).numpy()  # NCHW -> the device's NHWC
    np.testing.assert_allclose(got, run_mtm(tmp_path / "m.mtm", x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# CLI


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "host") + os.pathsep + str(ROOT / "tests")}
    return subprocess.run([sys.executable, "-m", "mcutrain", *args], cwd=cwd, env=env, check=False,
                          capture_output=True, text=True, timeout=240)  # fmt: skip


def test_cli_exports_a_whole_module_and_an_onnx_file_and_refuses_cleanly(tmp_path):
    model, shape = MODELS["resnet"]()
    torch.save(model, tmp_path / "net.pt")
    save_source(model, "onnx", shape, tmp_path / "net.onnx")
    r = cli("export", "net.pt", "-o", "a.mtm", "--input-shape", ",".join(map(str, shape)),
            "--keep-batchnorm", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "wrote a.mtm" in r.stdout
    assert "BatchNorm2d" in json.dumps(read_model(tmp_path / "a.mtm").graph)
    r = cli("export", "net.onnx", cwd=tmp_path)  # input shape from the ONNX input
    assert r.returncode == 0, r.stderr
    assert read_model(tmp_path / "net.mtm").input_shape == (shape[1], shape[2], shape[0])
    assert "BatchNorm2d" not in json.dumps(read_model(tmp_path / "net.mtm").graph)
    bad = onnx_model([helper.make_node("Conv", ["x", "w", "b"], ["c"], name="/c1"),
                      helper.make_node("Sigmoid", ["c"], ["y"], name="/act/Sigmoid")], W)
    onnx.save(bad, tmp_path / "bad.onnx")
    r = cli("export", "bad.onnx", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("mcutrain: error: node 1 'Sigmoid' (/act/Sigmoid) is not "
                               "supported")  # fmt: skip
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------
# On a board: export -> train there -> pull --like -> the original module


DEVICE_TRAIN = """
import mcutrain as mt
model = mt.load({mtm!r})
opt = mt.SGD(model, lr=0.05)
x = mt.Tensor(bytes.fromhex({x!r}), {shape!r})
for _ in range(3):
    model.train_step(x, {labels!r}, mt.cross_entropy, opt)
model.eval()
print("@out", model(x).tolist())
mt.save(model, {mtm!r})
"""


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "kept"])
def test_board_round_trip_export_train_pull_loads_into_the_original_module(tmp_path, fold):
    from conftest import require_firmware

    require_firmware("unix")
    model, shape = MODELS["resnet"]()
    torch.save(model, tmp_path / "net.pt")
    flag = "--fold-batchnorm" if fold else "--keep-batchnorm"
    r = cli("export", "net.pt", "-o", "net.mtm", "--input-shape", "3,8,8", flag, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    x = torch.randn(4, *shape)
    xd = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
    (tmp_path / "train.py").write_text(DEVICE_TRAIN.format(
        mtm=str(tmp_path / "net.mtm"), x=xd.tobytes().hex(), shape=xd.shape, labels=[0, 1, 2, 3]))
    r = cli("run", "train.py", "--board", "unix", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    board_out = np.array(json.loads(next(line for line in r.stdout.splitlines()
                                         if line.startswith("@out"))[5:]))  # fmt: skip
    r = cli("pull", str(tmp_path / "net.mtm"), "back.pt", "--board", "unix", "--like", "net.pt",
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(torch.load(tmp_path / "back.pt"), strict=True)
    assert not torch.equal(before["fc.weight"], model.fc.weight)  # it did train
    with torch.no_grad():
        got = model(x).numpy()
    # The board computes in float32 as PyTorch does; unfolding rounds each weight once more.
    np.testing.assert_allclose(got, board_out, rtol=1e-4, atol=1e-4)
