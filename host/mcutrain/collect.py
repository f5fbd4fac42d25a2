"""Collect a device script's metrics while it runs: lines `@mt {...}` (written by the device
package's mcutrain.metrics) become records, shown as live progress and saved as
DIR/results.jsonl and DIR/results.csv, with the run's final `done` record (and its early
halting fields) in DIR/summary.json; all other output passes through."""

from __future__ import annotations

import csv
import json
import math
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, TextIO

from .errors import DeviceTimeout

PREFIX = "@mt "
JSONL_NAME = "results.jsonl"
CSV_NAME = "results.csv"
SUMMARY_NAME = "summary.json"
# Early halting's fields (device mcutrain.halting through Metrics(skip=..., stop=...)).
HALTING_FIELDS = ("skipped", "skip_fraction", "stop", "best", "best_evaluation", "evaluations")
# Columns that lead the CSV when present; the rest follow in order of first appearance.
LEADING_COLUMNS = ("kind", "epoch", "step", "loss", "accuracy", "t", "dt_ms")
# MicroPython's json writes non-finite floats as nan / inf, which JSON lacks.
_NON_FINITE = re.compile(r'(?<=[\[:,\s])(-?)(nan|inf)(?=\s*[,}\]])')

Record = dict[str, Any]


def parse_metrics_line(line: str) -> Record | None:
    """The record on a metrics line, or None when the line is ordinary output."""
    if not line.startswith(PREFIX):
        return None
    text = line[len(PREFIX) :].strip()
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        fixed = _NON_FINITE.sub(lambda m: m[1] + ("NaN" if m[2] == "nan" else "Infinity"), text)
        fixed = fixed.replace("-NaN", "NaN")
        try:
            record = json.loads(fixed)
        except json.JSONDecodeError:
            return None
    return record if isinstance(record, dict) else None


def read_results(directory: Path | str) -> list[Record]:
    """The records of DIR/results.jsonl."""
    path = Path(directory) / JSONL_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {JSONL_NAME} in {directory} (write one with `run --collect`)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize(records: Sequence[Record]) -> Record | None:
    """A run's summary: its last `done` record without `kind` (final epoch, steps, time and
    what the script added), the early halting fields taken from the last record that has
    them when `done` lacks them; None when the run wrote no `done` line (it did not finish)."""
    done = [r for r in records if r.get("kind") == "done"]
    if not done:
        return None
    summary = {k: v for k, v in done[-1].items() if k != "kind"}
    for key in HALTING_FIELDS:
        if key not in summary:
            for r in reversed(records):
                if key in r:
                    summary[key] = r[key]
                    break
    return summary


