"""Export to .mtm from numpy and PyTorch, and back: layouts, batch-norm folding, the Flatten
column permutation, parity with the numpy reference running the exported file, clear refusals."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from mcutrain.export import (
    GRAPH_KEY,
    export_npz,
    fold_batchnorm,
    mtm_to_npz,
    spec_from_arrays,
    spec_to_npz,
)
from mcutrain.formats import (
    ModelSpec,
    SpecError,
    build_reference_model,
    expected_tensors,
    layer,
    load_reference_model,
    read_model,
    residual,
    sequential,
    write_model,
)
from mcutrain.reference import functional as F

RNG = np.random.default_rng(3)
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(
    not HAVE_TORCH, reason="PyTorch not installed (pip install -r host/requirements-torch.txt)"
)


def bn_graph() -> dict:
    return sequential(
        layer("Conv2d", in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1),
        layer("BatchNorm2d", num_features=4),
        layer("ReLU"),
        residual(sequential(layer("Conv2d", in_channels=4, out_channels=4, kernel_size=3,
                                  padding=1, bias=False), layer("BatchNorm2d", num_features=4)),
                 sequential(layer("Conv2d", in_channels=4, out_channels=4, kernel_size=1))),
        layer("GlobalAvgPool"),
        layer("Linear", in_features=4, out_features=2),
        layer("BatchNorm2d", num_features=2),
    )  # fmt: skip


def random_tensors(graph: dict) -> dict[str, np.ndarray]:
    t = {k: RNG.normal(size=s).astype(np.float32) for k, s in expected_tensors(graph).items()}
    for k in t:
        if k.endswith("running_var"):
            t[k] = np.abs(t[k]) + 0.5
    return t


# ---------------------------------------------------------------------------------------------
# numpy


def test_export_npz_device_layout_writes_the_same_tensors(tmp_path):
    graph = bn_graph()
    tensors = random_tensors(graph)
    np.savez(tmp_path / "w.npz", **tensors)
    export_npz(tmp_path / "w.npz", tmp_path / "m.mtm", graph, input_shape=(8, 8, 3))
    back = read_model(tmp_path / "m.mtm")
    assert back.input_shape == (8, 8, 3)
    assert all(np.array_equal(back.tensors[k], v) for k, v in tensors.items())


def test_fold_batchnorm_computes_the_same_in_inference_mode():
    graph = bn_graph()
    spec = ModelSpec(graph, random_tensors(graph), input_shape=(8, 8, 3))
    folded = fold_batchnorm(spec)
    kinds = [n["type"] for n in folded.graph["layers"]]
    assert kinds == ["Conv2d", "ReLU", "Residual", "GlobalAvgPool", "Linear"]
    assert folded.graph["layers"][2]["body"]["layers"][0]["config"]["bias"] is True
    folded.validate()
    x = RNG.normal(size=(2, 8, 8, 3))
    want = build_reference_model(spec).predict(x)
    got = build_reference_model(folded).predict(x)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 weights after folding


def test_torch_layout_npz_is_transposed_and_flatten_columns_permuted(tmp_path):
    """A state dict in PyTorch's layouts (OIHW; Linear columns in C, H, W order) exports to a
    model computing what PyTorch computes, checked here with numpy alone."""
    graph = sequential(
        layer("Conv2d", in_channels=2, out_channels=3, kernel_size=(3, 2), padding=1),
        layer("ReLU"), layer("Flatten"), layer("Linear", in_features=3 * 4 * 5, out_features=4),
    )  # fmt: skip
    w_oihw = RNG.normal(size=(3, 2, 3, 2)).astype(np.float32)
    lin = RNG.normal(size=(4, 60)).astype(np.float32)
    torch_sd = {"0.weight": w_oihw, "0.bias": np.ones(3, np.float32), "3.weight": lin,
                "3.bias": np.zeros(4, np.float32)}  # fmt: skip
    spec = spec_from_arrays(graph, torch_sd, input_shape=(4, 4, 2), layout="torch")
    x_nchw = RNG.normal(size=(2, 2, 4, 4))
    conv = F.conv2d_forward(x_nchw.transpose(0, 2, 3, 1), w_oihw.transpose(0, 2, 3, 1), np.ones(3),
                            padding=1)  # fmt: skip
    flat_nchw = F.relu_forward(conv).transpose(0, 3, 1, 2).reshape(2, -1)  # PyTorch's flatten
    want = flat_nchw @ lin.T
    got = build_reference_model(spec).predict(x_nchw.transpose(0, 2, 3, 1))
    assert np.allclose(got, want, rtol=1e-10, atol=1e-10)
    # ...and pulling back in torch layout restores the original arrays.
    spec_to_npz(spec, tmp_path / "back.npz", layout="torch")
    with np.load(tmp_path / "back.npz") as z:
        assert np.array_equal(z["0.weight"], w_oihw) and np.array_equal(z["3.weight"], lin)
        assert GRAPH_KEY in z.files


def test_torch_layout_linear_after_flatten_needs_the_input_shape():
    graph = sequential(layer("Conv2d", in_channels=1, out_channels=2, kernel_size=1),
                       layer("Flatten"), layer("Linear", in_features=8, out_features=1))
    sd = {"0.weight": np.ones((2, 1, 1, 1)), "0.bias": np.ones(2), "2.weight": np.ones((1, 8)),
          "2.bias": np.ones(1)}  # fmt: skip
    with pytest.raises(SpecError, match=r"model.2 \(Linear\) follows a Flatten .* input shape"):
        spec_from_arrays(graph, sd, layout="torch")


def test_pull_to_npz_and_export_again_gives_the_identical_file(tmp_path):
    graph = bn_graph()
    write_model(tmp_path / "m.mtm", ModelSpec(graph, random_tensors(graph), (8, 8, 3), {"k": 1}))
    mtm_to_npz(tmp_path / "m.mtm", tmp_path / "m.npz")
    export_npz(tmp_path / "m.npz", tmp_path / "again.mtm")  # graph from the npz's __graph__
    assert (tmp_path / "again.mtm").read_bytes() == (tmp_path / "m.mtm").read_bytes()


# ---------------------------------------------------------------------------------------------
# PyTorch


def torch_cnn():
    """A small CNN with every exportable layer kind: BN after convs (folded), a residual block
    with an identity and one with a projection shortcut, depthwise conv, pooling, Flatten."""
    import torch
    from mcutrain.export.torch_modules import Residual
    from torch import nn

    torch.manual_seed(0)

    def bn(c: int) -> nn.BatchNorm2d:
        b = nn.BatchNorm2d(c)
        with torch.no_grad():  # non-trivial statistics, as after training
            b.running_mean.uniform_(-0.5, 0.5)
            b.running_var.uniform_(0.5, 2.0)
            b.weight.uniform_(0.5, 1.5)
            b.bias.uniform_(-0.5, 0.5)
        return b

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), bn(8), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), bn(8), nn.ReLU6(),
                               nn.Conv2d(8, 8, 1), bn(8))),
        nn.ReLU(),
        nn.MaxPool2d(2),
        Residual(nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), bn(12), nn.ReLU()),
                 shortcut=nn.Sequential(nn.Conv2d(8, 12, 1, stride=2), bn(12))),
        nn.AvgPool2d(2, stride=1),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(12 * 2 * 2, 10),
    ).eval()  # fmt: skip


@needs_torch
@pytest.mark.parametrize("fold_bn", [True, False])
def test_torch_cnn_with_residuals_matches_reference_running_the_exported_mtm(tmp_path, fold_bn):
    import torch
    from mcutrain.export import export_torch

    model = torch_cnn()
    spec = export_torch(model, tmp_path / "m.mtm", input_shape=(1, 12, 12), fold_bn=fold_bn)
    kinds = [n["type"] for n in spec.graph["layers"]]
    assert ("BatchNorm2d" in kinds) != fold_bn and "Dropout" not in kinds
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        want = model(x).numpy()
    got = load_reference_model(tmp_path / "m.mtm").predict(x.permute(0, 2, 3, 1).numpy())
    # PyTorch computes in float32 (outputs ~1): a few float32 ulps of accumulated rounding.
    assert np.abs(got - want).max() < 1e-4


@needs_torch
def test_torch_conv1d_model_with_batchnorm1d_and_global_pool(tmp_path):
    import torch
    from mcutrain.export import export_torch
    from torch import nn

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(2, 6, 5, stride=2, padding=2), nn.BatchNorm1d(6), nn.ReLU(),
                          nn.Conv1d(6, 6, 3, padding="same", groups=3), nn.ReLU(),
                          nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(6, 3),
                          nn.Softmax(dim=1)).eval()  # fmt: skip
    export_torch(model, tmp_path / "k.mtm")  # no input shape needed: no spatial Flatten
    x = torch.randn(3, 2, 40)
    with torch.no_grad():
        want = model(x).numpy()
    got = load_reference_model(tmp_path / "k.mtm").predict(x.permute(0, 2, 1).numpy())
    assert np.abs(got - want).max() < 1e-5  # softmax outputs in [0, 1]


@needs_torch
def test_unsupported_torch_layers_are_refused_naming_them():
    from mcutrain.export import torch_to_spec
    from torch import nn

    with pytest.raises(SpecError, match=r"cannot export layer '1\.2' \(GELU\)"):
        torch_to_spec(nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.ReLU(),
                                                                  nn.GELU())))  # fmt: skip
    with pytest.raises(SpecError, match=r"'0' \(Conv2d\): dilation"):
        torch_to_spec(nn.Sequential(nn.Conv2d(1, 1, 3, dilation=2)))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.conv(x) * 2

    # A custom module is traced (torch.fx): the refusal names the operator inside it.
    with pytest.raises(SpecError, match=r"module '0' \(Block\) node 2 'mul' is not supported"):
        torch_to_spec(nn.Sequential(Block()))


@needs_torch
def test_pull_gives_a_torch_state_dict_and_module_computing_the_same(tmp_path):
    import torch
    from mcutrain.export import export_torch, mtm_to_torch_state_dict, spec_to_torch_module

    model = torch_cnn()
    export_torch(model, tmp_path / "m.mtm", input_shape=(1, 12, 12), fold_bn=False)
    state = mtm_to_torch_state_dict(tmp_path / "m.mtm", tmp_path / "m.pt")
    # Unfolded, only the Dropout before the last Linear is dropped, so only that Linear's
    # names shift: everything else matches the original model's state dict.
    original = model.state_dict()
    for name, value in state.items():
        if name in original:
            assert torch.equal(original[name], value), name
    rebuilt = spec_to_torch_module(read_model(tmp_path / "m.mtm"))
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-5)
    assert set(torch.load(tmp_path / "m.pt")) == set(state)


@needs_torch
def test_export_a_torch_state_dict_with_its_graph(tmp_path):
    import torch
    from mcutrain.export import export_torch, spec_to_torch_module

    graph = bn_graph()
    module = spec_to_torch_module(ModelSpec(graph, random_tensors(graph), (8, 8, 3)))
    spec = export_torch(module.state_dict(), tmp_path / "s.mtm", graph=graph,
                        input_shape=(3, 8, 8), fold_bn=False)  # fmt: skip
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = module(x).numpy()
    got = build_reference_model(spec).predict(x.permute(0, 2, 3, 1).numpy())
    assert np.abs(got - want).max() < 1e-4
