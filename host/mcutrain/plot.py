"""Plots of collected results (DIR/results.jsonl): loss, accuracy and time per step."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .collect import Record, read_results

# (file, title, y label, fields): each field is drawn from step lines and from epoch lines.
PLOTS = (
    ("loss.png", "Loss", "loss", ("loss", "val_loss")),
    ("accuracy.png", "Accuracy", "accuracy", ("accuracy", "val_accuracy")),
    ("time_per_step.png", "Time per step", "ms per step", ("dt_ms",)),
)
# Said on time axes when the board's clock is QEMU's instruction count (mcutrain.metrics writes
# "clock": "emulated" on the start and done lines of such runs).
EMULATED_TITLE = "emulated board: QEMU -icount shift=0, instructions as ns"
EMULATED_UNIT = "emulated ms per step (1 instruction = 1 ns)"


def emulated_time(records: Sequence[Record]) -> bool:
    """Whether the records' times come from an emulated board's instruction count."""
    return any(r.get("clock") == "emulated" for r in records)


def titles(records: Sequence[Record]) -> dict[str, tuple[str, str]]:
    """Each plot's (title, y label) for these records: time says when it is emulated."""
    out = {name: (title, ylabel) for name, title, ylabel, _ in PLOTS}
    if emulated_time(records):
        out["time_per_step.png"] = (f"Time per step\n({EMULATED_TITLE})", EMULATED_UNIT)
    return out


def _series(records: Sequence[Record], kind: str, field: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(records):
        value = r.get(field)
        if r.get("kind", "step") != kind or not isinstance(value, (int, float)):
            continue
        x = r.get("step", i)
        xs.append(float(x) if isinstance(x, (int, float)) else float(i))
        ys.append(float(value))
    return xs, ys


def _before(records: Sequence[Record], fields: Sequence[str]) -> float | None:
    """The starting model's validation accuracy (`accuracy_before`, as train_kws.py's
    EVAL_BEFORE writes it on its done line), for the accuracy plot."""
    if "val_accuracy" not in fields:
        return None
    found = [r["accuracy_before"] for r in records if isinstance(r.get("accuracy_before"), (int, float))]
    return float(found[-1]) if found else None


def plot_records(records: Sequence[Record], out_dir: Path | str) -> list[Path]:
    """Draw the PNGs that `records` have data for, into `out_dir`; their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    labels = titles(records)
    for name, _, _, fields in PLOTS:
        title, ylabel = labels[name]
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        drawn = False
        for field in fields:
            for kind, style in (("step", {"linewidth": 1.0}),
                                ("epoch", {"marker": "o", "linestyle": "--"})):  # fmt: skip
                xs, ys = _series(records, kind, field)
                if xs:
                    ax.plot(xs, ys, label=f"{field} ({kind})", **style)
                    drawn = True
        before = _before(records, fields)
        if before is not None:  # an adaptation run scored its starting model first
            ax.plot([0.0], [before], marker="s", linestyle="none", label="val_accuracy before training")
            drawn = True
        if drawn:
            written.append(save_axes(fig, ax, out / name, title, "step", ylabel))
        plt.close(fig)
    return written


def save_axes(fig: Any, ax: Any, path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    """Title, axis labels, a light grid and the legend on `ax`, then `fig` saved to `path`:
    the one look of every plot the host draws."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_results(directory: Path | str, out_dir: Path | str | None = None) -> list[Path]:
    """Plot DIR/results.jsonl into `out_dir` (default DIR); the PNGs written."""
    records = read_results(directory)
    return plot_records(records, out_dir if out_dir is not None else directory)


def missing_plots(written: Sequence[Path]) -> list[str]:
    """The plots that had no data."""
    names = {p.name for p in written}
    return [name for name, *_ in PLOTS if name not in names]


__all__ = ["PLOTS", "emulated_time", "missing_plots", "plot_records", "plot_results", "titles"]
