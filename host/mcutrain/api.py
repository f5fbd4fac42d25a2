"""The host package's public API: what the CLI does, as functions a script or notebook calls.

    import mcutrain
    with mcutrain.board("qemu-m4f") as b:            # boots the emulator, stops it on exit
        b.push_dataset("digits.npz", dtype="int8")
        b.push_model("model.pt", input_shape=(1, 8, 8))
        records = b.run("examples/train_digits.py", collect="results/digits")
        b.pull_model("model.mtm", "trained.pt")
    mcutrain.plot_results("results/digits")

(`mcutrain.export` and `mcutrain.plot` are modules, hence export_model and plot_results.)
Each method is a thin wrapper over the module that does the work (push.py, collect.py,
export/, plot.py), as the CLI commands are; docs/host-api.md documents them.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .collect import Collector, Record, read_results, stream_command
from .device import Device, open_device
from .errors import DeviceError
from .ports import resolve_device
from .push import PushResult, pull_model, push_dataset, push_model

__all__ = ["Board", "Record", "board", "export_model", "plot_results", "read_results"]


@dataclass
class Board:
    """A board that is open: a serial one, a booted emulator or the unix port (`device`)."""

    device: Device

    @property
    def name(self) -> str:
        return self.device.board

    def exec(self, code: str, timeout: float | None = None) -> str:
        """Run MicroPython source on the board; what it printed (DeviceError on an exception)."""
        return self.device.exec(code, timeout=timeout) if timeout else self.device.exec(code)

    def run(
        self,
        script: Path | str,
        *,
        args: Sequence[str] = (),
        collect: Path | str | None = None,
        mount: Path | str | None = None,
        timeout: float | None = None,
        echo: bool = False,
    ) -> list[Record]:
        """Run a device script (sys.argv[1:] == args; `mount` serves a host folder at /remote)
        and return its metrics records (`@mt` lines), also written to `collect`/results.jsonl,
        .csv and summary.json when given. Other output is printed when `echo`, else kept for the
        error. DeviceError if the script fails."""
        script = Path(script)
        if not script.is_file():
            raise FileNotFoundError(f"no script {script}")
        out = sys.stdout if echo else io.StringIO()
        collector = Collector(collect, out=out, status=io.StringIO())
        try:
            with self.device.session():
                command = self.device.script_command(script, Path(mount) if mount else None, args)
                # The unix port prints a traceback on stderr: keep it with the rest.
                status = stream_command(command, collector, timeout, merge_stderr=True)
        finally:
            collector.close()
        if status != 0:
            text = out.getvalue() if isinstance(out, io.StringIO) else ""
            raise DeviceError(f"{script} failed on {self.name}", text)
        return collector.records

    def push_dataset(self, src: Path | str, **options: Any) -> PushResult:
        """Check, convert and copy a dataset (push.push_dataset: dtype, dest, force, teacher,
        label_column, shape, layout, header, save)."""
        return push_dataset(self.device, src, **options)

    def push_model(self, src: Path | str, **options: Any) -> PushResult:
        """Export (when needed) and copy a model (push.push_model: dest, graph, input_shape,
        layout, fold_bn)."""
        return push_model(self.device, src, **options)

    def pull_model(self, path: str, out: Path | str, *, layout: str = "device") -> Path:
        """Copy an .mtm from the board to `out` (.mtm, .npz, or .pt: a PyTorch state dict)."""
        return pull_model(self.device, path, out, layout=layout)


@contextmanager
def board(
    name: str = "qemu-m4f",
    *,
    device: str | None = None,
    flash: Path | str | None = None,
    flash_size: int | None = None,
    heap: int | None = None,
) -> Iterator[Board]:
    """An open board: `device` a serial port (mpremote's names: auto, a0, u0, c0, a path),
    else the board `name` ("qemu-m4f", "qemu-rv32": booted here with its flash image, and
    stopped on exit; "unix": the host process)."""
    port = resolve_device(device, board_given=True) if device is not None else None
    with open_device(port, name, flash=flash, heap=heap, flash_size=flash_size) as dev:
        yield Board(dev)


def export_model(model: Any, out: Path | str, **options: Any) -> Any:
    """Write `model` as an .mtm at `out`: a torch.nn.Module (export.export_torch: input_shape,
    fold_bn) or a model file (push.prepare_model: .mtm, .npz, .pt with graph). Its ModelSpec."""
    if isinstance(model, (str, Path)):
        from .push import prepare_model

        return prepare_model(model, out, **options)
    from .export import export_torch

    return export_torch(model, out, **options)


def plot_results(directory: Path | str, out_dir: Path | str | None = None) -> list[Path]:
    """PNG plots (loss, accuracy, time per step) of a run collected in `directory`."""
    from . import plot

    return plot.plot_results(directory, out_dir)

