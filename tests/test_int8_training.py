"""int8 training keeps going through the corners that used to stop it: a tracked error range
far below a new step's errors ("a quantization scale is out of range", at lr 0.01), and a
loss gradient smaller than the smallest int8 step ("the gradient is not finite", at lr
0.002 in the fourth epoch)."""

from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT
from mcutrain.digits import write_digits

SCRIPT = ROOT / "examples" / "train_digits.py"


@pytest.mark.parametrize("lr, epochs", [(0.01, 1), (0.002, 4)])
def test_int8_cnn_trains_through_range_corners_on_unix(target_pool, tmp_path, lr, epochs):
    unix = target_pool.get("unix")
    write_digits(tmp_path)
    source = SCRIPT.read_text()
    for key, value in {"MODEL": '"cnn"', "DTYPE": '"int8"', "MOMENTUM": "0.0", "LR": str(lr), "EPOCHS": str(epochs),
                       "DATA": repr(str(tmp_path))}.items():
        source = re.sub(rf"^{key} = .*$", f"{key} = {value}", source, count=1, flags=re.M)
    script = tmp_path / "int8.py"
    script.write_text(source)
    result = json.loads(unix.run_file(script, timeout=300).strip().splitlines()[-1])
    assert result["dtype"] == "int8" and result["epochs"] == epochs
