"""The steps `make demo` is built from: the data, the host-pretrained model, and one run of
examples/train_kws.py on a board with its metrics collected."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .collect import Collector, stream_command
from .device import Device, open_device
from .plot import plot_results
from .push import file_on_board, send_dataset

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_kws.py"
PRETRAIN_FRACTION = 1.0
PRETRAIN_EPOCHS = 12
DATA_INFO = "demo_data.json"  # the settings the data in a folder was made with


def script_with(settings: dict[str, str], script: Path = SCRIPT) -> str:
    """A device script (default train_kws.py) with top-level settings replaced (values are
    Python source text); ValueError naming a setting the script lacks."""
    source = script.read_text()
    for key, value in settings.items():
        source, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", source, count=1, flags=re.M)
        if n != 1:
            raise ValueError(f"{script.name} has no setting {key}")
    return source


def ensure_data(data: Path, samples_per_class: int, seed: int, enroll_per_class: int = 0,
                from_wav: Path | None = None) -> None:  # fmt: skip
    """data/kws_train.mtd, kws_test.mtd (and kws_enroll.mtd), made unless an earlier run made
    them with the same settings. New data drops an earlier pretrained model."""
    from .kws.dataset import make_kws_dataset

    key = {"samples_per_class": samples_per_class, "seed": seed, "enroll_per_class": enroll_per_class,
           "from_wav": str(Path(from_wav).resolve()) if from_wav else None}  # fmt: skip
    info = data / DATA_INFO
    if info.is_file() and json.loads(info.read_text()) == key and (data / "kws_train.mtd").is_file():
        print("demo: reusing the data in", data, flush=True)
        return
    t0 = time.monotonic()
    what = f"recorded WAVs from {from_wav}" if from_wav else "a SYNTHETIC keyword-spotting set"
    print(f"demo: making {what} in {data} ({samples_per_class} training samples per class"
          + (f", {enroll_per_class} enrollment clips per class and held-out voice" if enroll_per_class else "")
          + ")", flush=True)  # fmt: skip
    info.unlink(missing_ok=True)
    (data / "pretrained.json").unlink(missing_ok=True)
    make_kws_dataset(data, samples_per_class=samples_per_class, seed=seed, dtype="int8",
                     enroll_per_class=enroll_per_class, from_wav=from_wav)  # fmt: skip
    info.write_text(json.dumps(key) + "\n")
    print(f"demo: data ready in {time.monotonic() - t0:.0f} s", flush=True)


def pretrained(data: Path, seed: int) -> dict[str, Any]:
    """The host-pretrained model in data/pretrained.mtm, and its accuracy on kws_test.mtd; an
    earlier run's (kept in data/pretrained.json) when it had the same settings and data."""
    from .pretrain_kws import pretrain_kws

    mtm, info = data / "pretrained.mtm", data / "pretrained.json"
    key = {"fraction": PRETRAIN_FRACTION, "epochs": PRETRAIN_EPOCHS, "seed": seed}
    if mtm.is_file() and info.is_file():
        saved = json.loads(info.read_text())
        if saved.get("settings") == key:
            print("demo: reusing the host-pretrained model in", mtm, flush=True)
            return saved
    print("demo: pretraining the DS-CNN on the host (PyTorch, CPU)", flush=True)
    host = pretrain_kws(data, mtm, fraction=PRETRAIN_FRACTION, epochs=PRETRAIN_EPOCHS, seed=seed)
    info.write_text(json.dumps({"settings": key, "test_accuracy": host["test_accuracy"]}) + "\n")
    return {"settings": key, "test_accuracy": host["test_accuracy"]}


def push_to_flash(device: Device, data: Path, names: Sequence[str]) -> None:
    """Copy data/NAME to /flash/NAME on the board unless it already holds that file: reading
    from flash is far faster than through mpremote mount, which pays off for files that are
    read again and again (evaluation clips)."""
    for name in names:
        path, dest = data / name, f"/flash/{name}"
        found = file_on_board(device, dest, path.read_bytes())
        if found is None or not found[1]:
            print(f"demo: copying {name} to the board's flash", flush=True)
            send_dataset(device, path, dest, force=True)


def board_run(out: Path, board: str, data: Path, settings: dict[str, str], timeout: float,
              flash: Path | None = None, push: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    """Run train_kws.py with `settings` on an emulated `board` whose flash image is `flash`
    (default: one in `out`), the files in `push` copied to its /flash and the rest of `data`
    served through mpremote mount at /remote; metrics and plots into `out`. The script's
    final (`done`) metrics record."""
    out.mkdir(parents=True, exist_ok=True)
    script = out / "train_kws.py"
    script.write_text(script_with(settings))
    collector = Collector(out)
    try:
        with open_device(None, board, flash=flash or out / f"{board}-flash.img") as device:
            push_to_flash(device, data, push)
            print(f"demo: training on {board} (emulated); live progress below", flush=True)
            with device.session():
                status = stream_command(device.script_command(script, data), collector, timeout)
    finally:
        collector.close()
    if status != 0:
        raise RuntimeError(f"train_kws.py failed on {board} (exit {status})")
    done = [r for r in collector.records if r.get("kind") == "done"]
    if not done:
        raise RuntimeError("train_kws.py printed no final metrics line")
    plots = plot_results(out)
    print(f"demo: plots {', '.join(str(p) for p in plots)}")
    return done[-1]
