"""Per-function profile of one perf_counter() region on an emulated board: instructions, and on
qemu-m4f estimated Cortex-M4 cycles (the cycle-model plugin in profile mode; docs/cycle-model.md).

    bench/profile_step.py script.py                        # the last region the script measures
    bench/profile_step.py script.py --region 2             # its second region (t2 - t1)
    bench/profile_step.py --case kws_dscnn_train_b1 --dtype int8   # a whole-model step of bench/cases.py
    bench/profile_step.py --case conv3x3_16x16x16_32_train --board qemu-rv32f   # a layer case

On the RISC-V boards the table has instructions only: the plugin's cycle weights are the M4's.

The device script measures with mt.perf_counter() (t0 = mt.perf_counter(); ...;
t1 = mt.perf_counter(); print(t1 - t0)). The table's total is the region's instruction count,
the same number perf_counter() gives (checked when the script prints it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from mcutrain.boards import get_board  # noqa: E402
from mcutrain.cycle_model import CycleModel, Profile, by_function  # noqa: E402
from mcutrain.runner import open_target, run_on  # noqa: E402

BOARDS = ("qemu-m4f", "qemu-rv32", "qemu-rv32f")
CASE = re.compile(r"(\w+)_train_b(\d+)$")


def case_script(case: str, dtype: str, board: str = "qemu-m4f") -> tuple[str, int]:
    """bench/cases.py running one case and nothing else, and the region of its training step:
    a whole-model step (name_train_bN, or a TOPK_MODEL_CASES one) or a layer step of its DTYPE_LAYER_CASES (whose first
    region is the training step, the second its forward alone)."""
    source = (ROOT / "bench" / "cases.py").read_text()
    source = source.replace('TARGET = "unknown"', f"TARGET = {board!r}")
    source = source.replace('PART = "layers"', "PART = None")  # run no part, only the case below
    if case.endswith("_topk10"):
        return source + f"""
make, shape, classes, batch = TOPK_MODEL_CASES[{case!r}]
whole_model_step({case!r}, make, shape, classes, {dtype!r}, batch, mt.TopK(0.1, 0.1))
""", 0
    match = CASE.match(case)
    if not match:
        return source + f"""
if {case!r} not in DTYPE_LAYER_CASES:
    raise ValueError("no whole-model or layer case " + {case!r})
layer_train_step({case!r}, *DTYPE_LAYER_CASES[{case!r}], {dtype!r})
""", 1
    name, batch = match.group(1), int(match.group(2))
    return source + f"""
for name, make, shape, classes in WHOLE_MODELS:
    if name == {name!r}:
        whole_model_step({case!r}, make, shape, classes, {dtype!r}, {batch})
        break
else:
    raise ValueError("no whole-model case " + {name!r})
""", 0


def profile(script: str, region: int = 0, heap: int | None = None,
            board: str = "qemu-m4f") -> tuple[Profile, str, Path]:
    """Run `script` on `board` with the plugin profiling `region` (0: the last one); the
    profile, what the script printed and the firmware (for its symbols)."""
    firmware = get_board(board).firmware_path()
    model = CycleModel(firmware, profile=region)
    try:
        with open_target(board, heap=heap, qemu_args=model.qemu_args()) as target:
            printed = run_on(target, script, timeout=None)
        return model.profile(), printed, firmware  # written as QEMU exited
    finally:
        model.close()


def print_table(result: Profile, firmware: Path, top: int, with_cycles: bool = True) -> None:
    rows = by_function(result, firmware)
    width = max([len("function")] + [len(name) for name, _, _ in rows[:top]])

    def row(name: str, insns: int, cycle_count: int) -> None:
        i_share, c_share = 100 * insns / result.instructions, 100 * cycle_count / result.cycles
        line = f"{name:<{width}} {insns:>12,} {i_share:>6.2f}"
        print(line + f" {cycle_count:>12,} {c_share:>6.2f}" if with_cycles else line)

    header = f"{'function':<{width}} {'instructions':>12} {'%':>6}"
    print(header + f" {'cycles':>12} {'%':>6}" if with_cycles else header)
    for name, insns, cycles in rows[:top]:
        row(name, insns, cycles)
    rest = rows[top:]
    if rest:
        row(f"({len(rest)} more)", sum(r[1] for r in rest), sum(r[2] for r in rest))
    row("total", result.instructions, result.cycles)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", nargs="?", type=Path,
                        help="device script measuring with mt.perf_counter()")
    parser.add_argument("--region", type=int, default=0,
                        help="which region: 1 = the first (t1 - t0); default: the last")
    parser.add_argument("--case", help="a whole-model case of bench/cases.py, e.g. kws_dscnn_train_b1, "
                        "or one of its DTYPE_LAYER_CASES, e.g. conv3x3_16x16x16_32_train")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "int8", "mixed"))
    parser.add_argument("--board", default="qemu-m4f", choices=BOARDS)
    parser.add_argument("--heap", type=int, help="heap bytes (default: the board's; 1 MiB with --case)")
    parser.add_argument("--top", type=int, default=25, help="functions to list (default 25)")
    args = parser.parse_args()
    if (args.script is None) == (args.case is None):
        parser.error("give a device script or --case")
    region = args.region
    if args.case:
        script, case_region = case_script(args.case, args.dtype, args.board)
        heap, region = args.heap or 1 << 20, region or case_region
    else:
        script, heap = args.script.read_text(), args.heap
    result, printed, firmware = profile(script, region, heap, args.board)
    m4 = args.board == "qemu-m4f"
    print(printed.rstrip())
    cycles = f", {result.cycles:,} estimated M4 cycles" if m4 else ""
    print(f"\nregion {result.region}: {result.instructions:,} instructions{cycles}")
    if str(result.instructions) not in re.findall(r"\d+", printed):
        print("(the script printed no perf_counter() difference equal to it)")
    print_table(result, firmware, args.top, with_cycles=m4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
