"""The examples run as documented on every target."""

from __future__ import annotations

import sys

import mcutrain
import pytest
from conftest import ROOT
from mcutrain.runner import run_on

sys.path.insert(0, str(ROOT / "bench"))
import learning

HELLO = ROOT / "examples" / "hello.py"


def test_examples_hello_reports_board_and_dot_cost(target):
    out = target.run_file(HELLO).splitlines()
    assert out[0].startswith(f"mcutrain {mcutrain.__version__} on ")
    if target.board.emulated:
        assert target.name in out[0]
    label, value = out[1].split(" = ")
    assert label == "dot of 64 floats"
    # The exact fp32 sum is 10.6640625. The emulated boards' Python floats are packed in
    # 30 bits and print 6 significant digits (10.6641), so allow half a unit of the 6th.
    assert float(value) == pytest.approx(10.6640625, rel=5e-6)
    assert out[2].split()[2] == ("instructions" if target.board.emulated else "ns")
    assert out[3].startswith("pure MicroPython took ")


def test_bench_memory_table_is_the_same_on_every_target(target):
    # README's memory table: model.memory() depends on shapes and dtypes, not on the target.
    rows = [line for line in target.run_file(ROOT / "bench" / "memory.py", timeout=120).splitlines()
            if line.startswith("| ") and "B" in line]
    assert len(rows) == 8, rows
    for row in rows:
        name, batch, fp32, f16, i8 = (cell.strip() for cell in row.strip("|").split("|"))
        total = int(fp32.split()[0].replace(",", ""))
        for cell in (f16, i8):
            n, ratio = int(cell.split()[0].replace(",", "")), float(cell.split("(")[1].rstrip("x)"))
            assert ratio == pytest.approx(n / total, abs=0.005) and ratio < 1, row
    expected = ROOT / "README.md"
    assert all(row in expected.read_text() for row in rows), "README memory table is stale"


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    from mcutrain.fashion import write_fashion

    out = tmp_path_factory.mktemp("fashion")
    write_fashion(out, n_train=30, n_test=20)
    return out


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_train_fashion_runs_in_batches_with_a_remainder(target, fashion_dir, dtype):
    # 30 samples in batches of 4: seven steps, the last 2 samples wait for the next epoch.
    settings = {"DTYPE": f'"{dtype}"', "EPOCHS": "2", "BATCH": "4"}
    r = learning.run_script(target, fashion_dir, f"fashion_{dtype}",
                            learning.script_with(settings, learning.FASHION_SCRIPT), timeout=300)
    assert (r["dtype"], r["batch"], r["epochs"], r["n_train"], r["n_test"]) == (dtype, 4, 2, 30, 20)
    assert 0 <= r["test_accuracy"] <= 1 and r["step_instructions"] > 0
    # The training plan's bytes (a batch of 4), not the one-sample evaluation's.
    one = run_on(target, f"""
import mcutrain as mt
first = [] if {dtype!r} == "float32" else [mt.Convert({dtype!r})]
m = mt.Sequential(*first, mt.Conv2d(1, 8, 3, padding=1, dtype={dtype!r}), mt.ReLU(), mt.MaxPool2d(2),
    mt.Conv2d(8, 16, 3, padding=1, dtype={dtype!r}), mt.ReLU(), mt.MaxPool2d(2),
    mt.Flatten(), mt.Linear(144, 10, dtype={dtype!r}))
mt.SGD(m, lr=0.01) if {dtype!r} == "int8" else mt.SGD(m, lr=0.01, momentum=0.9)
print(m.memory((1, 14, 14, 1))['total'])
""")
    assert r["peak_ram_bytes"] > int(one), (r["peak_ram_bytes"], one)


@pytest.mark.parametrize("batch", ["0", "-4", "four"])
def test_learning_rejects_a_batch_that_is_not_a_positive_integer(batch, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["learning.py", "--only", "precision", "--batch", batch])
    with pytest.raises(SystemExit) as e:
        learning.main()
    assert e.value.code == 2
    assert "--batch" in capsys.readouterr().err


@pytest.fixture(scope="module")
def distill_dir(tmp_path_factory):
    """digits_{train,val,test}.mtd as train_distill.py reads them: a small 8x8 task whose
    teacher logits come from the rule that labels it."""
    import numpy as np
    from mcutrain.formats import write_dataset

    out = tmp_path_factory.mktemp("distill")
    rng = np.random.default_rng(8)
    for name, n in (("train", 48), ("val", 16), ("test", 16)):
        x = rng.uniform(0, 1, (n, 8, 8, 1)).astype(np.float32)
        logits = np.stack([x[:, :4].mean((1, 2, 3)), x[:, 4:].mean((1, 2, 3)),
                           x[:, :, :4].mean((1, 2, 3))], axis=1) * 20
        teacher = logits if name == "train" else None
        write_dataset(out / f"digits_{name}.mtd", x, logits.argmax(1), teacher_logits=teacher,
                      num_classes=3)
    return out


@pytest.mark.parametrize("settings", [
    {"EPOCHS": "3", "SKIP_WARMUP": "10", "PATIENCE": "None"},
    {"EPOCHS": "3", "BUDGET": "1"},  # spent after the first step, whatever the unit
])
def test_train_distill_skips_and_stops_as_configured(target, distill_dir, settings):
    script = ROOT / "examples" / "train_distill.py"
    name = "distill_budget" if "BUDGET" in settings else "distill_skip"
    r = learning.run_script(target, distill_dir, name, learning.script_with(settings, script), timeout=300)
    assert 0 <= r["test_accuracy"] <= 1 and r["step_instructions"] > 0
    if "BUDGET" in settings:
        assert (r["stop"], r["epochs"], r["train_steps"], r["skipped"]) == ("budget", 1, 1, 0)
    else:
        # 3 epochs of 48 samples; MAX_SKIP 0.5 caps the skipped share, the warm-up never skips
        assert (r["stop"], r["epochs"], r["train_steps"]) == (None, 3, 144)
        assert 0 < r["skipped"] <= 0.5 * 144 and r["skip_fraction"] == pytest.approx(
            r["skipped"] / 144, rel=1e-5)  # the boards print 6 digits
