"""Issue 18's experiments in small (bench/students.py, examples/train_student.py, docs/students.md):
the board's subsets are class-balanced and disjoint, the student's files carry the teacher's
logits only for training and at the student's resolution, and the device script trains a
designed student each way (cross-entropy, distillation, distillation with early halting),
keeping the best validation epoch and reporting what the table needs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import ROOT
from mcutrain.design import design_student, write_student
from mcutrain.design.arch import Arch, conv2d, flatten, linear, maxpool2d, relu
from mcutrain.design.memory import predict_memory
from mcutrain.design.search import arch_to_spec
from mcutrain.formats import read_dataset
from mcutrain.formats.mtm import write_model
from mcutrain.runner import open_target

sys.path.insert(0, str(ROOT / "bench"))
import students
from learning import script_with

CLASSES = 3


def test_balanced_subsets_are_even_and_disjoint() -> None:
    labels = np.repeat(np.arange(CLASSES), 40)
    rng = np.random.default_rng(0)
    train = students.balanced(labels, 31, rng)
    val = students.balanced(labels, 12, rng, exclude=train)
    assert len(train) == 31 and len(val) == 12 and not set(train) & set(val)
    assert sorted(np.bincount(labels[train]).tolist()) == [10, 10, 11]
    assert np.bincount(labels[val]).tolist() == [4, 4, 4]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[students.Task, dict, object, object]:
    """A 3-class task on 12x12 images, a teacher .mtm, its designed (smallest) cnn student."""
    d = tmp_path_factory.mktemp("students")
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(CLASSES), 30)
    x = rng.normal(size=(len(y), 12, 12, 1)).astype(np.float32) + y[:, None, None, None]
    task = students.Task("tiny", "cnn", x, y, x[:30], y[:30], ["a", "b", "c"], board_train=45, board_val=15,
                         board_test=30, epochs=3, lr=0.01, decay=0.9, teacher_epochs=0)
    teacher = d / "teacher.mtm"
    write_model(teacher, arch_to_spec(Arch((conv2d(1, 16, 3, padding=1), relu(), maxpool2d(2), flatten(),
                                            linear(6 * 6 * 16, CLASSES)), (12, 12, 1)), seed=1))
    rng = np.random.default_rng(0)
    train = students.balanced(y, task.board_train, rng)
    prep = {"train": train, "val": students.balanced(y, task.board_val, rng, exclude=train),
            "test": np.arange(30), "logits": rng.normal(size=(task.board_train, CLASSES)).astype(np.float32)}
    design = design_student(teacher, "nrf52840", "cnn", ram=48 * 1024)
    chosen = design.ranked[-1]  # the smallest: quick on unix
    students.write_student_data(task, prep, chosen.resize, d)
    write_student(chosen, d / "student.mtm", None, design.teacher, seed=2)
    return task, prep, chosen, d


def test_student_files_are_at_its_resolution_with_logits_only_for_training(tiny) -> None:
    task, prep, chosen, d = tiny
    train, val = read_dataset(d / "train.mtd"), read_dataset(d / "val.mtd")
    assert train.x.shape[1:] == tuple(chosen.arch.sample) and train.x.dtype == np.int8
    assert train.teacher_logits is not None and val.teacher_logits is None
    np.testing.assert_allclose(train.teacher_logits, prep["logits"], rtol=1e-6)
    assert train.y.tolist() == task.y_train[prep["train"]].tolist()


# each variant as make students runs it, and halting with per-sample skipping too
RUNS = {**students.VARIANTS, "halt+skip": {**students.VARIANTS["halt"], "MAX_SKIP": "0.5"}}


@pytest.mark.parametrize("variant", list(RUNS))
def test_train_student_runs_each_variant_on_unix(tiny, variant: str) -> None:
    task, _, chosen, d = tiny
    settings = {**RUNS[variant], "MODEL": repr(str(d / "student.mtm")), "DATA": repr(str(d)),
                "CHECKPOINT": repr(str(d / f"best_{variant}.mtm")), "EPOCHS": "3", "DECAY": repr(task.decay),
                "SKIP_WARMUP": "10", "PATIENCE": "1", "WINDOW": "1"}
    script = d / f"train_{variant}.py"
    script.write_text(script_with(settings, students.SCRIPT))
    with open_target("unix") as target:
        out = target.run_file(script, timeout=300)
    r = json.loads(out.strip().splitlines()[-1])
    assert r["loss"] == ("ce" if variant == "ce" else "distill") and r["halt"] == variant.startswith("halt")
    assert 1 <= r["best_epoch"] <= r["epochs"] <= 3 and 0 <= r["test_accuracy"] <= 1
    assert r["train_instructions"] > 0
    assert r["train_ram"] == predict_memory(chosen.arch)["total"]  # unix: no GEMM packing
    assert r["infer_ram"] == predict_memory(chosen.arch, True)["total"]
    if variant == "halt+skip":
        assert r["steps"] > 0 and 0 < r["skip_fraction"] <= 0.5 and r["skipped"] > 0
    elif variant == "halt":
        assert r["steps"] is None and r["skipped"] == 0
    else:
        assert r["skipped"] == 0 and r["stop"] is None and r["epochs"] == 3
