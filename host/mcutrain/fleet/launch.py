"""`mcutrain fleet`: a local federated run on this machine, with Flower's deployment runtime.

One SuperLink, one SuperNode per board (each with the node config naming its board, data and
flash image), and `flwr run` of the Flower App in app/ with the run config. Every process is
Flower's own, as it would be with boards on other hosts; only the addresses are loopback.
(Flower's simulation engine would run the ClientApps in Ray workers of one process tree; a
ClientApp here holds a serial link and boots an emulator, which is what SuperNodes are for.)

The SuperLink, the SuperNodes and their children are stopped when the run ends, whatever
happens. Faults (board number, round) kill that board's emulator while it trains in that
round: the demonstration (and test) that the fleet goes on without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..boards import get_board
from ..formats import write_model
from . import STRATEGIES
from .data import digits_shards
from .model import DTYPES, KINDS, initial_model
from .rounds import EVENTS, SUMMARY, read_events, read_rows

APP = Path(__file__).with_name("app")
DATA = ("digits", "kws")
FLOWER_LOG = "flower.log"


class FleetError(RuntimeError):
    """The run did not finish (Flower's log is in OUT/flower.log)."""


@dataclass
class FleetOptions:
    boards: int = 2
    rounds: int = 3
    board: str = "qemu-m4f"
    devices: Sequence[str] = ()  # serial ports: real boards instead of emulated ones
    strategy: str = "fedavg"
    dtype: str = "float32"
    update: str = "full"
    epochs: int = 1
    steps: int = 0
    batch: int = 1
    lr: float = 0.01
    lr_decay: float = 1.0  # the boards' rate shrinks by this factor each round
    momentum: float = 0.9
    server_lr: float = 0.01  # fedadam's step
    server_momentum: float = 0.9  # fedavgm's
    fraction_evaluate: float = 1.0
    data: str = "digits"  # or "kws": synthetic keyword spotting, each board its own voices
    model: str | None = None  # "mlp", "cnn", "dscnn" or a float32 .mtm (default: mlp, kws: dscnn)
    split: str = "iid"  # digits
    samples: int | None = None  # digits: training samples per board
    classes_per_board: int = 3  # digits, split="label"
    voices_per_board: int = 2  # kws
    samples_per_class: int = 40  # kws: clips per class on each board
    seed: int = 1
    faults: Sequence[tuple[int, int]] = ()  # (board number from 1, round): kill its emulator then
    board_timeout: float = 300.0
    round_timeout: float = 900.0
    heap: int | None = None

    def check(self) -> None:
        if self.data not in DATA:
            raise ValueError(f"data must be one of {', '.join(DATA)}, not {self.data!r}")
        if self.model is None:
            self.model = "dscnn" if self.data == "kws" else "mlp"
        if self.devices:
            self.boards = len(self.devices)
        if self.boards < 1 or self.rounds < 1:
            raise ValueError("a fleet run needs at least one board and one round")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if not self.devices and not get_board(self.board).emulated:
            raise ValueError(f"the fleet's boards are emulated (qemu-m4f, qemu-rv32) or given with --device, "
                             f"not {self.board!r}")  # fmt: skip
        if (self.model == "dscnn") != (self.data == "kws") and self.model in KINDS:
            raise ValueError(f"model {self.model} is not for {self.data} (digits: mlp, cnn; kws: dscnn)")
        if self.model not in KINDS and not Path(self.model).is_file():
            raise ValueError(f"model must be one of {', '.join(KINDS)} or an .mtm file, not {self.model!r}")
        for board, round_ in self.faults:
            if self.devices:
                raise ValueError("faults kill emulators: they are for emulated boards")
            if not (1 <= board <= self.boards and 1 <= round_ <= self.rounds):
                raise ValueError(f"fault {board}@{round_}: board 1..{self.boards}, round 1..{self.rounds}")


@dataclass
class FleetResult:
    out: Path
    rounds: list[dict[str, Any]]
    summary: dict[str, Any]
    events: list[dict[str, Any]]
    plots: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _environment(out: Path) -> dict[str, str]:
    env = dict(os.environ)
    host = str(Path(__file__).resolve().parents[2])  # the folder holding the mcutrain package
    env["PYTHONPATH"] = os.pathsep.join([host, *filter(None, [env.get("PYTHONPATH")])])
    # Flower's own programs (flower-superexec, flwr-serverapp, ...) beside this Python.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_HOME"] = str(out / "flower")
    env["FLWR_TELEMETRY_ENABLED"] = "0"  # no events sent anywhere
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = "0.2"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _flower(name: str) -> str:
    return str(Path(sys.executable).parent / name)


class _Processes:
    """Flower's processes for one run; each in its own session, stopped as a group."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env, start_new_session=True)  # fmt: skip
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # what is left of its group (clientapps, QEMU)
            if proc.poll() is None:
                proc.wait(timeout=5)


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # its own session: the group is its and its children's
    except (ProcessLookupError, PermissionError):
        pass


def _wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FleetError(f"{what} exited with status {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise FleetError(f"{what} did not open port {port} within {timeout} s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def _pairs(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={_toml(v)}" for k, v in values.items())


class _FaultInjector(threading.Thread):
    """Kills a board's emulator (SIGKILL, as pulling its power) once the board reports that it
    is pushing or training in the fault's round."""

    def __init__(self, out: Path, faults: Sequence[tuple[int, int]], echo: Callable[[str], None]) -> None:
        super().__init__(daemon=True)
        self.out, self.pending, self.echo = out, list(faults), echo
        self.done = threading.Event()

    def run(self) -> None:
        while self.pending and not self.done.wait(0.05):
            for board, round_ in list(self.pending):
                status = _read_status(self.out / f"board-{board}" / "status.json")
                if not status or status.get("round") != round_ or status.get("phase") not in ("push", "train"):
                    continue
                pid = status.get("pid")
                if not isinstance(pid, int):
                    continue
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.pending.remove((board, round_))
                row = {"event": "killed", "round": round_, "board": f"board-{board}", "pid": pid,
                       "phase": status["phase"], "time": time.time()}  # fmt: skip
                with open(self.out / EVENTS, "a") as f:
                    f.write(json.dumps(row) + "\n")
                self.echo(f"[fleet] round {round_}: killed board-{board}'s emulator (pid {pid}) during "
                          f"{status['phase']}")  # fmt: skip


def _read_status(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def prepare(out: Path, options: FleetOptions) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The boards' data, flash images and node configs, the initial model and the run config."""
    assert options.model is not None  # check() chose it
    if options.model in KINDS:
        model = out / "initial.mtm"
        shape, classes = ((49, 10, 1), 12) if options.data == "kws" else ((8, 8, 1), 10)
        write_model(model, initial_model(options.model, options.seed, shape, classes))
    else:
        model = Path(options.model).resolve()
    if options.data == "kws":
        from .kws_data import kws_voice_shards

        kws = kws_voice_shards(out / "data", options.boards, voices_per_board=options.voices_per_board,
                               samples_per_class=options.samples_per_class, seed=options.seed)  # fmt: skip
        shards, central = kws.shards, kws.central
    else:
        shards, central = digits_shards(out / "data", options.boards, split=options.split, samples=options.samples,
                                        classes_per_board=options.classes_per_board, seed=options.seed)  # fmt: skip
    nodes = []
    for i, shard in enumerate(shards):
        folder = out / f"board-{i + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        node: dict[str, Any] = {"name": f"board-{i + 1}", "train-data": str(shard.train.resolve()),
                                "test-data": str(shard.test.resolve()),
                                "status": str((folder / "status.json").resolve())}  # fmt: skip
        if options.devices:
            node["device"] = options.devices[i]
        else:
            node["board"] = options.board
            node["flash"] = str((folder / "flash.img").resolve())
            if options.heap:
                node["heap"] = options.heap
        nodes.append(node)
    run_config = {
        "num-server-rounds": options.rounds, "strategy": options.strategy, "model": str(model.resolve()),
        "out-dir": str(out.resolve()), "central-test": str(central.resolve()), "dtype": options.dtype,
        "update": options.update, "local-epochs": options.epochs, "local-steps": options.steps,
        "batch-size": options.batch, "lr": float(options.lr), "lr-decay": float(options.lr_decay),
        "momentum": float(options.momentum), "data": options.data,
        "server-lr": float(options.server_lr), "server-momentum": float(options.server_momentum),
        "fraction-evaluate": float(options.fraction_evaluate),
        "min-nodes": len(nodes), "seed": options.seed, "board-timeout": float(options.board_timeout),
        "round-timeout": float(options.round_timeout),
    }  # fmt: skip
    return nodes, run_config


def _say(text: str) -> None:
    print(text, flush=True)


def run_fleet(out: Path | str, options: FleetOptions | None = None,
              echo: Callable[[str], None] = _say, timeout: float | None = None) -> FleetResult:  # fmt: skip
    """Run a federated training of `options.boards` boards for `options.rounds` rounds; records,
    plots and summary in OUT (rounds.py, plot.py). FleetError if Flower's run fails."""
    options = options or FleetOptions()
    options.check()
    if importlib.util.find_spec("flwr") is None or not Path(_flower("flower-superlink")).exists():
        raise FleetError(f"Flower is not installed beside {sys.executable}: pip install -r "
                         "host/requirements-fleet.txt (make setup does)")  # fmt: skip
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in (SUMMARY, EVENTS):
        (out / stale).unlink(missing_ok=True)
    t0 = time.monotonic()
    nodes, run_config = prepare(out, options)
    env = _environment(out)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    home = Path(env["FLWR_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    link_port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "fleet"\n\n[superlink.fleet]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n')
    procs = _Processes(env, logs)
    faults = _FaultInjector(out, options.faults, echo)
    try:
        link = procs.start("superlink", [_flower("flower-superlink"), "--insecure",
                                         "--disable-runtime-dependency-installation",
                                         "--host", "127.0.0.1", "--port", str(link_port)])  # fmt: skip
        _wait_for_port(link_port, link, 60, "the SuperLink", logs / "superlink.log")
        for node in nodes:
            procs.start(f"supernode-{node['name']}", [
                _flower("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                "--port", str(free_port()), "--node-config", _pairs(node)])  # fmt: skip
        faults.start()
        command = [_flower("flwr"), "run", str(APP), "fleet", "--stream", "--run-config", _pairs(run_config)]
        _stream(command, env, out / FLOWER_LOG, echo, timeout)
    finally:
        faults.done.set()
        procs.stop()
    if not (out / SUMMARY).is_file():
        raise FleetError(f"the run did not finish; Flower's log ({out / FLOWER_LOG}) ends:\n"
                         f"{_tail(out / FLOWER_LOG)}")  # fmt: skip
    from .plot import plot_rounds

    rows = read_rows(out)
    summary = json.loads((out / SUMMARY).read_text())
    return FleetResult(out, rows, summary, read_events(out), plot_rounds(out, rows), time.monotonic() - t0)


def _stream(command: list[str], env: dict[str, str], log_path: Path, echo: Callable[[str], None],
            timeout: float | None) -> None:  # fmt: skip
    """Run `flwr run --stream`: everything to the log, the ServerApp's [fleet] lines to echo."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, text=True, start_new_session=True)  # fmt: skip
        timer = threading.Timer(timeout, lambda: _signal_group(proc, signal.SIGKILL)) if timeout else None
        if timer is not None:
            timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                at = line.find("[fleet] ")
                if at >= 0:
                    echo(line[at:].rstrip())
            proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
