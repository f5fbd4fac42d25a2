"""The `mcutrain` command. Each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from . import __version__
from .boards import BOARDS, DEFAULT_BOARD, EMULATED_BOARDS, get_board
from .emulator import Emulator, default_flash_path
from .errors import DeviceError, EmulatorError
from .runner import open_target


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _board_options(parser: argparse.ArgumentParser, boards: Sequence[str]) -> None:
    parser.add_argument(
        "--board", choices=boards, default=DEFAULT_BOARD, help=f"default: {DEFAULT_BOARD}"
    )
    parser.add_argument(
        "--flash",
        type=Path,
        help="host file backing the board's flash (default: ~/.cache/mcutrain/BOARD-flash.img)",
    )
    parser.add_argument("--heap", type=int, help="MicroPython heap in bytes (default: the board's)")


def _flash_for(args: argparse.Namespace) -> Path | None:
    if not get_board(args.board).emulated:
        return None
    return args.flash or default_flash_path(args.board)


def cmd_emulate(args: argparse.Namespace) -> int:
    emulator = Emulator(args.board, flash=_flash_for(args), heap=args.heap, hold_uart=False)
    with emulator:
        board = emulator.board
        print(f"{board.name} ({board.description}) is running.")
        print(f"  UART (serial device): {emulator.device}")
        print(f"  flash image:          {emulator.flash}")
        print("Use it with mpremote, for example:")
        print(f"  mpremote connect {emulator.device} run examples/hello.py")
        print("Press Ctrl-C to stop the emulator.", flush=True)
        try:
            status = emulator.wait()
        except KeyboardInterrupt:
            print(f"\nstopping {board.name}", flush=True)
            return 0
    print(f"mcutrain: QEMU exited by itself (status {status}):\n{emulator.output}", file=sys.stderr)
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    with open_target(args.board, flash=_flash_for(args), heap=args.heap) as target:
        try:
            target.run_file(args.script, timeout=args.timeout, capture=False)
        except DeviceError as e:
            # The device's traceback has been printed already, as it happened.
            print(f"mcutrain: {args.script} failed on {args.board}", file=sys.stderr)
            if e.exc_type is None and e.output:
                print(e.output, file=sys.stderr)
            return 1
    return 0


def cmd_boards(args: argparse.Namespace) -> int:
    for board in BOARDS.values():
        try:
            path = board.firmware_path()
            status = str(path) if path.is_file() else f"not built ({path})"
        except FileNotFoundError as e:
            status = str(e)
        print(f"{board.name:10} {board.description}\n{'':10} firmware: {status}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcutrain", description="On-device training of small neural nets on microcontrollers."
    )
    parser.add_argument("--version", action="version", version=f"mcutrain {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    emulate = commands.add_parser(
        "emulate",
        help="boot an emulated board and keep it running for mpremote",
        description="Boot an emulated board, print its serial device, and run until Ctrl-C.",
    )
    _board_options(emulate, EMULATED_BOARDS)
    emulate.set_defaults(func=cmd_emulate)

    run = commands.add_parser(
        "run",
        help="run a device script on a board and print its output",
        description="Run a MicroPython script on a board (booting the emulator if needed).",
    )
    run.add_argument("script", type=Path)
    _board_options(run, tuple(BOARDS))
    run.add_argument("--timeout", type=float, help="seconds before giving up (default: none)")
    run.set_defaults(func=cmd_run)

    boards = commands.add_parser("boards", help="list the boards and their firmware")
    boards.set_defaults(func=cmd_boards)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Ctrl-C and `kill PID` stop an emulator cleanly, even when we were started with SIGINT
    # ignored (as background jobs of a script are).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return int(args.func(args))
    except (EmulatorError, FileNotFoundError, DeviceError, ValueError) as e:
        print(f"mcutrain: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