def write_summary(records: Sequence[Record], path: Path | str) -> Record | None:
    """Write summarize(records) as JSON to path (nothing when there is no `done` record)."""
    summary = summarize(records)
    if summary is not None:
        Path(path).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def csv_columns(records: Sequence[Record]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        for k in r:
            seen.setdefault(k)
    return [c for c in LEADING_COLUMNS if c in seen] + [c for c in seen if c not in LEADING_COLUMNS]


def write_csv(records: Sequence[Record], path: Path | str) -> None:
    """One row per record; nested values as JSON, missing ones empty."""
    columns = csv_columns(records)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in records:
            w.writerow(
                ["" if (v := r.get(c)) is None else json.dumps(v) if isinstance(v, (dict, list))
                 else v for c in columns]
            )  # fmt: skip


def format_record(record: Record, rate: float | None = None) -> str:
    """A short progress line: `epoch 1  step 40  loss 0.5312  acc 81.2%  12.3 steps/s`."""
    parts = []
    if record.get("kind") not in (None, "step", "epoch"):
        parts.append(str(record["kind"]))
    for key, label in (("epoch", "epoch"), ("step", "step")):
        if key in record:
            parts.append(f"{label} {record[key]}")
    for key in ("loss", "val_loss"):
        if isinstance(record.get(key), (int, float)):
            parts.append(f"{key} {record[key]:.4g}")
    for key in ("accuracy", "val_accuracy"):
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            name = "acc" if key == "accuracy" else "val_acc"
            parts.append(f"{name} {value * 100:.1f}%" if value <= 1 else f"{name} {value:.4g}")
    if rate is not None:
        parts.append(f"{rate:.3g} steps/s")
    if record.get("kind") not in (None, "step", "epoch"):
        shown = {"kind", "epoch", "step", "loss", "val_loss", "accuracy", "val_accuracy"}
        parts += [f"{k}={v}" for k, v in record.items() if k not in shown][:6]
    return "  ".join(parts)


class Collector:
    """Feed it a script's output a line at a time.

    json_out: records go to `out` as JSON lines and other output to `status` (for piping);
    else other output goes to `out` and progress to `status` (redrawn in place on a tty).
    """

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        out: TextIO | None = None,
        status: TextIO | None = None,
        json_out: bool = False,
    ) -> None:
        self.out = out if out is not None else sys.stdout
        self.status = status if status is not None else sys.stderr
        self.json_out = json_out
        self.records: list[Record] = []
        self.directory = Path(directory) if directory is not None else None
        self._jsonl: IO[str] | None = None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.directory / JSONL_NAME, "w")
        self._tty = self.status.isatty()
        self._shown = ""
        self._rate_from: tuple[int, float] | None = None
        self.rate: float | None = None

    def feed(self, line: str) -> Record | None:
        record = parse_metrics_line(line)
        if record is None:
            self._passthrough(line)
            return None
        self.records.append(record)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()  # partial results survive a crash or Ctrl-C
        self._update_rate(record)
        if self.json_out:
            self.out.write(json.dumps(record) + "\n")
            self.out.flush()
        else:
            self._show(record)
        return record

    def close(self) -> None:
        """End the progress line and write results.csv (and summary.json after a `done`)."""
        if self._tty and self._shown:
            self.status.write("\n")
            self.status.flush()
            self._shown = ""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
            assert self.directory is not None
            write_csv(self.records, self.directory / CSV_NAME)
            write_summary(self.records, self.directory / SUMMARY_NAME)

    def _update_rate(self, record: Record) -> None:
        step = record.get("step")
        if not isinstance(step, int):
            return
        t = record.get("t")
        now = float(t) if isinstance(t, (int, float)) else time.monotonic()
        if self._rate_from is not None:
            step0, t0 = self._rate_from
            if step > step0 and now > t0:
                self.rate = (step - step0) / (now - t0)
        self._rate_from = (step, now)

    def _passthrough(self, line: str) -> None:
        stream = self.status if self.json_out else self.out
        if self._tty and self._shown and stream.isatty():
            self.status.write("\r\x1b[K")
            self.status.flush()
        stream.write(line + "\n")
        stream.flush()
        if self._tty and self._shown and stream.isatty():
            self.status.write(self._shown)
            self.status.flush()

    def _show(self, record: Record) -> None:
        step = record.get("kind", "step") == "step"
        text = format_record(record, self.rate if step else None)
        if self._tty:
            # Steps redraw one status line; epochs and the rest stay on screen.
            self.status.write("\r\x1b[K" + text + ("" if step else "\n"))
            self._shown = text if step else ""
        elif not step:
            self.status.write(text + "\n")  # logs get epochs, not every step
        self.status.flush()


def stream_command(
    command: Sequence[str],
    collector: Collector,
    timeout: float | None = None,
    cwd: Path | str | None = None,
    merge_stderr: bool = False,
) -> int:
    """Run `command`, feeding its stdout to `collector` line by line as it arrives; its exit
    status. DeviceTimeout (after killing it) when it runs longer than `timeout` seconds."""
    proc = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=cwd,
        stderr=subprocess.STDOUT if merge_stderr else None,
    )  # fmt: skip
    lines: queue.Queue[bytes | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                raw = lines.get(timeout=wait)
            except queue.Empty:
                raise DeviceTimeout(f"`{' '.join(command)}` took more than {timeout} s", "") from None
            if raw is None:
                break
            collector.feed(raw.decode("utf-8", "replace").rstrip("\r\n"))
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=2)
        if proc.stdout is not None:
            proc.stdout.close()
