"""`make demo`: keyword spotting end to end on the emulated Cortex-M4F.

Generates a small SYNTHETIC keyword-spotting set (espeak-ng and flite voices, augmented; test
voices never appear in training), pretrains the DS-CNN on the host on part of the training
set (PyTorch, BatchNorm folded at export), boots the board, fine-tunes the model there with
examples/train_kws.py on the whole training set (data served through mpremote mount), shows
live progress, collects the metrics into results/kws/ (results.jsonl, results.csv, PNG
plots) and writes results/kws/summary.json. --from-scratch skips the pretraining.
--dtype int8 quantizes the pretrained model on the board (calibrated on training samples) and
fine-tunes it in int8; its results go to results/kws-int8/ (the same data, generated once in
results/kws/data, is reused when it is there).

    python -m mcutrain.demo [--samples-per-class N] [--epochs E] [--out DIR] [--from-scratch]
                            [--dtype float32|int8]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from .collect import HALTING_FIELDS, Collector, stream_command
from .device import open_device
from .plot import plot_results

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_kws.py"
PRETRAIN_FRACTION = 1.0
PRETRAIN_EPOCHS = 12
INT8_LR = "0.001"  # plain SGD on the int8 model (no momentum), tuned on this set
DTYPES = ("float32", "int8")
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


def _pretrained(data: Path, seed: int, reuse: bool) -> dict:
    """The host-pretrained model in data/pretrained.mtm; with reuse, an earlier run's (its
    accuracy kept in data/pretrained.json) when it had the same settings."""
    from .pretrain_kws import pretrain_kws

    mtm, info = data / "pretrained.mtm", data / "pretrained.json"
    key = {"fraction": PRETRAIN_FRACTION, "epochs": PRETRAIN_EPOCHS, "seed": seed}
    if reuse and mtm.is_file() and info.is_file():
        saved = json.loads(info.read_text())
        if saved.get("settings") == key:
            print("demo: reusing the host-pretrained model in", mtm, flush=True)
            return saved
    print("demo: pretraining the DS-CNN on the host (PyTorch, CPU)", flush=True)
    host = pretrain_kws(data, mtm, fraction=PRETRAIN_FRACTION, epochs=PRETRAIN_EPOCHS, seed=seed)
    info.write_text(json.dumps({"settings": key, "test_accuracy": host["test_accuracy"]}) + "\n")
    return host


def run_demo(out: Path, samples_per_class: int, epochs: int | None, seed: int, board: str,
             timeout: float, pretrain: bool = True, dtype: str = "float32",
             data: Path | None = None) -> dict:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    data = data or out / "data"
    if not (data / "kws_train.mtd").is_file():
        make_data(data, samples_per_class, seed)
    settings = {"SAVE": '"/flash/kws_dscnn.mtm"', "DTYPE": f'"{dtype}"'}
    host_accuracy = None
    if pretrain:
        # An int8 run quantizes the model the float32 run fine-tuned, not a new one.
        host = _pretrained(data, seed, reuse=dtype != "float32")
        print(f"demo: host model: {host['test_accuracy']:.1%} on held-out voices", flush=True)
        host_accuracy = host["test_accuracy"]
        settings.update(PRETRAINED='"/remote/pretrained.mtm"', LR="0.001", MOMENTUM="0.0", EPOCHS="1")
    if dtype == "int8":
        settings.update(LR=INT8_LR, MOMENTUM="0.0")
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
    summary.update({k: done[-1][k] for k in HALTING_FIELDS if k in done[-1]})
    summary.update(board=board, synthetic=True, samples_per_class=samples_per_class,
                   test_set="held-out voices", start="host-pretrained" if pretrain else "scratch",
                   host_test_accuracy=host_accuracy)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plots = plot_results(out)
    print(f"demo: plots {', '.join(str(p) for p in plots)}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="default: results/kws (float32), results/kws-int8 (int8)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="int8: quantize the pretrained model on the board and fine-tune in int8")
    parser.add_argument("--samples-per-class", type=int, default=300)
    parser.add_argument("--epochs", type=int, help="default: train_kws.py's EPOCHS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--board", default="qemu-m4f")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--from-scratch", action="store_true", help="train on the board from scratch")
    args = parser.parse_args(argv)
    kws = ROOT / "results" / "kws"
    if args.out is None:
        args.out = kws if args.dtype == "float32" else ROOT / "results" / f"kws-{args.dtype}"
    args.out.mkdir(parents=True, exist_ok=True)
    # Both dtypes train on the same set: an int8 run uses the float32 run's data when it has one.
    data = args.out / "data"
    if not (data / "kws_train.mtd").is_file() and (kws / "data" / "kws_train.mtd").is_file() \
            and args.samples_per_class == 300 and args.seed == 0:
        data = kws / "data"
    summary = run_demo(args.out, args.samples_per_class, args.epochs, args.seed, args.board, args.timeout,
                       pretrain=not args.from_scratch, dtype=args.dtype, data=data)
    print(f"demo: test accuracy on held-out SYNTHETIC voices: {summary['test_accuracy']:.1%} "
          f"(train {summary['train_accuracy']:.1%}), {summary['epochs']} epochs, {summary['dtype']}, "
          f"{summary['step_instructions']} instructions per training step, peak RAM "
          f"{summary['peak_ram_bytes']} bytes; summary in {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
