"""Power-loss test of mt.save on the emulated boards: kill QEMU at random moments while the board
saves models over one path, reboot on the same flash image and require that the path holds the
old or the new model (byte for byte one of them, and mt.load reads it) and that no *.tmp file
is left.

    python tests/fuzz/power_loss.py --kills 20 --targets qemu-m4f --seed 1

Prints a table and writes build/fuzz/power_loss.json (rows as tests/fuzz/summary.py reads them;
`violations` counts kills after which the file was neither model or a temporary remained).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "host"))

from mcutrain.emulator import Emulator, mpremote_command  # noqa: E402
from mcutrain.errors import DeviceError  # noqa: E402

# Two models (about 40 KB of weights each, so a save spans many flash blocks) and the CRC of
# each one's file as mt.save writes it.
PREPARE = """
import binascii, mcutrain as mt
def model(seed):
    mt.seed(seed)
    return mt.Sequential(mt.Linear(100, 96), mt.ReLU(), mt.Linear(96, 8))
def crc(path):
    c = 0
    with open(path, 'rb') as f:
        while True:
            b = f.read(1024)
            if not b:
                return c
            c = binascii.crc32(b, c)
for name, seed in (('a', 1), ('b', 2)):
    mt.save(model(seed), name + '.mtm', input_shape=(100,))
    print(name, crc(name + '.mtm'))
mt.save(model(1), 'm.mtm', input_shape=(100,))
"""

# Saves the two models over m.mtm in turn until the power goes.
SAVE_LOOP = """
import mcutrain as mt
a, b = mt.load('a.mtm'), mt.load('b.mtm')
i = 0
while True:
    print('S%d' % i)
    mt.save(b if i % 2 == 0 else a, 'm.mtm', input_shape=(100,))
    print('D%d' % i)
    i += 1
"""

CHECK = """
import os, binascii, mcutrain as mt
def crc(path):
    c = 0
    with open(path, 'rb') as f:
        while True:
            b = f.read(1024)
            if not b:
                return c
            c = binascii.crc32(b, c)
def walk(path):
    out = []
    for e in os.ilistdir(path):
        full = path + '/' + e[0]
        out += walk(full) if e[1] == 0x4000 else [full]
    return out
print('tmp', [p for p in walk('/flash') if p.endswith('.tmp')])
print('crc', crc('m.mtm'))
mt.load('m.mtm')
print('loads')
"""


def _row(target: str) -> dict[str, object]:
    return {"fuzzer": "power_loss", "target": target, "runs": 0, "crashes": 0, "hangs": 0,
            "sanitizer_reports": 0, "python_exceptions": 0, "violations": 0,
            "notes": []}  # fmt: skip


def run_board(board: str, kills: int, rng: random.Random, workdir: Path) -> dict[str, object]:
    row = _row(board)
    notes: list[str] = []
    mid_save = 0
    flash = workdir / f"{board}-flash.img"
    emu = Emulator(board, flash=flash, heap=1024 * 1024)
    try:
        emu.start()
        crcs = {}
        for line in emu.exec(PREPARE, timeout=120).splitlines():
            name, value = line.split()
            crcs[name] = int(value)
        loop = workdir / "save_loop.py"
        loop.write_text(SAVE_LOOP)
        for k in range(kills):
            proc = subprocess.Popen(mpremote_command(emu.device, "run", str(loop)),
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    stdin=subprocess.DEVNULL, text=True)  # fmt: skip
            # Loading the two models takes a moment; then each save takes a fraction of a
            # second: a random moment in [0.8, 3] s lands inside a save nearly every time.
            time.sleep(rng.uniform(0.8, 3.0))
            pid = emu.pid
            if pid is not None:
                os.kill(pid, signal.SIGKILL)  # the power goes
            try:
                out, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            marks = [w for w in out.split() if w[:1] in "SD" and w[1:].isdigit()]
            if marks and marks[-1].startswith("S"):
                mid_save += 1
            emu.stop()
            row["runs"] = int(row["runs"]) + 1  # type: ignore[call-overload]
            try:
                emu.start()  # boot on the same image: _boot.py mounts and clears temporaries
                result = emu.exec(CHECK, timeout=60).split("\n")
            except DeviceError as e:
                row["python_exceptions"] = int(row["python_exceptions"]) + 1  # type: ignore
                notes.append(f"kill {k}: check failed: {str(e)[-200:]}")
                continue
            except Exception as e:
                row["crashes"] = int(row["crashes"]) + 1  # type: ignore[call-overload]
                notes.append(f"kill {k}: no reboot: {str(e)[-200:]}")
                continue
            tmp = next((r for r in result if r.startswith("tmp ")), "tmp ?")
            got = next((r for r in result if r.startswith("crc ")), "crc -1")
            crc = int(got.split()[1])
            if tmp != "tmp []" or crc not in (crcs["a"], crcs["b"]) or "loads" not in result:
                row["violations"] = int(row["violations"]) + 1  # type: ignore[call-overload]
                notes.append(f"kill {k}: {tmp}, crc {crc} is not a ({crcs['a']}) or "
                             f"b ({crcs['b']})")  # fmt: skip
    finally:
        emu.close()
    row["notes"] = "; ".join([f"{mid_save} of {row['runs']} kills inside a save"] + notes)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--targets", default="qemu-m4f",
                    help="comma-separated emulated boards (unix-san has no power to cut: skipped)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz" / "power_loss.json")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mcutrain-power-loss-") as d:
        for board in args.targets.split(","):
            if board.startswith("qemu-"):
                rows.append(run_board(board, args.kills, rng, Path(d)))
    print(f"{'fuzzer':10} {'target':10} {'runs':>5} {'crashes':>7} {'violations':>10}  notes")
    for r in rows:
        print(f"{r['fuzzer']:10} {r['target']:10} {r['runs']:5} {r['crashes']:7} "
              f"{r['violations']:10}  {str(r['notes'])[:300]}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    bad = sum(int(r["crashes"]) + int(r["violations"]) + int(r["python_exceptions"])  # type: ignore
              for r in rows)  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
