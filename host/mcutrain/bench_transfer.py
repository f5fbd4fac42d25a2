"""Benchmark: push a dataset file to an emulated board with the framed transfer, and the same
file with `mpremote fs cp`. Entries {target, case, bytes, seconds, bytes_per_s} for
bench/results.json.

    python -m mcutrain.bench_transfer --out bench/results.json --append

`seconds` is the whole operation as a user sees it: connecting, starting the receiver (or
mpremote's own setup), the data, and the board's hash check. mpremote runs as its own process
(as `mpremote fs cp` does for a user), so its figure includes ~0.2 s of Python start-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .emulator import Emulator
from .formats import write_dataset
from .transfer import DEFAULT_FRAME, DEFAULT_WINDOW, push_file

DEFAULT_SAMPLES = 500  # 8x8x1 float32 samples: a 127 KB .mtd


def make_dataset(path: Path, samples: int = DEFAULT_SAMPLES) -> int:
    """A deterministic float32 .mtd of `samples` 8x8x1 images; its size in bytes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, samples)
    write_dataset(path, x, y, dtype="float32", class_names=[str(i) for i in range(10)])
    return path.stat().st_size


def _entry(target: str, case: str, size: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"target": target, "case": case, "bytes": size, "seconds": round(seconds, 4),
            "bytes_per_s": round(size / seconds, 1), **extra}  # fmt: skip


def bench_board(
    board: str = "qemu-m4f",
    *,
    samples: int = DEFAULT_SAMPLES,
    repeats: int = 3,
    cp_repeats: int = 1,
    frame_size: int = DEFAULT_FRAME,
    window: int = DEFAULT_WINDOW,
) -> list[dict[str, Any]]:
    """Median times of `repeats` pushes and `cp_repeats` fs cp's of one dataset file."""
    with tempfile.TemporaryDirectory(prefix="mcutrain-bench-") as tmp:
        path = Path(tmp) / "bench.mtd"
        size = make_dataset(path, samples)
        with Emulator(board) as emu:  # a temporary flash image
            pushes = []
            for _ in range(repeats):
                emu.drain_uart()
                result = push_file(emu.device, path, "bench.mtd", frame_size=frame_size,
                                   window=window)  # fmt: skip
                pushes.append(result.seconds)
            copies = []
            for _ in range(cp_repeats):
                t0 = time.monotonic()
                emu.mpremote("fs", "cp", str(path), ":bench_cp.mtd", timeout=600)
                copies.append(time.monotonic() - t0)
            check = emu.exec("import os; print(os.stat('bench.mtd')[6], os.stat('bench_cp.mtd')[6])")
            if check.split() != [str(size), str(size)]:
                raise RuntimeError(f"the board holds files of sizes {check.split()}, not {size}")
    return [
        _entry(board, "push_dataset", size, statistics.median(pushes),
               frame=frame_size, window=window, repeats=repeats),
        _entry(board, "mpremote_fs_cp", size, statistics.median(copies), repeats=cp_repeats),
    ]  # fmt: skip


def merge(existing: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`existing` with entries of the same (target, case) replaced by `new` ones."""
    keys = {(e["target"], e["case"]) for e in new}
    return [e for e in existing if (e.get("target"), e.get("case")) not in keys] + new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the entries (a JSON list) here")
    parser.add_argument("--append", action="store_true",
                        help="merge into the list already in --out (same target+case replaced)")
    parser.add_argument("--board", action="append", choices=("qemu-m4f", "qemu-rv32"),
                        help="default: qemu-m4f")  # fmt: skip
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"dataset size in 260-byte records (default {DEFAULT_SAMPLES})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cp-repeats", type=int, default=1)
    parser.add_argument("--frame", type=int, default=DEFAULT_FRAME)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    args = parser.parse_args(argv)
    entries: list[dict[str, Any]] = []
    for board in args.board or ["qemu-m4f"]:
        entries += bench_board(board, samples=args.samples, repeats=args.repeats,
                               cp_repeats=args.cp_repeats, frame_size=args.frame,
                               window=args.window)  # fmt: skip
    for e in entries:
        print(f"{e['target']:10} {e['case']:16} {e['bytes']:>8} B {e['seconds']:8.2f} s "
              f"{e['bytes_per_s'] / 1024:8.1f} KB/s")  # fmt: skip
    if args.out is not None:
        old = json.loads(args.out.read_text()) if args.append and args.out.is_file() else []
        args.out.write_text(json.dumps(merge(old, entries), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
