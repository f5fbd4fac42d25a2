"""One board's part of a round, without Flower: boot or open the board, push the global model
(.mtm, the framed transfer), run device_round.py on the board's own dataset, pull the trained
model back. The ClientApp (client_app.py) is a thin wrapper over train_on_board() and
evaluate_on_board(), which tests also call directly.

An emulated board is booted for each round and stopped after it (its flash image keeps the
dataset between rounds, as a real board's flash would). If QEMU exits while a round runs, the
round fails with BoardLost rather than quietly booting a fresh board mid-round: the server
drops that board's update, and the next round boots it again.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..api import Board
from ..boards import get_board
from ..device import Device, open_device
from ..errors import DeviceError, EmulatorError
from ..formats import ModelSpec, model_bytes, parse_model, read_dataset
from ..push import file_on_board, send_dataset
from ..transfer import TransferError, pull_bytes, push_bytes
from .model import DTYPES, for_device, from_device

SCRIPT = Path(__file__).with_name("device_round.py")
BOARD_MODEL = "fleet_global.mtm"
BOARD_TRAIN = "fleet_train.mtd"
BOARD_TEST = "fleet_test.mtd"
CALIBRATION_SAMPLES = 256


class BoardLost(RuntimeError):
    """The board stopped answering during a round (its emulator exited, or its link failed)."""


@dataclass
class BoardConfig:
    """Which board a client drives (Flower's node config, see from_node_config)."""

    name: str
    board: str = "qemu-m4f"
    device: str | None = None  # a serial port: a real board (then `board` is not booted)
    flash: Path | None = None  # an emulated board's flash image
    heap: int | None = None
    train_data: Path | None = None  # host .mtd copied to the board when it lacks it
    test_data: Path | None = None
    calibration: Path | None = None  # int8/mixed: inputs for activation ranges (default train_data)
    status: Path | None = None  # a JSON file telling which round and phase the board is in

    @classmethod
    def from_node_config(cls, config: Mapping[str, Any], node_id: int = 0) -> BoardConfig:
        """From node config keys: name, board, device, flash, heap, train-data, test-data,
        calibration, status (paths on the client's host)."""

        def path(key: str) -> Path | None:
            value = config.get(key)
            return Path(str(value)) if value not in (None, "") else None

        device = config.get("device")
        heap = config.get("heap")
        cfg = cls(
            name=str(config.get("name") or f"node-{node_id}"),
            board=str(config.get("board") or "qemu-m4f"),
            device=str(device) if device else None,
            flash=path("flash"),
            heap=int(heap) if heap else None,
            train_data=path("train-data"),
            test_data=path("test-data"),
            calibration=path("calibration"),
            status=path("status"),
        )
        if cfg.device is None and not get_board(cfg.board).emulated:
            raise ValueError(f"{cfg.name}: the fleet drives emulated boards or serial ones "
                             f"(device=PORT), not {cfg.board!r}")  # fmt: skip
        return cfg


@dataclass
class LocalSettings:
    """How a board trains in a round (the run config, see from_run_config)."""

    dtype: str = "float32"
    epochs: int = 1
    steps: int = 0  # > 0: this many training steps instead of whole epochs
    batch: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    update: str = "full"  # "full", "topk:MIN[:MAX]", "last:K", "bias", "channels:RATIO"
    lr_decay: float = 1.0  # round r trains at lr * lr_decay ** (r - 1)
    seed: int = 1
    timeout: float = 300.0  # seconds for the device script

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> LocalSettings:
        s = cls(
            dtype=str(config.get("dtype", cls.dtype)),
            epochs=int(config.get("local-epochs", cls.epochs)),
            steps=int(config.get("local-steps", cls.steps)),
            batch=int(config.get("batch-size", cls.batch)),
            lr=float(config.get("lr", cls.lr)),
            momentum=float(config.get("momentum", cls.momentum)),
            update=str(config.get("update", cls.update)),
            lr_decay=float(config.get("lr-decay", cls.lr_decay)),
            seed=int(config.get("seed", cls.seed)),
            timeout=float(config.get("board-timeout", cls.timeout)),
        )
        if s.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {s.dtype!r}")
        return s

    def for_board(self, name: str) -> LocalSettings:
        """These settings with the run's seed made the board's own (fixed by its name, so a
        run repeats). The kws dealer writes every board's share sorted by class: with one
        shared seed every board would shuffle it alike and meet the classes in the same order
        each epoch, which the boards of a real fleet do not."""
        return replace(self, seed=self.seed + 1000 * (zlib.crc32(name.encode()) % 100_000))

    def script_args(self, mode: str, data: str, round_: int) -> list[str]:
        lr = self.lr * self.lr_decay ** max(0, round_ - 1)
        return ["--mode", mode, "--model", BOARD_MODEL, "--data", data,
                "--epochs", str(self.epochs), "--steps", str(self.steps), "--batch", str(self.batch),
                "--lr", repr(lr), "--momentum", repr(self.momentum), "--update", self.update,
                "--seed", str(self.seed + round_)]  # fmt: skip


@dataclass
class RoundOutcome:
    """What a board returns from a round: trained float32 arrays (train only) and metrics
    (numbers only, as Flower's MetricRecord takes)."""

    arrays: dict[str, np.ndarray] | None
    metrics: dict[str, float] = field(default_factory=dict)


class _Watch:
    """Notices an emulator that exited (and was booted again by a helper) during a round."""

    def __init__(self, cfg: BoardConfig, device: Device, round_: int) -> None:
        self.cfg, self.device, self.round = cfg, device, round_
        emulator = device._emulator()
        self.pid = emulator.pid if emulator is not None else None

    def phase(self, phase: str) -> None:
        self.check(phase)
        write_status(self.cfg, self.round, phase, self.pid)

    def check(self, phase: str) -> None:
        emulator = self.device._emulator()
        if emulator is not None and (not emulator.running or emulator.pid != self.pid):
            raise BoardLost(f"{self.cfg.name}: the board stopped answering during {phase} "
                            f"(its emulator exited); it is booted again next round")  # fmt: skip


def write_status(cfg: BoardConfig, round_: int, phase: str, pid: int | None) -> None:
    """Tell whoever watches the fleet (faults.py, a user) where this board is."""
    if cfg.status is None:
        return
    cfg.status.parent.mkdir(parents=True, exist_ok=True)
    tmp = cfg.status.with_suffix(".tmp")
    tmp.write_text(json.dumps({"name": cfg.name, "round": round_, "phase": phase, "pid": pid,
                               "time": time.time()}))  # fmt: skip
    os.replace(tmp, cfg.status)


@contextmanager
def open_board(cfg: BoardConfig, round_: int) -> Iterator[tuple[Device, _Watch]]:
    """The board, booted (emulated) or opened (serial), with a watch on its emulator."""
    with open_device(cfg.device, cfg.board, flash=cfg.flash, heap=cfg.heap) as device:
        watch = _Watch(cfg, device, round_)
        try:
            yield device, watch
        finally:
            write_status(cfg, round_, "idle", None)


def _lost(watch: _Watch, error: Exception) -> None:
    """Raise BoardLost for a failure of the board or its link; an exception the script raised
    on a board that still answers (exc_type set, e.g. an unsupported option) stays as it is."""
    watch.check("the round")  # a board that died says so, not the symptom
    if not (isinstance(error, DeviceError) and error.exc_type):
        raise BoardLost(f"{watch.cfg.name}: {error}") from error


def _ensure_file(device: Device, path: Path | None, dest: str) -> int:
    """Copy a host .mtd to the board unless it holds that very file (another one at `dest`
    is replaced: the host's copy is the board's data); the bytes sent."""
    if path is None:
        return 0  # a real board that holds its data already
    data = path.read_bytes()
    found = file_on_board(device, dest, data)
    if found is not None and found[1]:
        return 0
    send_dataset(device, path, dest, force=True)
    return len(data)


def _calibration(cfg: BoardConfig) -> np.ndarray:
    source = cfg.calibration or cfg.train_data
    if source is None:
        raise ValueError(f"{cfg.name}: an int8 or mixed run needs calibration samples: give the "
                         "node config calibration=FILE.mtd (or train-data)")  # fmt: skip
    arrays = read_dataset(source)
    x = np.asarray(arrays.x[:CALIBRATION_SAMPLES])
    if x.dtype == np.int8:
        x = (arrays.scale or 1.0) * (x.astype(np.float32) - (arrays.zero_point or 0))
    return np.asarray(x, np.float32)


def _push_model(device: Device, spec: ModelSpec) -> int:
    data = model_bytes(spec)
    with device.uart() as port:
        push_bytes(port, data, BOARD_MODEL)
    return len(data)


def _run(device: Device, settings: LocalSettings, mode: str, data: str, round_: int) -> dict[str, Any]:
    records = Board(device).run(SCRIPT, args=settings.script_args(mode, data, round_),
                                timeout=settings.timeout)  # fmt: skip
    found = [r for r in records if r.get("kind") == "fleet"]
    if not found:
        raise DeviceError(f"{SCRIPT.name} reported nothing", "")
    return found[-1]


def train_on_board(cfg: BoardConfig, spec: ModelSpec, settings: LocalSettings, round_: int = 1) -> RoundOutcome:
    """Train the global model `spec` (float32) on the board's own data for one round."""
    t0 = time.monotonic()
    calibration = _calibration(cfg) if settings.dtype != "float32" else None
    device_spec = for_device(spec, settings.dtype, calibration)
    with open_board(cfg, round_) as (device, watch):
        try:
            watch.phase("data")
            data_bytes = _ensure_file(device, cfg.train_data, BOARD_TRAIN)
            watch.phase("push")
            down = _push_model(device, device_spec)
            watch.phase("train")
            report = _run(device, settings, "train", BOARD_TRAIN, round_)
            watch.phase("pull")
            with device.uart() as port:
                pulled = pull_bytes(port, BOARD_MODEL)
            watch.check("pull")
        except (DeviceError, OSError, TransferError, EmulatorError) as e:
            _lost(watch, e)
            raise
    arrays = from_device(parse_model(pulled), spec.tensors)
    return RoundOutcome(arrays, {
        "num-examples": int(report["samples"]),
        "train-loss": float(report["loss"]),
        "train-accuracy": float(report["accuracy"] if report.get("accuracy") is not None else 0.0),
        "bytes-down": down, "bytes-up": len(pulled), "bytes-data": data_bytes,
        "ticks": int(report.get("ticks", 0)), "peak-ram": int(report.get("peak_ram", 0)),
        "seconds": time.monotonic() - t0,
    })  # fmt: skip


def evaluate_on_board(cfg: BoardConfig, spec: ModelSpec, settings: LocalSettings, round_: int = 1) -> RoundOutcome:
    """Loss and accuracy of the global model on the board's own test data."""
    t0 = time.monotonic()
    data_path = cfg.test_data or cfg.train_data
    board_data = BOARD_TEST if cfg.test_data is not None else BOARD_TRAIN
    calibration = _calibration(cfg) if settings.dtype != "float32" else None
    device_spec = for_device(spec, settings.dtype, calibration)
    with open_board(cfg, round_) as (device, watch):
        try:
            watch.phase("data")
            data_bytes = _ensure_file(device, data_path, board_data)
            watch.phase("push")
            down = _push_model(device, device_spec)
            watch.phase("evaluate")
            report = _run(device, settings, "evaluate", board_data, round_)
            watch.check("evaluate")
        except (DeviceError, OSError, TransferError, EmulatorError) as e:
            _lost(watch, e)
            raise
    return RoundOutcome(None, {
        "num-examples": int(report["samples"]),
        "eval-loss": float(report["loss"]),
        "eval-accuracy": float(report["accuracy"] if report.get("accuracy") is not None else 0.0),
        "bytes-down": down, "bytes-up": 0, "bytes-data": data_bytes,
        "seconds": time.monotonic() - t0,
    })  # fmt: skip
