"""Per-round records of a fleet run, written as the run goes (no Flower types here).

    OUT/boards.jsonl, boards.csv   one row per board, round and phase (train / evaluate):
                                   ok or the error, loss, accuracy, bytes down and up the link
    OUT/rounds.jsonl, rounds.csv   one row per round: boards that answered and failed, the
                                   weighted train/evaluate metrics, the global model's central
                                   accuracy and loss, bytes over all links, wall time
    OUT/events.jsonl               boards that failed and that rejoined
    OUT/summary.json               the run's settings and final figures

Lines starting "[fleet]" are printed for the console (the launcher passes them on).
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BOARDS = "boards"
ROUNDS = "rounds"
EVENTS = "events.jsonl"
SUMMARY = "summary.json"
_NAMED = re.compile(r":<'([\w.-]+): ")
ROUND_COLUMNS = ("round", "boards_ok", "boards_failed", "train_loss", "train_accuracy", "eval_loss",
                 "eval_accuracy", "central_loss", "central_accuracy", "bytes_down", "bytes_up",
                 "seconds")  # fmt: skip


@dataclass
class Reply:
    """One board's answer in a round, as the strategy saw it."""

    node: int
    board: str | None  # None when the reply was an error (the board did not say its name)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class RoundLog:
    def __init__(self, out: Path | str, settings: Mapping[str, Any], echo: bool = True) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.settings = dict(settings)
        self.echo = echo
        self.board_rows: list[dict[str, Any]] = []
        self.round_rows: list[dict[str, Any]] = []
        self.names: dict[int, str] = {}  # node id -> board name, from replies
        self.failed: dict[int, int] = {}  # node id -> round it last failed in
        self.t_round = time.monotonic()
        for name in (f"{BOARDS}.jsonl", f"{ROUNDS}.jsonl", EVENTS):
            (self.out / name).write_text("")

    def say(self, text: str) -> None:
        if self.echo:
            print(f"[fleet] {text}", flush=True)

    def event(self, kind: str, round_: int, **fields: Any) -> None:
        row = {"event": kind, "round": round_, "time": time.time(), **fields}
        with open(self.out / EVENTS, "a") as f:
            f.write(json.dumps(row) + "\n")

    def name(self, node: int) -> str:
        return self.names.get(node, f"node {node}")

    def learn_name(self, reply: Reply) -> None:
        """A board's name from its reply, or from the reason of its error (the client puts it
        first: "<class '...'>:<'board-2: ...'>")."""
        if reply.board is not None:
            self.names[reply.node] = reply.board
        elif reply.error is not None and reply.node not in self.names:
            m = _NAMED.search(reply.error)
            if m:
                self.names[reply.node] = m.group(1)

    def replies(self, round_: int, phase: str, replies: Iterable[Reply]) -> None:
        """Record a phase's replies; log failures and boards that answer again after one."""
        for r in replies:
            self.learn_name(r)
            row: dict[str, Any] = {"round": round_, "phase": phase, "board": self.name(r.node),
                                   "node": r.node, "ok": r.error is None, **r.metrics}  # fmt: skip
            if r.error is not None:
                row["error"] = r.error
                self.failed[r.node] = round_
                self.event("failed", round_, phase=phase, board=self.name(r.node), node=r.node, error=r.error)
                self.say(f"round {round_}: {self.name(r.node)} failed in {phase}: {_first_line(r.error)}")
            elif r.node in self.failed and self.failed[r.node] < round_:
                del self.failed[r.node]
                self.event("rejoined", round_, phase=phase, board=self.name(r.node), node=r.node)
                self.say(f"round {round_}: {self.name(r.node)} rejoined")
            self.board_rows.append(row)
            with open(self.out / f"{BOARDS}.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        _write_csv(self.out / f"{BOARDS}.csv", self.board_rows)

    def end_round(self, round_: int, central: Mapping[str, float] | None) -> dict[str, Any]:
        """Close a round (0: the initial model) with the central evaluation, if any."""
        rows = [r for r in self.board_rows if r["round"] == round_]
        train = [r for r in rows if r["phase"] == "train" and r["ok"]]
        evals = [r for r in rows if r["phase"] == "evaluate" and r["ok"]]
        failed = {r["node"] for r in rows if not r["ok"]}
        row: dict[str, Any] = {
            "round": round_,
            "boards_ok": len({r["node"] for r in train}) if round_ else None,
            "boards_failed": len(failed) if round_ else None,
            "train_loss": _weighted(train, "train-loss"),
            "train_accuracy": _weighted(train, "train-accuracy"),
            "eval_loss": _weighted(evals, "eval-loss"),
            "eval_accuracy": _weighted(evals, "eval-accuracy"),
            "central_loss": central.get("loss") if central else None,
            "central_accuracy": central.get("accuracy") if central else None,
            "bytes_down": sum(int(r.get("bytes-down", 0)) for r in rows if r["ok"]),
            "bytes_up": sum(int(r.get("bytes-up", 0)) for r in rows if r["ok"]),
            "seconds": round(time.monotonic() - self.t_round, 3),
        }
        self.t_round = time.monotonic()
        self.round_rows.append(row)
        with open(self.out / f"{ROUNDS}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        _write_csv(self.out / f"{ROUNDS}.csv", self.round_rows, ROUND_COLUMNS)
        self.say(_round_line(row))
        return row

    def finish(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write summary.json: settings, the last round's figures, bytes per board and round."""
        last = self.round_rows[-1] if self.round_rows else {}
        per_board: dict[str, dict[str, int]] = {}
        for r in self.board_rows:
            if r["ok"]:
                b = per_board.setdefault(r["board"], {"bytes_down": 0, "bytes_up": 0, "rounds_ok": 0})
                b["bytes_down"] += int(r.get("bytes-down", 0))
                b["bytes_up"] += int(r.get("bytes-up", 0))
                b["rounds_ok"] += r["phase"] == "train"
        summary = {
            "settings": self.settings,
            "rounds": max((r["round"] for r in self.round_rows), default=0),
            "final": last,
            "boards": per_board,
            "failures": sum(1 for r in self.board_rows if not r["ok"]),
            **(extra or {}),
        }
        (self.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:160] if text.strip() else text


def _weighted(rows: list[dict[str, Any]], key: str) -> float | None:
    total = sum(float(r.get("num-examples", 0)) for r in rows if key in r)
    if not total:
        return None
    return sum(float(r[key]) * float(r.get("num-examples", 0)) for r in rows if key in r) / total


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _round_line(row: Mapping[str, Any]) -> str:
    if row["round"] == 0:
        return f"initial model: central accuracy {_fmt(row['central_accuracy'])}"
    return (f"round {row['round']}: {row['boards_ok']} boards trained, {row['boards_failed']} failed; "
            f"train loss {_fmt(row['train_loss'])}, board accuracy {_fmt(row['eval_accuracy'])}, "
            f"central accuracy {_fmt(row['central_accuracy'])}; "
            f"{row['bytes_down']} B down, {row['bytes_up']} B up; {row['seconds']:.1f} s")  # fmt: skip


def _write_csv(path: Path, rows: list[dict[str, Any]], leading: tuple[str, ...] = ()) -> None:
    columns = list(leading)
    for r in rows:
        columns += [k for k in r if k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


def read_rows(out: Path | str, name: str = ROUNDS) -> list[dict[str, Any]]:
    """The rows of OUT/rounds.jsonl (or boards.jsonl with name="boards")."""
    with open(Path(out) / f"{name}.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_events(out: Path | str) -> list[dict[str, Any]]:
    path = Path(out) / EVENTS
    if not path.is_file():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
