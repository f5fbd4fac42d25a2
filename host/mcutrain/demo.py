"""`make demo`: keyword spotting on the emulated Cortex-M4F, adapted on the board to new voices.

The board adapts a host-trained keyword spotter to voices the host model never heard.

Makes a small SYNTHETIC keyword-spotting set (espeak-ng and flite voices, augmented). Five
voices are held out of training; their clips are split per voice into enrollment clips (a few
per class, kws_enroll.mtd) and evaluation clips (the rest, kws_test.mtd). The host pretrains
the DS-CNN on the training voices (PyTorch, BatchNorm folded at export); the board adapts it
to the enrollment clips in int8 with dynamic top-k updates and, for comparison, with full
updates in float32 and in int8 and with a fixed 10% top-k in int8, and reports accuracy on
the evaluation clips before and after (mcutrain.adapt_demo). Metrics, plots and
summary.json go to results/kws/ (the comparison runs' to results/kws/float32-full/,
int8-full/ and int8-topk10/).

--from-wav DIR does the same with recorded 16 kHz WAVs in the class layout (one folder per
word; speakers split into training and held-out, the held-out speakers' recordings into
enrollment and evaluation). --train-voices fine-tunes on the training voices instead, as the
first demo did (results in results/kws-train-voices/, or -int8 with --dtype int8);
--from-scratch with it trains on the board from scratch.

    python -m mcutrain.demo [--dtype int8|float32] [--epochs E] [--out DIR] [--from-wav DIR]
                            [--enroll-per-class N] [--train-voices [--from-scratch]]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .adapt_demo import ADAPT_EPOCHS, ENROLL_PER_CLASS, run_adaptation
from .collect import HALTING_FIELDS
from .demo_steps import ROOT, board_run, ensure_data, pretrained

INT8_LR = "0.001"  # plain SGD on the int8 model (no momentum), tuned on this set
DTYPES = ("float32", "int8")
SUMMARY_FIELDS = ("test_accuracy", "train_accuracy", "epochs", "dtype", "step_instructions",
                  "peak_ram_bytes")


def run_demo(out: Path, samples_per_class: int, epochs: int | None, seed: int, board: str,
             timeout: float, pretrain: bool = True, dtype: str = "float32",
             data: Path | None = None, from_wav: Path | None = None) -> dict:  # fmt: skip
    """Fine-tune (or, without pretrain, train) on the training voices; test on held-out ones."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    data = data or out / "data"
    ensure_data(data, samples_per_class, seed, from_wav=from_wav)
    settings = {"SAVE": '"/flash/kws_dscnn.mtm"', "DTYPE": f'"{dtype}"',
                "SYNTHETIC": str(from_wav is None)}  # fmt: skip
    host_accuracy = None
    if pretrain:
        host = pretrained(data, seed)
        print(f"demo: host model: {host['test_accuracy']:.1%} on held-out voices", flush=True)
        host_accuracy = host["test_accuracy"]
        settings.update(PRETRAINED='"/remote/pretrained.mtm"', LR="0.001", MOMENTUM="0.0", EPOCHS="1")
    if dtype == "int8":
        settings.update(LR=INT8_LR, MOMENTUM="0.0")
    if epochs is not None:
        settings["EPOCHS"] = str(epochs)
    done = board_run(out, board, data, settings, timeout)
    summary = {k: done[k] for k in SUMMARY_FIELDS}
    summary.update({k: done[k] for k in HALTING_FIELDS if k in done})
    summary.update(board=board, synthetic=from_wav is None, samples_per_class=samples_per_class,
                   test_set="held-out voices", start="host-pretrained" if pretrain else "scratch",
                   host_test_accuracy=host_accuracy, mode="train-voices")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _report(summary: dict) -> str:
    if summary["mode"] != "adapt":
        return (f"test accuracy on held-out voices: {summary['test_accuracy']:.1%} "
                f"(train {summary['train_accuracy']:.1%}), {summary['epochs']} epochs, {summary['dtype']}, "
                f"{summary['step_instructions']} instructions per training step, peak RAM "
                f"{summary['peak_ram_bytes']} bytes")  # fmt: skip
    lines = [f"host model {summary['host_test_accuracy']:.1%} on the held-out voices' evaluation clips"]
    for run in [summary, *summary.get("comparison", [])]:
        lines.append(f"{run['dtype']} ({run['update_policy']}): {run['accuracy_before']:.1%} before, "
                     f"{run['accuracy_after']:.1%} after adapting on {run['adaptation_samples']} clips; "
                     f"{run['step_instructions']} instructions per step, peak RAM {run['peak_ram_bytes']} B")
    return "\n  ".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="default: results/kws (adaptation), "
                        "results/kws-train-voices[-int8] (--train-voices)")
    parser.add_argument("--dtype", choices=DTYPES,
                        help="only this dtype's runs (default: int8 dynamic top-k, then float32 and "
                             "int8 full updates and int8 top-k 10%% to compare; float32 with --train-voices)")
    parser.add_argument("--samples-per-class", type=int, default=300, help="training samples per class")
    parser.add_argument("--enroll-per-class", type=int, default=ENROLL_PER_CLASS,
                        help=f"enrollment clips per class and held-out voice (default {ENROLL_PER_CLASS})")
    parser.add_argument("--epochs", type=int,
                        help=f"default: {ADAPT_EPOCHS} over the enrollment clips; train_kws.py's with --train-voices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--board", default="qemu-m4f")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per board run")
    parser.add_argument("--from-wav", type=Path, metavar="DIR",
                        help="recorded 16 kHz WAVs, one subfolder per word, instead of synthetic speech")
    parser.add_argument("--train-voices", action="store_true",
                        help="fine-tune on the training voices instead of adapting to held-out ones")
    parser.add_argument("--from-scratch", action="store_true",
                        help="with --train-voices: train on the board from scratch")
    args = parser.parse_args(argv)
    if args.enroll_per_class < 1 and not args.train_voices:
        parser.error("--enroll-per-class must be at least 1: the board adapts on those clips")
    if args.epochs is not None and args.epochs < 0:
        parser.error("--epochs must be 0 or more")
    if args.from_scratch and not args.train_voices:
        parser.error("--from-scratch needs --train-voices (adaptation starts from the host model)")
    results = ROOT / "results"
    if args.train_voices:
        dtype = args.dtype or "float32"
        out = args.out or results / ("kws-train-voices" + ("" if dtype == "float32" else f"-{dtype}"))
        out.mkdir(parents=True, exist_ok=True)
        summary = run_demo(out, args.samples_per_class, args.epochs, args.seed, args.board, args.timeout,
                           pretrain=not args.from_scratch, dtype=dtype, from_wav=args.from_wav)
    else:
        out = args.out or results / "kws"
        out.mkdir(parents=True, exist_ok=True)
        summary = run_adaptation(out, args.samples_per_class, args.seed, args.board, args.timeout,
                                 args.dtype, epochs=args.epochs or ADAPT_EPOCHS,
                                 enroll_per_class=args.enroll_per_class, from_wav=args.from_wav)
    what = "SYNTHETIC voices" if summary["synthetic"] else "recorded speakers"
    print(f"demo ({what}): {_report(summary)}\n  summary in {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
