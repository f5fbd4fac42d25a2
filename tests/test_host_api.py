"""The host API (host/mcutrain/api.py, docs/host-api.md): the walk-through of docs/host-api.md
run end to end on the unix port and qemu-m4f, and the API's errors."""

from __future__ import annotations

import subprocess
import sys

import mcutrain
import numpy as np
import pytest
from conftest import ROOT, host_env, require_firmware
from mcutrain.errors import DeviceError

TRAIN = """\
import sys
import mcutrain as mt
epochs = int(sys.argv[sys.argv.index('--epochs') + 1])
model = mt.load(PREFIX + 'model.mtm')
ds = mt.Dataset(PREFIX + 'mine.mtd')
opt = mt.SGD(model, lr=0.05)
m = mt.Metrics(every=1)
x = mt.zeros((1,) + tuple(ds.sample_shape))
for epoch in range(epochs):
    for xb, y in ds:
        x.copy_from(xb)
        m.step(model.train_step(x, [y], mt.cross_entropy, opt))
    m.epoch()
mt.save(model, PREFIX + 'model.mtm')
m.done(epochs=epochs)
"""


@pytest.mark.parametrize("board", ["unix", "qemu-m4f"])
def test_walk_through_export_push_run_pull(tmp_path, board):
    torch = pytest.importorskip("torch")
    require_firmware(board)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 4, 4, 1)).astype(np.float32)
    y = (x.reshape(12, -1).sum(1) > 0).astype(np.int64)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 4 * 4, 2))  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mcutrain.export_model(model, tmp_path / "model.mtm", input_shape=(1, 4, 4))
    # unix reads host paths; an emulated board keeps files in its working directory (/flash).
    prefix = f"{tmp_path}/" if board == "unix" else ""
    script = tmp_path / "train.py"
    script.write_text(f"PREFIX = {prefix!r}\n" + TRAIN)
    flash = {} if board == "unix" else {"flash": tmp_path / "flash.img"}
    with mcutrain.board(board, **flash) as b:
        assert isinstance(b, mcutrain.Board) and b.name == board
        pushed = b.push_dataset(tmp_path / "mine.npz", dest=prefix + "mine.mtd", force=True)
        assert pushed.header.count == 12
        b.push_model(tmp_path / "model.mtm", dest=prefix + "model.mtm")
        records = b.run(script, args=["--epochs", "2"], collect=tmp_path / "results")
        b.pull_model(prefix + "model.mtm", tmp_path / "trained.pt")
    steps = [r for r in records if r["kind"] == "step"]
    assert len(steps) == 24 and records[-1]["kind"] == "done" and records[-1]["epochs"] == 2
    assert mcutrain.read_results(tmp_path / "results") == records
    trained = torch.load(tmp_path / "trained.pt")
    model.load_state_dict(trained)  # strict: the original module's keys and shapes
    assert any(not torch.equal(before[k], trained[k]) for k in before)  # it trained
    assert {p.name for p in mcutrain.plot_results(tmp_path / "results")} >= {"loss.png"}


def test_a_failing_script_raises_with_its_traceback(tmp_path):
    require_firmware("unix")
    script = tmp_path / "bad.py"
    script.write_text("print('before')\nraise ValueError('on purpose')\n")
    with mcutrain.board("unix") as b, pytest.raises(DeviceError) as raised:
        b.run(script)
    assert "before" in str(raised.value) and "on purpose" in str(raised.value)
    with mcutrain.board("unix") as b, pytest.raises(FileNotFoundError):
        b.run(tmp_path / "missing.py")


def test_import_mcutrain_loads_the_api_only_when_used():
    code = ("import sys, mcutrain; lazy = 'mcutrain.api' not in sys.modules and 'numpy' not in sys.modules; "
            "mcutrain.board; print(lazy, 'mcutrain.api' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=host_env(), cwd=ROOT,
                         timeout=60)  # fmt: skip
    assert out.stdout.split() == ["True", "True"], out.stdout + out.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mcutrain.nope  # noqa: B018
