"""The README's quickstart, command by command, as a new user runs it: a dataset and a PyTorch
module of one's own, pushed, trained on the emulated Cortex-M4F by examples/train_own.py
(mt.fit), and pulled back into the module."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, host_env, require_firmware


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "mcutrain", *args], capture_output=True, text=True,
                          timeout=timeout, env=host_env(), cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, f"mcutrain {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def test_readme_quickstart_trains_your_own_model_on_your_own_data(tmp_path):
    torch = pytest.importorskip("torch")
    require_firmware("qemu-m4f")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(60, 6, 6, 1)).astype(np.float32)
    y = (x[:, :3].sum(axis=(1, 2, 3)) > x[:, 3:].sum(axis=(1, 2, 3))).astype(np.int64)
    np.savez(tmp_path / "my_data.npz", x=x, y=y)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 6 * 6, 2))  # fmt: skip
    torch.save(module, tmp_path / "model.pt")  # the whole module, as users save it
    board = ["--board", "qemu-m4f", "--flash", str(tmp_path / "flash.img")]

    checked = cli("push-dataset", str(tmp_path / "my_data.npz"), "--dtype", "int8", "--check")
    assert "60 samples" in checked.stdout and "not sent" in checked.stdout
    cli("push-dataset", str(tmp_path / "my_data.npz"), "--dtype", "int8", *board)
    cli("push-model", str(tmp_path / "model.pt"), "--input-shape", "1,6,6", *board)
    cli("run", "examples/train_own.py", *board, "--collect", str(tmp_path / "results"), "--",
        "my_data.mtd", "model.mtm", "4", "0.05")  # fmt: skip
    cli("pull", "model.mtm", str(tmp_path / "trained.pt"), "--like", str(tmp_path / "model.pt"), *board)
    cli("plot", str(tmp_path / "results"))

    records = [json.loads(line) for line in (tmp_path / "results" / "results.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 4 and epochs[-1]["loss"] < epochs[0]["loss"]
    before = {k: v.clone() for k, v in module.state_dict().items()}
    module.load_state_dict(torch.load(tmp_path / "trained.pt"))  # strict: the module's own names
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert (tmp_path / "results" / "loss.png").is_file()
