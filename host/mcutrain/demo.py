"""`make demo`: keyword spotting end to end on the emulated Cortex-M4F.

Generates a small SYNTHETIC keyword-spotting set (espeak-ng and flite voices, augmented; test
voices never appear in training), pretrains the DS-CNN on the host on part of the training
set (PyTorch, BatchNorm folded at export), boots the board, fine-tunes the model there with
examples/train_kws.py on the whole training set (data served through mpremote mount), shows
live progress, collects the metrics into results/kws/ (results.jsonl, results.csv, PNG
plots) and writes results/kws/summary.json. --from-scratch skips the pretraining.

    python -m mcutrain.demo [--samples-per-class N] [--epochs E] [--out DIR] [--from-scratch]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from .collect import Collector, stream_command
from .device import open_device
from .plot import plot_results

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_kws.py"
PRETRAIN_FRACTION = 1.0
PRETRAIN_EPOCHS = 12
SUMMARY_FIELDS = ("test_accuracy", "train_accuracy", "epochs", "dtype", "step_instructions",
                  "peak_ram_bytes")


def script_with(settings: dict[str, str]) -> str:
    """train_kws.py with top-level settings replaced (values are Python source text)."""
    source = SCRIPT.read_text()
    for key, value in settings.items():
        source, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", source, count=1, flags=re.M)
        if n != 1:
            raise ValueError(f"{SCRIPT.name} has no setting {key}")
    return source


def make_data(data: Path, samples_per_class: int, seed: int) -> None:
    from .kws.dataset import make_kws_dataset

    t0 = time.monotonic()
    print(f"demo: generating a SYNTHETIC keyword-spotting set in {data} "
          f"({samples_per_class} samples per class)", flush=True)
    make_kws_dataset(data, samples_per_class=samples_per_class, seed=seed, dtype="int8")
    print(f"demo: dataset ready in {time.monotonic() - t0:.0f} s", flush=True)


def run_demo(out: Path, samples_per_class: int, epochs: int | None, seed: int, board: str,
             timeout: float, pretrain: bool = True) -> dict:
    data = out / "data"
    if not (data / "kws_train.mtd").is_file():
        make_data(data, samples_per_class, seed)
    settings = {"SAVE": '"/flash/kws_dscnn.mtm"'}
    host_accuracy = None
    if pretrain:
        from .pretrain_kws import pretrain_kws

        print("demo: pretraining the DS-CNN on the host (PyTorch, CPU)", flush=True)
        host = pretrain_kws(data, data / "pretrained.mtm", fraction=PRETRAIN_FRACTION,
                            epochs=PRETRAIN_EPOCHS, seed=seed)
        print(f"demo: host model: {host['test_accuracy']:.1%} on held-out voices", flush=True)
        host_accuracy = host["test_accuracy"]
        settings.update(PRETRAINED='"/remote/pretrained.mtm"', LR="0.001", MOMENTUM="0.0", EPOCHS="1")
    if epochs is not None:
        settings["EPOCHS"] = str(epochs)
    script = out / "train_kws.py"
    script.write_text(script_with(settings))
    collector = Collector(out)
    print(f"demo: training on {board} (emulated); live progress below", flush=True)
    try:
        with open_device(None, board, flash=out / f"{board}-flash.img") as device, device.session():
            status = stream_command(device.script_command(script, data), collector, timeout)
    finally:
        collector.close()
    if status != 0:
        raise RuntimeError(f"train_kws.py failed on {board} (exit {status})")
    done = [r for r in collector.records if r.get("kind") == "done"]
    if not done:
        raise RuntimeError("train_kws.py printed no final metrics line")
    summary = {k: done[-1][k] for k in SUMMARY_FIELDS}
    summary.update(board=board, synthetic=True, samples_per_class=samples_per_class,
                   test_set="held-out voices", start="host-pretrained" if pretrain else "scratch",
                   host_test_accuracy=host_accuracy)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plots = plot_results(out)
    print(f"demo: plots {', '.join(str(p) for p in plots)}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "kws")
    parser.add_argument("--samples-per-class", type=int, default=300)
    parser.add_argument("--epochs", type=int, help="default: train_kws.py's EPOCHS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--board", default="qemu-m4f")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--from-scratch", action="store_true", help="train on the board from scratch")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = run_demo(args.out, args.samples_per_class, args.epochs, args.seed, args.board, args.timeout,
                       pretrain=not args.from_scratch)
    print(f"demo: test accuracy on held-out SYNTHETIC voices: {summary['test_accuracy']:.1%} "
          f"(train {summary['train_accuracy']:.1%}), {summary['epochs']} epochs, {summary['dtype']}, "
          f"{summary['step_instructions']} instructions per training step, peak RAM "
          f"{summary['peak_ram_bytes']} bytes; summary in {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
