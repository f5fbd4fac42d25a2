"""Learning check: examples/train_digits.py on the emulated Cortex-M4F reaches the issue's
accuracy on scikit-learn's digits (real handwriting, a held-out stratified 20%), and the same
seed gives the same run."""

from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT
from mcutrain.digits import write_digits

SCRIPT = ROOT / "examples" / "train_digits.py"


def run_digits(target, data_dir, tmp_path, model: str) -> dict:
    source = re.sub(r'^MODEL = "\w+"', f'MODEL = "{model}"', SCRIPT.read_text(), count=1, flags=re.M)
    script = tmp_path / f"train_digits_{model}.py"
    script.write_text(source)
    out = target.mpremote("mount", str(data_dir), "run", str(script), timeout=600)
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    write_digits(out)
    return out


@pytest.mark.parametrize("model, floor", [("mlp", 0.95), ("cnn", 0.93)])
def test_digits_reaches_accuracy_on_emulated_m4f(target_pool, digits_dir, tmp_path, model, floor):
    target = target_pool.get("qemu-m4f")
    result = run_digits(target, digits_dir, tmp_path, model)
    assert result["test_accuracy"] >= floor, result
    if model == "mlp":
        # Same seed, same run: every number in the summary repeats exactly.
        assert run_digits(target, digits_dir, tmp_path, model) == result
