"""The table `mcutrain fleet` prints at the end: per round, then per board, then the events."""

from __future__ import annotations

from typing import Any

from .launch import FleetResult


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_table(result: FleetResult) -> str:
    s = result.summary.get("settings", {})
    lines = [
        f"fleet: {s.get('strategy')} over {len(result.summary.get('boards', {}))} boards, "
        f"{result.summary.get('rounds')} rounds, {s.get('dtype')} on the boards, update {s.get('update')}",
        "",
        "| round | boards ok | failed | train loss | board accuracy | central accuracy | central loss "
        "| bytes down | bytes up | s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.rounds:
        lines.append(
            f"| {r['round']} | {'-' if r['boards_ok'] is None else r['boards_ok']} "
            f"| {'-' if r['boards_failed'] is None else r['boards_failed']} | {_f(r['train_loss'])} "
            f"| {_f(r['eval_accuracy'])} | {_f(r['central_accuracy'])} | {_f(r['central_loss'])} "
            f"| {r['bytes_down']} | {r['bytes_up']} | {r['seconds']:.1f} |")  # fmt: skip
    lines += ["", "| board | rounds trained | bytes down | bytes up |", "|---|---:|---:|---:|"]
    for name, b in sorted(result.summary.get("boards", {}).items()):
        lines.append(f"| {name} | {b['rounds_ok']} | {b['bytes_down']} | {b['bytes_up']} |")
    for e in result.events:
        what = {"killed": "emulator killed", "failed": "failed", "rejoined": "rejoined"}.get(e["event"], e["event"])
        lines.append(f"round {e['round']}: {e.get('board')} {what}" + (f" ({e['phase']})" if e.get("phase") else ""))
    lines += ["", f"{result.out}: rounds.csv, boards.csv, summary.json, "
              + ", ".join(p.name for p in result.plots) + f"; {result.seconds:.0f} s"]  # fmt: skip
    return "\n".join(lines)
