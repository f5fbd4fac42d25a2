"""Every target runs our firmware: the right MicroPython, our module, the board it claims."""

from __future__ import annotations

import mcutrain
import pytest
from mcutrain.errors import DeviceError
from mcutrain.runner import run_on

PROBE = """
import sys, _mcutrain, mcutrain
print(sys.implementation.version[:3])
print(_mcutrain.version())
print(mcutrain.__version__)
print(sys.platform)
print(sys.implementation._machine)
"""


def test_firmware_is_micropython_1_25_0_with_mcutrain_module(target):
    version, c_module, package, platform, machine = run_on(target, PROBE).splitlines()
    assert version == "(1, 25, 0)"
    # Host and device packages are released together, so their versions agree.
    assert c_module == package == mcutrain.__version__
    if target.board.emulated:
        assert platform == "qemu"
        assert machine.startswith(target.name + " ("), machine
    else:
        assert platform == "linux"


def test_uncaught_device_exception_raises_device_error_naming_it(target):
    with pytest.raises(DeviceError) as raised:
        run_on(target, "print('before')\nraise OSError(5, 'on purpose')")
    assert raised.value.exc_type == "OSError"
    assert "before" in raised.value.output
    assert "on purpose" in raised.value.output
