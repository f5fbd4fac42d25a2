"""mpremote, the tool users drive the boards with, works against the emulated boards."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

PACKAGE_JSON = ROOT / "micropython_lib" / "mcutrain" / "package.json"


def test_mpremote_mount_imports_module_from_host_directory(emulated, tmp_path):
    (tmp_path / "host_helper.py").write_text("def answer():\n    return 6 * 7\n")
    out = emulated.mpremote(
        "mount", str(tmp_path),
        "exec", "import os, host_helper; print(os.getcwd(), host_helper.answer())",
    )  # fmt: skip
    assert out.splitlines()[-1] == "/remote 42"


def test_mpremote_fs_cp_round_trips_binary_file(emulated, tmp_path):
    data = bytes(range(256)) * 12 + b"\r\n\x00\x03\x04 end"  # control bytes the REPL must not eat
    (tmp_path / "blob.bin").write_bytes(data)
    emulated.mpremote("fs", "cp", str(tmp_path / "blob.bin"), ":blob.bin")
    size = emulated.exec("import os; print(os.stat('/flash/blob.bin')[6])")
    emulated.mpremote("fs", "cp", ":blob.bin", str(tmp_path / "back.bin"))
    emulated.exec("import os; os.remove('/flash/blob.bin')")
    assert int(size) == len(data)
    assert (tmp_path / "back.bin").read_bytes() == data


def test_mip_installs_device_package_from_local_package_json(emulated):
    if not PACKAGE_JSON.is_file():
        pytest.skip(f"{PACKAGE_JSON.relative_to(ROOT)} not written yet")
    package = json.loads(PACKAGE_JSON.read_text())
    # mip reads a local package.json's urls relative to the directory it is in.
    emulated.mpremote("mip", "install", str(PACKAGE_JSON.relative_to(ROOT)), cwd=ROOT)
    try:
        out = emulated.exec(
            "import sys\n"
            "sys.path.remove('.frozen')  # the firmware freezes the same package\n"
            "import mcutrain\n"
            "print(mcutrain.__file__)\n"
            "print(mcutrain.version())"
        )
        assert out.splitlines() == [
            "/flash/lib/" + package["urls"][0][0],
            package["version"],
        ]
    finally:
        emulated.exec(_REMOVE_TREE.format(path="/flash/lib"))


_REMOVE_TREE = """
import os
def rm(path):
    if os.stat(path)[0] & 0x4000:
        for name in os.listdir(path):
            rm(path + '/' + name)
        os.rmdir(path)
    else:
        os.remove(path)
rm({path!r})
"""
