"""`make learning`: the learning checks on the emulated Cortex-M4F, printed as a table.

Each check runs examples/train_digits.py (real 8x8 handwriting from scikit-learn, a fixed
stratified 20% held out) with some of its settings changed, and reads the JSON summary it
prints. Results go to results/learning.json. The tests (tests/test_learning_*.py) run the
same checks and assert the issues' requirements.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from mcutrain.digits import write_digits  # noqa: E402
from mcutrain.pretrain import pretrain  # noqa: E402
from mcutrain.runner import open_target  # noqa: E402

SCRIPT = ROOT / "examples" / "train_digits.py"
PRETRAINED_CLASSES = list(range(7))
# Fine-tuning: convolutions get the dynamic top-k update, the 10-row classifier is updated in
# full (10% of 10 rows is one row: too few to learn three new classes).
TOPK_UPDATE = "{'0': mt.TopK(0.1, 0.5), '3': mt.TopK(0.1, 0.5), '7': mt.Full()}"

CHECKS = {
    "digits_mlp_fp32": {"MODEL": '"mlp"'},
    "digits_cnn_fp32": {"MODEL": '"cnn"'},
    "finetune_full": {"MODEL": '"cnn"', "PRETRAINED": '"/remote/pretrained.mtm"', "EPOCHS": "2", "LR": "0.005",
                      "MOMENTUM": "0.0"},
    "finetune_topk10": {"MODEL": '"cnn"', "PRETRAINED": '"/remote/pretrained.mtm"', "EPOCHS": "2", "LR": "0.005",
                        "MOMENTUM": "0.0", "UPDATE": TOPK_UPDATE},
}


def script_with(settings: dict[str, str]) -> str:
    """train_digits.py with the named top-level settings replaced (values are source text)."""
    source = SCRIPT.read_text()
    for key, value in settings.items():
        source, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", source, count=1, flags=re.M)
        assert n == 1, f"train_digits.py has no setting {key}"
    return source


def prepare_data(out: Path) -> Path:
    """Digits files and the host-pretrained CNN (classes 0-6) in `out`."""
    write_digits(out)
    pretrain(out / "pretrained.mtm", PRETRAINED_CLASSES)
    return out


def run_check(target, data_dir: Path, name: str) -> dict:
    script = data_dir / f"{name}.py"
    script.write_text(script_with(CHECKS[name]))
    out = target.mpremote("mount", str(data_dir), "run", str(script), timeout=900)
    result = json.loads(out.strip().splitlines()[-1])
    result["check"] = name
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "learning.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp, open_target("qemu-m4f") as target:
        data = prepare_data(Path(tmp))
        for name in CHECKS:
            results.append(run_check(target, data, name))
            r = results[-1]
            print(f"{name:18} test {r['test_accuracy']:.4f}  train {r['train_accuracy']:.4f}  "
                  f"epochs {r['epochs']}  step {r['step_instructions']} instr  RAM {r['peak_ram_bytes']} B"
                  + (f"  backward MACs {r['backward_mac_fraction']:.3f} of full" if "backward_mac_fraction" in r else ""),
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
