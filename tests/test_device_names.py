"""--device takes mpremote's names (auto, a0/u0/c0, id:SERIAL, port:PATH) and
$MCUTRAIN_DEVICE gives the default; a port that cannot work is one line of error, no
traceback. Host only: the serial ports are faked."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import ROOT, host_env, require_firmware
from mcutrain import ports
from mcutrain.ports import DEVICE_ENV, PortError, check_port, expand_device, resolve_device


@pytest.fixture
def fake_ports(monkeypatch, tmp_path):
    """Two USB boards (FIFOs stand in for their device nodes) and a built-in UART."""
    acm, usb = tmp_path / "ttyACM1", tmp_path / "ttyUSB0"
    for p in (acm, usb):
        os.mkfifo(p)
    found = [
        SimpleNamespace(device="/dev/ttyS0", vid=None, pid=None, serial_number=None),
        SimpleNamespace(device=str(usb), vid=0x1A86, pid=0x7523, serial_number="CH340-9"),
        SimpleNamespace(device=str(acm), vid=0x2E8A, pid=0x0005, serial_number="E66138"),
    ]
    monkeypatch.setattr(ports, "_ports", lambda: sorted(found, key=lambda p: p.device))
    return SimpleNamespace(acm=str(acm), usb=str(usb))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcutrain", *args], capture_output=True,
                          text=True, timeout=60, env={**host_env(), **(env or {})}, cwd=ROOT)  # fmt: skip


@pytest.mark.parametrize("name, port", [
    ("a0", "/dev/ttyACM0"), ("a12", "/dev/ttyACM12"), ("u1", "/dev/ttyUSB1"), ("c3", "COM3"),
    ("port:a0", "a0"), ("/dev/pts/4", "/dev/pts/4"), ("socket://localhost:2217", "socket://localhost:2217"),
])  # fmt: skip
def test_mpremote_shortcuts_expand_to_ports(name, port):
    assert expand_device(name) == port


def test_auto_is_the_first_usb_serial_port_as_in_mpremote(fake_ports):
    assert expand_device("auto") == fake_ports.acm  # sorted by device; ttyS0 has no USB ids
    assert expand_device("id:CH340-9") == fake_ports.usb
    with pytest.raises(PortError, match=r"no USB device with serial number 'X' \(ports found: "):
        expand_device("id:X")


def test_auto_without_usb_ports_says_what_it_found(monkeypatch):
    monkeypatch.setattr(ports, "_ports", lambda: [SimpleNamespace(device="/dev/ttyS0", vid=None,
                                                                  pid=None)])  # fmt: skip
    with pytest.raises(PortError) as e:
        expand_device("auto")
    assert str(e.value) == ("--device auto: no USB serial port found (is the board plugged in? "
                            "ports found: /dev/ttyS0)")  # fmt: skip


def test_env_var_is_the_default_device_unless_a_device_or_board_is_given(fake_ports):
    env = {DEVICE_ENV: "auto"}
    assert resolve_device(None, env=env) == fake_ports.acm
    assert resolve_device(fake_ports.usb, env=env) == fake_ports.usb
    assert resolve_device(None, board_given=True, env=env) is None  # --board boots the emulator
    assert resolve_device(None, env={DEVICE_ENV: ""}) is None
    assert resolve_device(None, env={}) is None


def test_bad_env_var_names_the_variable(fake_ports):
    with pytest.raises(PortError, match=rf"^{DEVICE_ENV}=u7: no serial port /dev/ttyUSB7 "):
        resolve_device(None, env={DEVICE_ENV: "u7"})


def test_check_port_refuses_missing_files_and_folders(tmp_path, fake_ports):
    with pytest.raises(PortError, match=rf"^no serial port {tmp_path}/nope \(ports found: /dev/ttyS0, "):
        check_port(str(tmp_path / "nope"))
    with pytest.raises(PortError, match="is not a serial port \\(it is a folder\\)"):
        check_port(str(tmp_path))
    with pytest.raises(PortError, match="^ttyACM0 is not a serial port here"):
        check_port("ttyACM0")
    with pytest.raises(PortError, match="^a9: no serial port /dev/ttyACM9 "):
        resolve_device("a9")


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens any file")
def test_check_port_names_missing_permission(tmp_path):
    (tmp_path / "tty").touch(mode=0o000)
    with pytest.raises(PortError, match="no permission to open"):
        check_port(str(tmp_path / "tty"))


@pytest.mark.parametrize("args, env, message", [
    (("info", "--device", "/dev/ttyNOPE"), {}, "mcutrain: error: no serial port /dev/ttyNOPE ("),
    (("info", "--device", "u9"), {}, "mcutrain: error: u9: no serial port /dev/ttyUSB9 ("),
    (("info",), {DEVICE_ENV: "/dev/ttyNOPE"}, f"mcutrain: error: {DEVICE_ENV}=/dev/ttyNOPE: no serial"),
    (("run", "examples/hello.py", "--device", "c0"), {}, "mcutrain: error: c0: COM0 is not a serial port here"),
])  # fmt: skip
def test_bad_port_is_one_line_and_a_nonzero_exit(args, env, message):
    done = cli(*args, env=env)
    assert done.returncode == 1
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_explicit_board_wins_over_the_env_var():
    require_firmware("unix")
    done = cli("info", "--board", "unix", env={DEVICE_ENV: "/dev/ttyNOPE"})
    assert done.returncode == 0, done.stderr
    assert "unix" in done.stdout
