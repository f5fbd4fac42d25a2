"""The `mcutrain` command end to end, as a user runs it."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import mcutrain
from conftest import ROOT, host_env, is_running
from mcutrain.emulator import run_mpremote


def mcutrain_cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "mcutrain", *args],
        capture_output=True, text=True, timeout=timeout, env=env or host_env(), cwd=ROOT,
    )  # fmt: skip


def qemu_pids_using(flash: Path) -> list[int]:
    """QEMU processes whose command line names `flash` (unique per test)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and b"qemu-system" in args[0] and any(str(flash).encode() in a for a in args):
            pids.append(int(cmdline.parent.name))
    return pids


def test_version_flag_prints_package_version():
    done = mcutrain_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"mcutrain {mcutrain.__version__}"


def test_run_prints_script_output_on_each_board(board_name, tmp_path):
    flash = ["--flash", str(tmp_path / "flash.img")] if board_name != "unix" else []
    done = mcutrain_cli("run", "examples/hello.py", "--board", board_name, *flash)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mcutrain 0.1.0 on ")


def test_run_exits_nonzero_and_shows_traceback_when_script_raises(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("print('partial')\nraise ValueError('bad input')\n")
    done = mcutrain_cli("run", str(script), "--board", "unix")
    assert done.returncode == 1
    assert "partial" in done.stdout
    assert "ValueError: bad input" in done.stdout + done.stderr


def test_emulate_without_firmware_says_how_to_build_it(tmp_path):
    env = host_env() | {"MCUTRAIN_FIRMWARE_DIR": str(tmp_path)}
    done = mcutrain_cli("emulate", "--board", "qemu-rv32", env=env)
    assert done.returncode == 1
    assert "make firmware-qemu-rv32" in done.stderr


def test_emulate_serves_mpremote_until_ctrl_c_then_stops_qemu(emulated_board, tmp_path):
    flash = tmp_path / "flash.img"
    cli = subprocess.Popen(
        [sys.executable, "-m", "mcutrain", "emulate", "--board", emulated_board,
         "--flash", str(flash)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=host_env(), cwd=ROOT,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()

    def read_stdout() -> None:
        assert cli.stdout is not None
        for line in cli.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read_stdout, daemon=True).start()
    qemu: list[int] = []
    try:
        device = None
        while device is None:
            line = lines.get(timeout=30)
            assert line is not None, f"mcutrain emulate exited early: {cli.stderr.read()}"
            m = re.match(r"\s*mpremote connect (/dev/pts/\d+) run examples/hello.py$", line)
            device = m and m.group(1)
        qemu = qemu_pids_using(flash)
        assert len(qemu) == 1

        assert run_mpremote(device, "exec", "print(6 * 7)", timeout=30) == "42\n"

        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=20)
        assert cli.returncode == 0, err
        assert not is_running(qemu[0])
    finally:
        # Clean up whatever a failure left behind: our CLI and the QEMU it started.
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        for pid in qemu:
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)
