"""int8 training keeps going when its tracked error range falls far below a new step's
errors (it used to stop with "a quantization scale is out of range")."""

from __future__ import annotations

import json
import re

from conftest import ROOT
from mcutrain.digits import write_digits

SCRIPT = ROOT / "examples" / "train_digits.py"


def test_int8_cnn_trains_through_error_range_jumps_on_unix(target_pool, tmp_path):
    unix = target_pool.get("unix")
    write_digits(tmp_path)
    source = SCRIPT.read_text()
    for key, value in {"MODEL": '"cnn"', "DTYPE": '"int8"', "MOMENTUM": "0.0", "LR": "0.01", "EPOCHS": "1",
                       "DATA": repr(str(tmp_path))}.items():
        source = re.sub(rf"^{key} = .*$", f"{key} = {value}", source, count=1, flags=re.M)
    script = tmp_path / "int8.py"
    script.write_text(source)
    result = json.loads(unix.run_file(script, timeout=300).strip().splitlines()[-1])
    assert result["dtype"] == "int8" and result["epochs"] == 1
