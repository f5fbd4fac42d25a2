"""The boards mcutrain knows: where their firmware lives and how QEMU runs them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FIRMWARE_DIR_ENV = "MCUTRAIN_FIRMWARE_DIR"


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    # Relative to the firmware directory (default <repo>/build, see firmware_dir()).
    firmware: str
    # None for the unix port, which runs as a plain host process.
    qemu: str | None = None
    machine_args: tuple[str, ...] = ()
    # Bytes of MicroPython heap; models the RAM of the real MCU the board stands in for.
    default_heap: int | None = None

    @property
    def emulated(self) -> bool:
        return self.qemu is not None

    def firmware_path(self, directory: Path | None = None) -> Path:
        return (directory or firmware_dir()) / self.firmware


BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        Board(
            name="unix",
            description="MicroPython unix port with _mcutrain, run as a host process",
            firmware="unix/micropython",
        ),
        Board(
            name="qemu-m4f",
            description="Cortex-M4F on QEMU mps2-an386",
            firmware="qemu-m4f/firmware.elf",
            qemu="qemu-system-arm",
            machine_args=("-machine", "mps2-an386"),
            default_heap=256 * 1024,
        ),
        Board(
            name="qemu-rv32",
            description="RISC-V rv32 on QEMU virt",
            firmware="qemu-rv32/firmware.elf",
            qemu="qemu-system-riscv32",
            machine_args=("-machine", "virt", "-bios", "none"),
            default_heap=256 * 1024,
        ),
        Board(
            name="qemu-rv32f",
            description="RISC-V rv32 with FPU and half precision (Zfh) on QEMU virt",
            firmware="qemu-rv32f/firmware.elf",
            qemu="qemu-system-riscv32",
            machine_args=("-machine", "virt", "-bios", "none", "-cpu", "rv32,Zfh=true"),
            default_heap=256 * 1024,
        ),
    )
}
EMULATED_BOARDS: tuple[str, ...] = tuple(n for n, b in BOARDS.items() if b.emulated)
DEFAULT_BOARD = "qemu-m4f"


def get_board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; known: {', '.join(BOARDS)}") from None


def _is_repo_root(path: Path) -> bool:
    return (path / "host" / "pyproject.toml").is_file() and (path / "usermod").is_dir()


def repo_root() -> Path | None:
    """The mcutrain checkout: the one this package is in (editable install), else cwd's."""
    here = Path(__file__).resolve()
    cwd = Path.cwd().resolve()
    for candidate in (*here.parents, cwd, *cwd.parents):
        if _is_repo_root(candidate):
            return candidate
    return None


def firmware_dir() -> Path:
    """Where built firmware lives: $MCUTRAIN_FIRMWARE_DIR, else <repo>/build."""
    env = os.environ.get(FIRMWARE_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    root = repo_root()
    if root is None:
        raise FileNotFoundError(
            f"cannot find the mcutrain checkout (no host/pyproject.toml above {Path.cwd()}); "
            f"set {FIRMWARE_DIR_ENV} to the directory holding the built firmware"
        )
    return root / "build"


def find_firmware(board: Board, firmware: Path | str | None = None) -> Path:
    """The firmware file for `board`, or FileNotFoundError naming the make target to build it."""
    path = Path(firmware) if firmware is not None else board.firmware_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"no firmware for {board.name} at {path} (build it with `make firmware-{board.name}`)"
        )
    return path.resolve()
