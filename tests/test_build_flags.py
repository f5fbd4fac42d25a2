"""The kernels are compiled -O2 in every port while the rest of the firmware stays -Os.

usermod/mcutrain/micropython.mk and micropython.cmake each carry a rule for it; a rule that
names the wrong objects fails silently (the kernels then build -Os and run 1.03-2.1x slower),
so these tests ask the build systems which flags a kernel and a binding object really get.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
USERMOD = ROOT / "usermod"
KERNEL = USERMOD / "mcutrain" / "kernels" / "quant.c"
BINDING = USERMOD / "mcutrain" / "tensor.c"


def micropython_dir() -> Path:
    found = sorted((ROOT / ".cache").glob("micropython-*/py/mkrules.mk"))
    if not found:
        pytest.skip("MicroPython source not fetched; run `make fetch`")
    return found[-1].parents[1]


def last_optimization_flag(command: str) -> str:
    flags = re.findall(r"(?<!\S)-O[0-3sgz]?(?!\S)", command)
    assert flags, f"no -O flag in: {command[:300]}"
    return flags[-1]


def make_compile_command(port_args: list[str], build: Path, source: Path) -> str:
    """The compiler command make would run for `source` (dry run; nothing is built)."""
    obj = build / source.relative_to(USERMOD).with_suffix(".o")
    out = subprocess.run(
        ["make", "-n", *port_args, f"BUILD={build}", f"USER_C_MODULES={USERMOD}",
         f"MPY_LIB_DIR={ROOT / 'micropython_lib'}", "V=1", "-W", str(source), str(obj)],
        capture_output=True, text=True, timeout=120, check=True).stdout
    lines = [line for line in out.splitlines() if str(source) in line and " -c " in line]
    assert lines, f"make would not compile {source.name}:\n{out[-2000:]}"
    return lines[-1]


@pytest.mark.parametrize("port", ["unix", "qemu-m4f", "qemu-rv32", "qemu-rv32f"])
def test_make_ports_build_kernels_o2_and_bindings_os(port, tmp_path):
    mp = micropython_dir()
    if port == "unix":
        args = ["-C", str(mp / "ports" / "unix"), f"VARIANT_DIR={ROOT / 'boards' / 'unix'}"]
    else:
        args = ["-C", str(ROOT / "boards" / "qemu"), f"BOARD={port.split('-')[1]}", f"MICROPY_DIR={mp}"]
    build = ROOT / "build" / port  # the real build dir: qstr headers there make the dry run cheap
    if not build.is_dir():
        build = tmp_path / port
    assert last_optimization_flag(make_compile_command(args, build, KERNEL)) == "-O2"
    assert last_optimization_flag(make_compile_command(args, build, BINDING)) == "-Os"


CMAKE_PORT = """\
cmake_minimum_required(VERSION 3.13)
project(port C)
set(CMAKE_C_FLAGS "-Os")
add_library(usermod INTERFACE)
include({usermod}/micropython.cmake)
add_library(firmware STATIC main.c)
target_link_libraries(firmware usermod)
target_include_directories(firmware PRIVATE {micropython})
"""


def test_cmake_ports_build_kernels_o2_and_bindings_os(tmp_path):
    """A port like rp2 or esp32: includes micropython.cmake and links the usermod target."""
    if shutil.which("cmake") is None:
        pytest.fail("cmake is missing: `make setup` installs it")
    mp = micropython_dir()
    (tmp_path / "main.c").write_text("int main(void) { return 0; }\n")
    (tmp_path / "CMakeLists.txt").write_text(CMAKE_PORT.format(usermod=USERMOD, micropython=mp))
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(tmp_path), "-B", str(build), "-G", "Unix Makefiles",
                    "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"], capture_output=True, check=True, timeout=120)
    commands = {Path(c["file"]).name: c["command"]
                for c in json.loads((build / "compile_commands.json").read_text())}
    assert last_optimization_flag(commands[KERNEL.name]) == "-O2"
    assert last_optimization_flag(commands[BINDING.name]) == "-Os"
