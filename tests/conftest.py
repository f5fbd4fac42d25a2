"""Device targets for the tests: unix as a process, each emulated board booted once a session."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Test this checkout's host package, whether or not (and wherever) it is installed.
sys.path.insert(0, str(ROOT / "host"))

from mcutrain.boards import BOARDS, EMULATED_BOARDS, get_board  # noqa: E402
from mcutrain.emulator import Emulator  # noqa: E402
from mcutrain.runner import EmulatedTarget, UnixTarget  # noqa: E402

# Every device test runs on these. qemu-rv32f (rv32 with an FPU and Zfh) runs the board tests
# (the `emulated` fixtures) and the modules marked `fpu_kernels` (the float kernels' numerics):
# the rest of its code is qemu-rv32's, and the suite's time stays in CI's budget.
FPU_BOARD = "qemu-rv32f"
TARGETS = tuple(b for b in BOARDS if b != FPU_BOARD)  # ("unix", "qemu-m4f", "qemu-rv32")


def require_firmware(board: str) -> Path:
    """The board's firmware, or skip the test saying how to build it."""
    path = get_board(board).firmware_path()
    if not path.is_file():
        pytest.skip(f"{board} firmware not built ({path}); run `make firmware-{board}`")
    return path


def host_env() -> dict[str, str]:
    """Environment for host subprocesses (`python -m mcutrain`) that import this checkout."""
    env = dict(os.environ)
    env.pop("MCUTRAIN_DEVICE", None)  # a developer's default board must not steer the tests
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "host"), env.get("PYTHONPATH")]))
    return env


def is_running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class TargetPool:
    """One target per board for the whole session: booting QEMU once keeps the suite fast.

    Each script still starts from a soft reset, so tests do not see each other's state; the
    session emulators' flash images are temporary.
    """

    def __init__(self) -> None:
        self._targets: dict[str, UnixTarget | EmulatedTarget] = {}
        self._failures: dict[str, Exception] = {}

    def get(self, board: str) -> UnixTarget | EmulatedTarget:
        require_firmware(board)
        if board in self._failures:
            # Do not spend another boot timeout on every test of a board that never came up.
            raise self._failures[board]
        if board not in self._targets:
            try:
                if get_board(board).emulated:
                    self._targets[board] = EmulatedTarget(Emulator(board).__enter__())
                else:
                    self._targets[board] = UnixTarget()
            except Exception as e:
                self._failures[board] = e
                raise
        return self._targets[board]

    def close(self) -> None:
        for target in self._targets.values():
            target.close()
        self._targets.clear()


@pytest.fixture(scope="session")
def target_pool() -> Iterator[TargetPool]:
    pool = TargetPool()
    try:
        yield pool
    finally:
        pool.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`target` and `board_name` take TARGETS, and qemu-rv32f too in `fpu_kernels` modules."""
    own = {m.args[0] for m in metafunc.definition.iter_markers("parametrize")}
    for name in ("target", "board_name"):
        if name in metafunc.fixturenames and name not in own:
            fpu = metafunc.definition.get_closest_marker("fpu_kernels") is not None
            metafunc.parametrize(name, TARGETS + ((FPU_BOARD,) if fpu else ()), indirect=True)


@pytest.fixture
def target(request: pytest.FixtureRequest, target_pool: TargetPool) -> UnixTarget | EmulatedTarget:
    """Every target: the unix port and each emulated board."""
    return target_pool.get(request.param)


@pytest.fixture(params=EMULATED_BOARDS)
def emulated(request: pytest.FixtureRequest, target_pool: TargetPool) -> EmulatedTarget:
    """Each emulated board (the session's emulator), for what only a board over a UART has."""
    t = target_pool.get(request.param)
    assert isinstance(t, EmulatedTarget)
    return t


@pytest.fixture
def board_name(request: pytest.FixtureRequest) -> str:
    """The name of each target whose firmware is built, for tests that start their own."""
    require_firmware(request.param)
    return str(request.param)


@pytest.fixture(params=EMULATED_BOARDS)
def emulated_board(request: pytest.FixtureRequest) -> str:
    """The name of each emulated board whose firmware is built, for tests that boot their own."""
    require_firmware(request.param)
    return str(request.param)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--all-basics",
        action="store_true",
        help="run all of MicroPython's tests/basics on the emulated boards, not the subset",
    )


@pytest.fixture(scope="session")
def kernels(tmp_path_factory: pytest.TempPathFactory):
    """The C kernels as a host shared library (see kernel_lib.py)."""
    from kernel_lib import build_kernels

    return build_kernels(tmp_path_factory.mktemp("kernels"))
