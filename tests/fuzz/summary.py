"""The combined fuzzing table (markdown) from build/fuzz/*.json.

    python tests/fuzz/summary.py [--dir build/fuzz] [--check]

Each JSON file is a list of rows {"fuzzer", "target", "runs", "crashes", "hangs",
"sanitizer_reports", "python_exceptions", "notes"} (api.py writes api.json; files.py and
power_loss.py write files.json and power_loss.json). Missing files are listed as not run.
With --check it exits 1 if any row has a crash, a hang or a sanitizer report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ("api", "files", "power_loss")  # the fuzzers `make fuzz` runs, in table order
COLUMNS = ("runs", "crashes", "hangs", "sanitizer_reports", "python_exceptions")


def load_rows(directory: Path) -> tuple[list[dict], list[str]]:
    """All rows, and the problems met (missing or unreadable files)."""
    rows: list[dict] = []
    problems: list[str] = []
    names = [p.stem for p in sorted(directory.glob("*.json"))] if directory.is_dir() else []
    order = [n for n in EXPECTED if n in names] + [n for n in names if n not in EXPECTED]
    for name in order:
        path = directory / f"{name}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            problems.append(f"{path.name}: unreadable ({e})")
            continue
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list) or not all(isinstance(r, dict) and "runs" in r for r in data):
            # Not a table of fuzz rows (e.g. api_failures.json, the failures' details).
            continue
        rows.extend(dict(r, fuzzer=r.get("fuzzer", name)) for r in data)
    for name in EXPECTED:
        if name not in names:
            problems.append(f"{name}: not run ({directory / (name + '.json')} missing)")
    return rows, problems


def _cell(v) -> str:
    return f"{v:,}" if isinstance(v, int) else str(v if v is not None else "-")


def table(rows: list[dict]) -> str:
    lines = [
        "| fuzzer | target | runs | crashes | hangs | sanitizer reports | Python exceptions | notes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cells = [r.get("fuzzer", "?"), r.get("target", "?")] + [_cell(r.get(c)) for c in COLUMNS]
        notes = str(r.get("notes", "")).replace("|", "/").replace("\n", " ")
        lines.append("| " + " | ".join(str(c) for c in cells) + f" | {notes} |")
    return "\n".join(lines)


def failing(rows: list[dict]) -> bool:
    return any((r.get("crashes") or 0) + (r.get("hangs") or 0) + (r.get("sanitizer_reports") or 0) for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=ROOT / "build/fuzz")
    p.add_argument("--check", action="store_true", help="exit 1 on any crash, hang or sanitizer report")
    args = p.parse_args(argv)
    rows, problems = load_rows(args.dir)
    print(table(rows))
    for problem in problems:
        print(f"\nnote: {problem}")
    if args.check and failing(rows):
        print("\nFAIL: crashes, hangs or sanitizer reports above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
