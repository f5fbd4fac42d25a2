"""The device API's type stubs (stubs/device/mcutrain, issue 20 item 5) against the firmware:
every public name the board's `mcutrain` has (module level, and the members of an instance of
each type) is in the stubs and every name the stubs give exists on the board, so they cannot
drift; and the examples type-check against them with mypy."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from conftest import ROOT, require_firmware
from mcutrain.formats import write_dataset
from mcutrain.runner import open_target, run_on

STUBS = ROOT / "stubs" / "device"

# One instance of each type (float and, where it adds members, int8), named by its stub class.
DEVICE_SCRIPT = r"""
import json
import mcutrain as mt

def pub(o):
    return sorted(n for n in dir(o) if not n.startswith('_'))

m = mt.Sequential(mt.Linear(2, 2))
instances = {
    'Tensor': [mt.zeros((2,))],
    'Linear': [mt.Linear(2, 2), mt.Linear(2, 2, dtype=mt.int8)],
    'Conv2d': [mt.Conv2d(1, 1, 1), mt.Conv2d(1, 1, 1, dtype=mt.int8)],
    'Conv1d': [mt.Conv1d(1, 1, 1), mt.Conv1d(1, 1, 1, dtype=mt.int8)],
    'ReLU': [mt.ReLU()], 'ReLU6': [mt.ReLU6()], 'Softmax': [mt.Softmax()], 'Flatten': [mt.Flatten()],
    'GlobalAvgPool': [mt.GlobalAvgPool()], 'MaxPool2d': [mt.MaxPool2d(2)], 'AvgPool2d': [mt.AvgPool2d(2)],
    'BatchNorm2d': [mt.BatchNorm2d(2)], 'Convert': [mt.Convert(mt.int8)], 'Sequential': [m],
    'Residual': [mt.Residual(mt.Linear(2, 2))], 'Add': [mt.Add()],
    'SGD': [mt.SGD(m, lr=0.1)], 'Adam': [mt.Adam(m)],
    '_Loss': [mt.cross_entropy, mt.mse, mt.distillation()],
    '_UpdatePolicy': [mt.TopK(0.1, 0.5), mt.Full()],
    'Metrics': [mt.Metrics()],
    'Dataset': [mt.Dataset(PATH)],
    'RunningQuantile': [mt.RunningQuantile()], 'SampleSkip': [mt.SampleSkip()], 'EarlyStop': [mt.EarlyStop()],
}
out = {'module': {n: type(getattr(mt, n)).__name__ for n in pub(mt)}}
out['members'] = {k: sorted(set(n for o in v for n in pub(o))) for k, v in instances.items()}
out['members']['dataset'] = pub(mt.dataset)
out['members']['metrics'] = pub(mt.metrics)
out['members']['model_io'] = pub(mt.model_io)
out['members']['halting'] = pub(mt.halting)
print('@json', json.dumps(out))
"""


def stub_names(path) -> tuple[set[str], dict[str, set[str]]]:
    """Public module-level names of a .pyi, and each class's members (its stub bases' included)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    classes: dict[str, tuple[list[str], set[str]]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
            classes[node.name] = ([b.id for b in node.bases if isinstance(b, ast.Name)], members)
            names.add(node.name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname for a in node.names if a.asname is not None)  # re-exports only

    def members(cls: str) -> set[str]:
        bases, own = classes[cls]
        return own.union(*(members(b) for b in bases if b in classes))

    public = {n for n in names if not n.startswith("_")}
    return public, {c: {m for m in members(c) if not m.startswith("_")} for c in classes}


def test_stubs_name_what_the_firmware_has(tmp_path):
    require_firmware("unix")
    mtd = tmp_path / "d.mtd"
    write_dataset(mtd, np.zeros((4, 2, 2, 1), np.float32), np.arange(4) % 2)
    with open_target("unix") as target:
        text = run_on(target, f"PATH = {str(mtd)!r}\n" + DEVICE_SCRIPT, timeout=120)
    device = json.loads(next(line for line in text.splitlines() if line.startswith("@json"))[6:])

    module, classes = stub_names(STUBS / "mcutrain" / "__init__.pyi")
    for sub in ("dataset", "fit", "halting", "metrics", "model_io"):
        sub_names, sub_classes = stub_names(STUBS / "mcutrain" / f"{sub}.pyi")
        classes.update(sub_classes)
        classes[sub] = sub_names
    on_device = set(device["module"])
    assert on_device - module == set(), "on the board but not in the stubs"
    assert module - on_device == set(), "in the stubs but not on the board"
    for cls, members in device["members"].items():
        want = set(members)
        if cls not in ("dataset", "halting", "metrics", "model_io"):  # submodules: their helpers are internal
            assert want - classes[cls] == set(), f"{cls}: on the board but not in the stubs"
        assert classes[cls] - want == set(), f"{cls}: in the stubs but not on the board"


def test_examples_type_check_against_the_stubs():
    env = dict(os.environ, MYPYPATH=str(STUBS))
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--check-untyped-defs", "--no-incremental", "--cache-dir", os.devnull,
         str(ROOT / "examples"), str(STUBS / "mcutrain")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_stubs_install_into_a_typings_folder(tmp_path):
    # As micropython-stubs: pip install --target typings, then mypy reads them from there.
    target = tmp_path / "typings"
    source = shutil.copytree(STUBS, tmp_path / "stubs")  # setuptools builds in the source tree
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-user", "--no-build-isolation", "--no-deps",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (target / "mcutrain").iterdir()} >= {"__init__.pyi", "dataset.pyi", "py.typed"}
    script = tmp_path / "train.py"
    script.write_text("import mcutrain as mt\nm = mt.Sequential(mt.Linear(4, 2))\n"
                      "loss: float = m.train_step(mt.zeros((1, 4)), [1], mt.cross_entropy, mt.SGD(m, 0.1))\n"
                      "bad: int = m.predict(mt.zeros((1, 4)))\n")  # fmt: skip
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", os.devnull, str(script)],
        capture_output=True, text=True, env=dict(os.environ, MYPYPATH=str(target)), timeout=300, cwd=tmp_path,
    )  # fmt: skip
    # The one wrong line is found, by the stubs' types: predict gives a Tensor.
    assert checked.returncode == 1 and "train.py:4" in checked.stdout and "Tensor" in checked.stdout, checked.stdout
    assert checked.stdout.count("error:") == 1, checked.stdout


def test_mip_package_lists_every_module_of_the_device_package():
    # `mip install` reads package.json: a module missing there breaks `import mcutrain` on a
    # board that installs the package instead of freezing it.
    package = json.loads((ROOT / "micropython_lib" / "mcutrain" / "package.json").read_text())
    listed = {source for source, _ in package["urls"]}
    modules = {f"mcutrain/{p.name}" for p in (ROOT / "micropython_lib" / "mcutrain" / "mcutrain").glob("*.py")}
    assert listed == modules
