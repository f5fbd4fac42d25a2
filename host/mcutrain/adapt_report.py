"""The README's adaptation table from `make demo` summaries of several seeds.

    python -m mcutrain.adapt_report results/kws results/kws-seed1 results/kws-seed2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _runs(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [summary, *summary.get("comparison", [])]


def adapt_table(summaries: list[dict[str, Any]]) -> str:
    """One row per run: accuracy after adapting (mean over seeds), its gain over the host model
    per seed and on average, the backward MACs done, step instructions and peak RAM."""
    if not summaries:
        raise ValueError("no summaries to tabulate")
    names = [r["run"] for r in _runs(summaries[0])]
    host = [s["host_test_accuracy"] for s in summaries]
    lines = [
        "| run | update | accuracy after (mean) | gain over the host model, per seed | mean gain "
        "| backward MACs | instructions (last step) | peak RAM |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        f"| host model (PyTorch) | – | {100 * sum(host) / len(host):.1f}% | – | – | – | – | – |",
    ]
    for name in names:
        rows = [next(r for r in _runs(s) if r["run"] == name) for s in summaries]
        gains = [100 * (r["accuracy_after"] - h) for r, h in zip(rows, host, strict=True)]
        after = sum(r["accuracy_after"] for r in rows) / len(rows)
        bwd = sum(r.get("backward_mac_fraction", 1.0) for r in rows) / len(rows)
        steps = sum(r["step_instructions"] for r in rows) / len(rows)
        lines.append(f"| {name} | {rows[0]['update_policy']} "
                     f"| {100 * after:.1f}% | {', '.join(f'{g:+.1f}' for g in gains)} "
                     f"| **{sum(gains) / len(gains):+.1f}** | {100 * bwd:.0f}% | {steps:,.0f} "
                     f"| {rows[0]['peak_ram_bytes']:,} B |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", type=Path, nargs="+", help="folders holding a make demo summary.json")
    args = parser.parse_args(argv)
    summaries = [json.loads((d / "summary.json").read_text()) for d in args.dirs]
    print(adapt_table(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
