"""Accuracy and loss per round of a fleet run (OUT/rounds.jsonl) as PNGs, as `mcutrain plot`
draws a single board's run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..plot import save_axes
from .rounds import read_rows

# (file, title, y label, ((field, label), ...))
PLOTS = (
    ("fleet_accuracy.png", "Accuracy per round", "accuracy",
     (("central_accuracy", "global model, held-out test (host)"),
      ("eval_accuracy", "global model, boards' own test data"),
      ("train_accuracy", "local training (boards)"))),
    ("fleet_loss.png", "Loss per round", "loss",
     (("central_loss", "global model, held-out test (host)"),
      ("eval_loss", "global model, boards' own test data"),
      ("train_loss", "local training (boards)"))),
)  # fmt: skip


def plot_rounds(out: Path | str, rows: list[dict[str, Any]] | None = None) -> list[Path]:
    """Draw the plots that the rounds have data for into OUT; their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    rows = read_rows(out) if rows is None else rows
    written = []
    for name, title, ylabel, fields in PLOTS:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        drawn = False
        for field, label in fields:
            points = [(r["round"], r[field]) for r in rows if isinstance(r.get(field), (int, float))]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
                drawn = True
        if drawn:
            ax.set_xticks(sorted({int(r["round"]) for r in rows}))
            written.append(save_axes(fig, ax, out / name, title, "round (0: the initial model)", ylabel))
        plt.close(fig)
    return written
