"""Student design under a board's limits (host/mcutrain/design/search.py, `mcutrain design`,
docs/design.md): the search keeps only candidates within every limit and ranks them by our
rule; the written .mtm and device Python build the model whose memory() the search predicted;
the CLI end to end with .mtm and PyTorch teachers; clear errors; and on qemu-m4f the chosen
students' measured train-step instructions against the prediction."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, host_env, require_firmware
from mcutrain.design import DesignError, Limits, design_student, downscale, read_teacher, write_student
from mcutrain.design.arch import FAMILIES, Arch, conv1d, conv2d, flatten, global_avgpool, linear, maxpool2d, relu
from mcutrain.design.calibrate import model_script, run_script
from mcutrain.design.costs import load_fits, predict_cost
from mcutrain.design.memory import predict_memory
from mcutrain.design.search import LIMIT_NAMES, arch_to_spec, rank_key, search
from mcutrain.formats.mtm import read_model, write_model
from mcutrain.runner import open_target, run_on

IMAGE_TEACHER = Arch((conv2d(1, 32, 3, padding=1), relu(), maxpool2d(2), conv2d(32, 64, 3, padding=1), relu(),
                      maxpool2d(2), flatten(), linear(7 * 7 * 64, 10)), (28, 28, 1))
SEQUENCE_TEACHER = Arch((conv1d(3, 32, 5, padding=2), relu(), conv1d(32, 32, 5, stride=2, padding=2), relu(),
                         global_avgpool(), linear(32, 6)), (64, 3))
FEATURE_TEACHER = Arch((linear(40, 128), relu(), linear(128, 5)), (40,))
TEACHERS = {"dscnn": IMAGE_TEACHER, "cnn": IMAGE_TEACHER, "mlp": FEATURE_TEACHER, "conv1d": SEQUENCE_TEACHER}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("teachers")
    out = {}
    for fam, arch in TEACHERS.items():
        out[fam] = d / f"{fam}_teacher.mtm"
        write_model(out[fam], arch_to_spec(arch, seed=1))
    return out


def test_read_teacher_gives_input_shape_classes_and_parameters(teachers: dict[str, Path]) -> None:
    t = read_teacher(teachers["cnn"])
    assert t.input_shape == (28, 28, 1) and t.classes == 10
    assert t.parameters == 32 * 9 + 32 + 64 * 9 * 32 + 64 + 7 * 7 * 64 * 10 + 10


@pytest.mark.parametrize("family", FAMILIES)
def test_search_keeps_exactly_the_candidates_within_every_limit(family: str, teachers: dict[str, Path]) -> None:
    # limits that cut the grid in the middle: some candidates fit, some do not
    result = design_student(teachers[family], "nrf52840", family, ram=48 * 1024, max_step_ms=20, max_infer_ms=8)
    assert set(result.limits) == set(LIMIT_NAMES)
    assert result.limits["train_ram"] == 48 * 1024 and result.limits["step_ms"] == 20
    kept = {id(c) for c in result.ranked}
    assert 0 < len(kept) < len(result.considered)
    for c in result.considered:
        within = all((c.value(k) or 0) <= v for k, v in result.limits.items())
        assert within == (id(c) in kept), c.arch.name
        # the predicted numbers are the cost model's own
        assert c.train_ram == predict_memory(c.arch, gemm_pack=True)["total"]
        assert c.infer_ram == predict_memory(c.arch, True, gemm_pack=True)["total"]
        assert c.arch.classes == TEACHERS[family].classes
    for c in result.ranked:
        assert c.binding in result.limits and 0 < c.usage[c.binding] <= 1
        assert c.usage[c.binding] == max(c.usage.values())


def test_default_limits_are_the_profile_heap_and_the_flash_the_firmware_leaves(teachers: dict[str, Path]) -> None:
    result = design_student(teachers["cnn"], "stm32f407", "cnn")
    assert result.limits["train_ram"] == result.limits["infer_ram"] == 100 * 1024  # the profile's heap
    assert 0 < result.limits["flash"] < 1024 * 1024
    assert "step_ms" not in result.limits and "infer_ms" not in result.limits


def test_ranking_prefers_parameters_then_macs_then_lower_step_time(teachers: dict[str, Path]) -> None:
    result = design_student(teachers["dscnn"], "nrf52840", "dscnn", max_step_ms=100)
    ranked = result.ranked
    assert [c.rank for c in ranked] == list(range(1, len(ranked) + 1))
    assert ranked == sorted(ranked, key=rank_key)
    assert ranked[0].parameters == max(c.parameters for c in ranked)
    for a, b in zip(ranked, ranked[1:]):
        assert (a.parameters, a.macs) >= (b.parameters, b.macs)
        if (a.parameters, a.macs) == (b.parameters, b.macs):
            assert a.step_ms is not None and b.step_ms is not None and a.step_ms <= b.step_ms
    # a tighter time limit can only pick a student no larger
    tighter = design_student(teachers["dscnn"], "nrf52840", "dscnn", max_step_ms=20)
    assert tighter.ranked[0].parameters <= ranked[0].parameters
    assert all(c.step_ms is not None and c.step_ms <= 20 for c in tighter.ranked)


def test_times_are_estimated_cycles_at_the_profile_clock(teachers: dict[str, Path]) -> None:
    fits = load_fits("qemu-m4f")
    fast = design_student(teachers["cnn"], "stm32h743", "cnn").ranked[0]
    cost = predict_cost(fast.arch, fits)
    assert fast.step_ms == pytest.approx(1000 * cost["train_step"]["cycles"] / 480e6)
    assert fast.infer_ms == pytest.approx(1000 * cost["inference"]["cycles"] / 480e6)
    assert fast.step_instructions == cost["train_step"]["instructions"]


def test_downscale_averages_blocks_and_drops_the_remainder() -> None:
    x = np.arange(2 * 5 * 4 * 1, dtype=np.float32).reshape(2, 5, 4, 1)
    y = downscale(x, 2)
    assert y.shape == (2, 2, 2, 1)
    assert y[0, 0, 0, 0] == np.mean(x[0, :2, :2, 0]) and y[1, 1, 1, 0] == np.mean(x[1, 2:4, 2:4, 0])
    s = np.arange(12, dtype=np.int8).reshape(1, 6, 2)
    assert downscale(s, 3).tolist() == [[[2.0, 3.0], [8.0, 9.0]]]
    assert downscale(x, 1) is x


def test_candidates_cover_the_resolutions_and_the_resize_factor_matches(teachers: dict[str, Path]) -> None:
    result = design_student(teachers["cnn"], "stm32h743", "cnn")
    shapes = {(c.resize, c.arch.sample) for c in result.considered}
    assert shapes == {(1, (28, 28, 1)), (2, (14, 14, 1)), (4, (7, 7, 1))}
    seq = design_student(teachers["conv1d"], "stm32h743", "conv1d")
    assert {c.arch.sample for c in seq.considered} == {(64, 3), (32, 3), (16, 3)}
    # a feature vector is not resized
    assert {c.arch.sample for c in design_student(teachers["mlp"], "stm32h743", "mlp").considered} == {(40,)}


# -- the written student ----------------------------------------------------------------------

CHECK_SCRIPT = """
import json
import mcutrain as mt
a = build()
b = mt.load(%r)
mt.SGD(a, lr=0.01)
mt.SGD(b, lr=0.01)
shape = (BATCH,) + INPUT_SHAPE
print('@c', json.dumps([[type(l).__name__, l.config()] for l in a]))
print('@d', json.dumps([[type(l).__name__, l.config()] for l in b]))
print('@m', json.dumps([a.memory(shape), b.memory(shape), a.memory(shape, inference=True)]))
"""


def _tagged(printed: str, tag: str) -> object:
    return next(json.loads(line[len(tag) + 1:]) for line in printed.splitlines() if line.startswith(tag + " "))


@pytest.mark.parametrize("family", FAMILIES)
def test_written_mtm_and_python_build_the_predicted_model_on_unix(family: str, teachers: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    require_firmware("unix")
    result = design_student(teachers[family], "nrf52840", family, ram=64 * 1024, max_step_ms=30)
    chosen = result.ranked[0]
    mtm, py = tmp_path / "student.mtm", tmp_path / "student.py"
    write_student(chosen, mtm, py, result.teacher, seed=3, board="nrf52840")
    spec = read_model(mtm)  # the host reader takes it
    assert spec.input_shape == chosen.arch.sample and spec.output_shape() == (TEACHERS[family].classes,)
    assert spec.meta["design"]["name"] == chosen.arch.name
    # fresh weights within He uniform bounds (not zeros), zero biases
    first = "0." if "0.weight" in spec.tensors else "1."
    w = spec.tensors[first + "weight"]
    assert 1 / np.sqrt(w[0].size) < np.abs(w).max() <= np.sqrt(6 / w[0].size) + 1e-7
    assert not np.any(spec.tensors[first + "bias"])
    with open_target("unix") as target:
        printed = run_on(target, py.read_text() + CHECK_SCRIPT % str(mtm), timeout=60)
    built, loaded = _tagged(printed, "@c"), _tagged(printed, "@d")
    assert built == loaded
    assert [kind for kind, _ in built] == [layer.kind for layer in chosen.arch.layers]  # type: ignore[union-attr]
    train, train_loaded, infer = _tagged(printed, "@m")  # type: ignore[misc]
    assert train == train_loaded == predict_memory(chosen.arch)  # unix: no GEMM packing
    assert infer == predict_memory(chosen.arch, True)
    if family != "dscnn":  # without pointwise convs the packing build plans the same bytes
        assert train["total"] == chosen.train_ram


def test_chosen_students_train_step_instructions_within_10_percent_on_qemu_m4f(teachers: dict[str, Path]) -> None:
    require_firmware("qemu-m4f")
    chosen = [design_student(teachers[f], "qemu-m4f", f, max_step_ms=400).ranked[0] for f in FAMILIES]
    rows, _ = run_script("qemu-m4f", model_script([c.arch for c in chosen]), cycles=False)
    measured = {row[1]: row[2:] for row in rows}
    errors = {}
    for c in chosen:
        step, _, ram = measured[c.arch.name]
        errors[c.arch.name] = (c.step_instructions or 0) / step - 1
        assert ram == c.train_ram, c.arch.name  # the qemu-m4f build packs: exact there too
    print("train-step instruction error of the chosen students:", {k: round(v, 3) for k, v in errors.items()})
    assert all(abs(e) < 0.10 for e in errors.values()), errors


# -- errors -----------------------------------------------------------------------------------

def test_impossible_limit_names_the_tightest(teachers: dict[str, Path]) -> None:
    with pytest.raises(DesignError, match="tightest limit is train-step RAM: even the smallest cnn student needs"):
        design_student(teachers["cnn"], "nrf52840", "cnn", ram=2048)
    with pytest.raises(DesignError, match="tightest limit is train-step time"):
        design_student(teachers["cnn"], "nrf52840", "cnn", max_step_ms=0.01)
    with pytest.raises(DesignError, match="tightest limit is flash"):
        design_student(teachers["cnn"], "nrf52840", "cnn", flash=1000)


def test_bad_arguments_are_refused_clearly(teachers: dict[str, Path], tmp_path: Path) -> None:
    teacher = read_teacher(teachers["cnn"])
    with pytest.raises(DesignError, match="family conv1d takes sequences"):
        search(teacher, "nrf52840", "conv1d")
    with pytest.raises(DesignError, match="unknown family"):
        search(teacher, "nrf52840", "resnet")
    with pytest.raises(ValueError, match="unknown board profile 'nope'"):
        search(teacher, "nope", "cnn")
    with pytest.raises(DesignError, match="must be a positive number"):
        search(teacher, "nrf52840", "cnn", Limits(ram=-5))
    with pytest.raises(DesignError, match="no calibrated cost fits or clock"):
        search(teacher, "esp32c3", "cnn", Limits(max_step_ms=10))
    with pytest.raises(FileNotFoundError):
        read_teacher(tmp_path / "missing.mtm")
    (tmp_path / "t.onnx").write_bytes(b"")
    with pytest.raises(DesignError, match="unknown teacher model"):
        read_teacher(tmp_path / "t.onnx")


# -- the CLI ----------------------------------------------------------------------------------

def mcutrain_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = host_env()
    env["PYTHONPATH"] = str(ROOT / "host")
    return subprocess.run([sys.executable, "-m", "mcutrain", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd)


def test_cli_design_with_an_mtm_teacher_prints_the_table_and_writes_the_student(teachers: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    r = mcutrain_cli("design", "--teacher", str(teachers["dscnn"]), "--board", "nrf52840", "--family", "dscnn",
                     "--ram", "64K", "--max-step-ms", "30", "--top", "5", "-o", "s.mtm", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "10 classes" in lines[0] and "train-step RAM 65,536 B" in lines[1]
    head = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    assert len(lines) - head - 2 == 5 and lines[head + 1].split()[0] == "1"  # 5 rows, then "wrote"
    assert "wrote s.mtm" in lines[-1]
    spec = read_model(tmp_path / "s.mtm")
    assert "def build():" in (tmp_path / "s.py").read_text()
    # --json: the same choice as data, and only JSON on stdout
    j = mcutrain_cli("design", "--teacher", str(teachers["dscnn"]), "--board", "nrf52840", "--family", "dscnn",
                     "--ram", "64K", "--max-step-ms", "30", "--json", "--top", "0", "-o", "j.mtm", cwd=tmp_path)
    assert j.returncode == 0, j.stderr
    doc = json.loads(j.stdout)
    assert doc["board"] == "nrf52840" and doc["teacher"]["classes"] == 10
    assert doc["fit"] == len(doc["candidates"]) and doc["chosen"]["rank"] == 1
    assert doc["chosen"]["name"] == spec.meta["design"]["name"] == lines[head + 1].split()[1]
    assert all(c["train_ram"] <= 65536 and c["step_ms"] <= 30 for c in doc["candidates"])


def test_cli_design_with_a_pytorch_teacher(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 4))
    torch.save(model, tmp_path / "teacher.pt")
    r = mcutrain_cli("design", "--teacher", "teacher.pt", "--board", "stm32f407", "--family", "cnn",
                     "--input-shape", "1,16,16", "--pick", "2", "-o", "student.mtm", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "input 16x16x1, 4 classes, 2,132 parameters" in r.stdout
    spec = read_model(tmp_path / "student.mtm")
    assert spec.output_shape() == (4,) and spec.meta["design"]["rank"] == 2
    # a conv teacher's file does not say its input shape
    r = mcutrain_cli("design", "--teacher", "teacher.pt", "--board", "stm32f407", "--family", "cnn", cwd=tmp_path)
    assert r.returncode == 1 and "give --input-shape" in r.stderr


def test_cli_design_errors(teachers: dict[str, Path], tmp_path: Path) -> None:
    t = str(teachers["cnn"])
    r = mcutrain_cli("design", "--teacher", t, "--board", "nrf52840", "--family", "cnn", "--ram", "1K", cwd=tmp_path)
    assert r.returncode == 1 and "tightest limit is train-step RAM" in r.stderr
    assert not (tmp_path / "student.mtm").exists()
    for bad, says in ((["--ram", "lots"], "not a positive size"), (["--max-step-ms", "-1"], "not a positive time"),
                      (["--family", "resnet"], "invalid choice")):
        args = ["design", "--teacher", t, "--board", "nrf52840", "--family", "cnn", *bad]
        r = mcutrain_cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and says in r.stderr, r.stderr
    r = mcutrain_cli("design", "--teacher", t, "--board", "pico9", "--family", "cnn", cwd=tmp_path)
    assert r.returncode == 1 and "unknown board profile 'pico9'" in r.stderr
    r = mcutrain_cli("design", "--teacher", t, "--board", "nrf52840", "--family", "cnn", "--pick", "999",
                     cwd=tmp_path)
    assert r.returncode == 1 and "--pick 999" in r.stderr
