"""`make bench`: run the device benchmark scripts on the emulated boards and collect results.

Prints a table per board and writes bench/results.json: a list of objects with at least
target, case, dtype, macs, instructions and mac_per_instr (plus peak_ram_bytes for whole
training steps, and bytes/seconds/bytes_per_s for transfers). Instruction counts are exact
and repeatable: QEMU runs with -icount shift=0 and mt.perf_counter() counts instructions.
On qemu-m4f every case also gets `cycles` and `mac_per_cycle`: estimated Cortex-M4 cycles of
the same region from the cycle-model plugin (docs/cycle-model.md; `make cycle-model`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from mcutrain.boards import get_board  # noqa: E402
from mcutrain.cycle_model import CycleModel  # noqa: E402
from mcutrain.runner import open_target, run_on  # noqa: E402

# Each run boots the board afresh: (device script, its PART, heap bytes or None for the
# board's 256 KB). Whole-model steps get 1 MiB: batch-4 KWS in float32 needs 0.5 MB.
RUNS = [("cases.py", "layers", None), ("cases.py", "models", 1024 * 1024), ("pure_python_dense.py", None, None)]
BOARDS = ["qemu-m4f", "qemu-rv32", "qemu-rv32f"]
CYCLE_BOARDS = ["qemu-m4f"]  # the cycle model is a Cortex-M4's


def run_board(board: str, cycles: bool) -> list[dict]:
    results = []
    for name, part, heap in RUNS:
        source = (ROOT / "bench" / name).read_text().replace('TARGET = "unknown"', f"TARGET = {board!r}")
        if part is not None:
            source = source.replace('PART = "layers"', f"PART = {part!r}")
        model = CycleModel(get_board(board).firmware_path()) if cycles else None
        with open_target(board, heap=heap, qemu_args=model.qemu_args() if model else ()) as target:
            out = run_on(target, source, timeout=1800)
        rows = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("@bench ")]
        for line in out.splitlines():
            if line.startswith("@skip "):
                print(f"{board}: skipped {line[6:]}")
        if model is not None:
            add_cycles(model, rows)
            model.close()
        results += rows
    return results


def add_cycles(model: CycleModel, rows: list[dict]) -> None:
    """Each row's estimated cycles: the cycle-model region with its exact instruction count."""
    measured = [r for r in rows if "instructions" in r]
    for r, c in zip(measured, model.cycles_for([r["instructions"] for r in measured])):
        r["cycles"] = c
        if "macs" in r:
            r["mac_per_cycle"] = round(r["macs"] / c, 4)


def add_ratios(results: list[dict]) -> None:
    """Instructions per MAC of the pure-MicroPython step over each C dense step's."""
    for board in {r["target"] for r in results}:
        pure = next((r for r in results if r["target"] == board and r["case"].startswith("pure_python")), None)
        if pure is None:
            continue
        per_mac = pure["instructions"] / pure["macs"]
        for r in results:
            if (r["target"] == board and r["case"].startswith("dense_") and r["case"].endswith("_train")
                    and r["dtype"] == "float32"):
                r["vs_pure_python"] = round(per_mac / (r["instructions"] / r["macs"]), 1)


def print_table(results: list[dict]) -> None:
    for board in BOARDS:
        rows = [r for r in results if r["target"] == board and "macs" in r]
        if not rows:
            continue
        print(f"\n{board}")
        print(f"  {'case':40} {'dtype':8} {'MACs':>10} {'instructions':>13} {'MAC/instr':>9} "
              f"{'cycles':>13} {'MAC/cycle':>9}  notes")
        for r in rows:
            notes = []
            if "vs_pure_python" in r:
                notes.append(f"{r['vs_pure_python']}x fewer instr/MAC than pure Python")
            if "backward_speedup" in r:
                notes.append(f"backward {r['backward_speedup']}x fewer instructions than a full update")
            if "peak_ram_bytes" in r:
                notes.append(f"peak RAM {r['peak_ram_bytes']} B")
            cycles = f"{r['cycles']:>13} {r['mac_per_cycle']:>9.4f}" if "cycles" in r else f"{'-':>13} {'-':>9}"
            print(f"  {r['case']:40} {r['dtype']:8} {r['macs']:>10} {r['instructions']:>13} "
                  f"{r['mac_per_instr']:>9.4f} {cycles}  {'; '.join(notes)}")


# The README's "Which dtype on which core" table: whole-model and layer training steps.
DTYPE_TABLE = [("KWS DS-CNN", "kws_dscnn_train_b1"), ("KWS DS-CNN, batch 4", "kws_dscnn_train_b4"),
               ("digits CNN", "digits_cnn_train_b1"), ("MLP 256-128-10", "mlp_256_128_10_train_b1"),
               ("`conv3x3_16x16x16_32_train`", "conv3x3_16x16x16_32_train"),
               ("`dense_256_128_train`", "dense_256_128_train")]


def dtype_table(results: list[dict]) -> str:
    """Markdown: instructions per training step, per board and dtype (empty: not measured)."""
    rows = {(r.get("target"), r.get("case"), r.get("dtype")): r["instructions"] for r in results
            if "instructions" in r}
    dtypes = ("float32", "float16", "int8")
    head = ["step"] + [f"{b} {d}" for b in BOARDS for d in dtypes]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for label, case in DTYPE_TABLE:
        cells = [f"{rows[(b, case, d)]:,}" if (b, case, d) in rows else "" for b in BOARDS for d in dtypes]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--board", action="append", choices=BOARDS,
                        help="default: every emulated board; with --board, the other boards' rows "
                             "already in --out are kept")
    parser.add_argument("--no-cycles", action="store_true", help="skip the cycle model on qemu-m4f")
    parser.add_argument("--dtype-table", action="store_true",
                        help="print the README's dtype-per-board table from --out and run nothing")
    args = parser.parse_args()
    if args.dtype_table:
        print(dtype_table(json.loads(args.out.read_text())), end="")
        return 0
    results: list[dict] = []
    if args.board and args.out.exists():
        results = [r for r in json.loads(args.out.read_text()) if r.get("target") not in args.board]
    for board in args.board or BOARDS:
        results += run_board(board, cycles=board in CYCLE_BOARDS and not args.no_cycles)
    add_ratios(results)
    print_table(results)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
