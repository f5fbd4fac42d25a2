"""Calibrate the cost model (costs.py) on an emulated board: measure single-layer passes of
many shapes and whole-model steps, fit the per-kernel costs by least squares, write
costs_<board>.json.

    PYTHONPATH=host python -m mcutrain.design.calibrate --board qemu-m4f

Shapes: every layer of random members of the four families (arch.py, seeds other than the
check's), each measured on its own as a top-level layer: forward, backward(dy, opt) (input
and weight gradient with the fused SGD update) and, frozen, backward(dy) (input gradient
only). Whole models of the families then fit the per-step overhead (the Sequential's
dispatch, the loss) that the single-layer passes do not see. On qemu-m4f the cycle-model
plugin (host/mcutrain/cycle_model.py) runs alongside, and the same fits are made for its
estimated cycles.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..boards import get_board, repo_root
from ..cycle_model import CycleModel, plugin_path
from ..runner import open_target, run_on
from .arch import FAMILIES, Arch, random_archs
from .costs import PASSES, Fits, features, fits_path, group, overhead_features, pass_cost, step_passes
from .memory import GEMM_PACK_BOARDS, PlannedLayer, plan

CALIBRATION_SEEDS = (100, 101)  # the check (tests/test_cost_model.py) uses others
MODELS_PER_FAMILY = 12
HEAP = 1 << 20

DEVICE_PRELUDE = """
import gc
import json
import mcutrain as mt
pc = mt.perf_counter

def filled(shape, seed):
    n = 1
    for d in shape:
        n *= d
    t = mt.zeros(n)
    s = seed
    for i in range(n):
        s = (s * 1103515245 + 12345) & 0x7fffffff
        t[i] = (s >> 8) / 4194304.0 - 1.0
    return t.reshape(shape)

def layer(key, make, shape, params):
    gc.collect()
    m = make()
    x = filled(shape, 1)
    opt = mt.SGD(m, lr=0.001) if params else None
    y = m.forward(x)
    dy = filled(y.shape, 2)
    m.backward(dy, opt)
    gc.collect()
    t0 = pc(); m.forward(x); t1 = pc(); m.backward(dy, opt); t2 = pc()
    m.predict(x)
    t5 = pc(); m.predict(x); t6 = pc()
    r = [t1 - t0, t2 - t1, t6 - t5]
    if params:
        m.trainable = False
        m.forward(x); m.backward(dy)
        t3 = pc(); m.backward(dy); t4 = pc()
        r.append(t4 - t3)
    print('@layer', json.dumps([key] + r))
    m = opt = x = y = dy = None

def model(key, make, shape, classes):
    gc.collect()
    m = make()
    x = filled(shape, 3)
    labels = [(3 + 5 * i) % classes for i in range(shape[0])]
    opt = mt.SGD(m, lr=0.01)
    m.train_step(x, labels, mt.cross_entropy, opt)
    m.predict(x)
    m.train_step(x, labels, mt.cross_entropy, opt)
    gc.collect()
    t0 = pc(); m.train_step(x, labels, mt.cross_entropy, opt); t1 = pc()
    m.predict(x)
    gc.collect()
    t2 = pc(); m.predict(x); t3 = pc()
    print('@model', json.dumps([key, t1 - t0, t3 - t2, m.memory()['total']]))
    m = opt = x = None
"""


def layer_key(p: PlannedLayer) -> str:
    return f"{p.layer.source()}@{p.in_shape}"


def calibration_archs() -> list[Arch]:
    return [a for seed in CALIBRATION_SEEDS for fam in FAMILIES for a in random_archs(fam, MODELS_PER_FAMILY, seed)]


def single_layers(archs: Sequence[Arch]) -> dict[str, PlannedLayer]:
    """Every distinct (layer, input shape) of archs, Flatten aside (it does no work)."""
    out: dict[str, PlannedLayer] = {}
    for a in archs:
        for p in plan(a):
            if p.layer.kind != "Flatten":
                out.setdefault(layer_key(p), p)
    return out


def layer_script(layers: dict[str, PlannedLayer]) -> str:
    lines = [DEVICE_PRELUDE]
    for key, p in layers.items():
        lines.append("layer(%r, lambda: %s, %r, %s)" % (key, p.layer.source(), p.in_shape, p.layer.has_params))
    return "\n".join(lines) + "\n"


def model_script(archs: Sequence[Arch]) -> str:
    lines = [DEVICE_PRELUDE]
    for a in archs:
        lines.append("model(%r, lambda: %s, %r, %d)" % (a.name, a.source(), a.input_shape, a.classes))
    return "\n".join(lines) + "\n"


def run_script(board: str, script: str, cycles: bool) -> tuple[list[list[Any]], list[int] | None]:
    """The @-lines a device script printed and, with the cycle model, the cycles of every
    number they report, in order (None without)."""
    model = CycleModel(get_board(board).firmware_path()) if cycles else None
    try:
        args = model.qemu_args() if model else []
        with open_target(board, heap=HEAP, qemu_args=args) as target:
            printed = run_on(target, script, timeout=1800)
        rows = []
        for line in printed.splitlines():
            if line.startswith("@layer ") or line.startswith("@model "):
                tag, body = line.split(" ", 1)
                rows.append([tag] + json.loads(body))
        if model is None:
            return rows, None
        # the perf_counter() differences, in order: a layer row's all, a model row's first two
        counts = [v for row in rows for v in (row[2:4] if row[0] == "@model" else row[2:])]
        return rows, model.cycles_for(counts)
    finally:
        if model:
            model.close()


def fit(rows: Sequence[dict[str, float]], targets: Sequence[float]) -> dict[str, float]:
    """Least squares of targets on the features, minimizing the relative error (each row is
    divided by its target); features all-zero in the rows get no coefficient."""
    names = sorted({k for r in rows for k, v in r.items() if v})
    a = np.array([[r.get(k, 0.0) for k in names] for r in rows], dtype=float)
    y = np.array(targets, dtype=float)
    w = 1.0 / np.maximum(np.abs(y), 1.0)
    coef, *_ = np.linalg.lstsq(a * w[:, None], y * w, rcond=None)
    return {k: float(c) for k, c in zip(names, coef)}


def firmware_identity(board: str) -> dict[str, str]:
    root = repo_root() or Path.cwd()
    firmware = get_board(board).firmware_path()

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "repo_commit": git("rev-parse", "--short", "HEAD"),
        # the firmware's own sources: the last commit that changed them
        "firmware_commit": git("log", "-1", "--format=%h", "--", "usermod", "boards", "micropython_lib"),
        "firmware_sha256": hashlib.sha256(firmware.read_bytes()).hexdigest()[:16],
    }


def calibrate(board: str, cycles: bool | None = None) -> Fits:
    if cycles is None:
        cycles = board == "qemu-m4f" and plugin_path().is_file()
    units = ["instructions"] + (["cycles"] if cycles else [])
    pack = board in GEMM_PACK_BOARDS
    archs = calibration_archs()
    layers = single_layers(archs)
    rows, cyc = run_script(board, layer_script(layers), cycles)
    # per unit: key -> [forward, backward, (frozen backward)]
    measured: dict[str, dict[str, list[int]]] = {u: {} for u in units}
    it = iter(cyc or [])
    for row in rows:
        measured["instructions"][row[1]] = row[2:]
        if cycles:
            measured["cycles"][row[1]] = [next(it) for _ in row[2:]]
    by_group: dict[str, list[str]] = {}
    for key, p in layers.items():
        by_group.setdefault(group(p), []).append(key)
    fits: Fits = {"board": board, **firmware_identity(board), "units": units, "layers": {}, "overhead": {},
                  "calibration": {"layer_shapes": len(layers), "models": len(archs)}}
    for grp, keys in sorted(by_group.items()):
        fits["layers"][grp] = {}
        for pass_name in PASSES:
            if pass_name == "grad_weight" and not layers[keys[0]].layer.has_params:
                continue
            fits["layers"][grp][pass_name] = {}
            feats = [features(layers[k], pass_name, pack) for k in keys]
            for unit in units:
                m = measured[unit]
                # per layer: forward, backward, predict and, with parameters, frozen backward
                if pass_name == "forward":
                    y = [m[k][0] for k in keys]
                elif pass_name == "inference":
                    y = [m[k][2] for k in keys]
                elif pass_name == "grad_input":
                    y = [m[k][3] if len(m[k]) > 3 else m[k][1] for k in keys]
                else:
                    y = [m[k][1] - m[k][3] for k in keys]
                fits["layers"][grp][pass_name][unit] = fit(feats, y)
    # whole models: the overhead is what the summed layer passes leave out
    rows, cyc = run_script(board, model_script(archs), cycles)
    it = iter(cyc or [])
    model_meas: dict[str, dict[str, list[int]]] = {u: {} for u in units}
    for row in rows:
        model_meas["instructions"][row[1]] = row[2:4]
        if cycles:
            model_meas["cycles"][row[1]] = [next(it), next(it)]
    done = [a for a in archs if a.name in model_meas["instructions"]]
    for kind in ("train_step", "inference"):
        fits["overhead"][kind] = {}
        for unit in units:
            rest, feats_o = [], []
            for a in done:
                if kind == "train_step":
                    summed = sum(pass_cost(fits, group(p), n, features(p, n, pack), unit)
                                 for p, n in step_passes(a))
                else:
                    summed = sum(pass_cost(fits, group(p), "inference", features(p, "inference", pack), unit)
                                 for p in plan(a, inference=True))
                got = model_meas[unit][a.name][0 if kind == "train_step" else 1]
                rest.append(got - summed)
                feats_o.append(overhead_features(a))
            # fitted on the absolute rest, each row weighted by its model's whole step
            fits["overhead"][kind][unit] = _fit_overhead(feats_o, rest, [
                model_meas[unit][a.name][0 if kind == "train_step" else 1] for a in done])
    return fits


def _fit_overhead(rows: Sequence[dict[str, float]], rest: Sequence[float], whole: Sequence[float]) -> dict[str, float]:
    names = sorted({k for r in rows for k in r})
    a = np.array([[r.get(k, 0.0) for k in names] for r in rows], dtype=float)
    w = 1.0 / np.maximum(np.array(whole, dtype=float), 1.0)
    coef, *_ = np.linalg.lstsq(a * w[:, None], np.array(rest, dtype=float) * w, rcond=None)
    return {k: float(c) for k, c in zip(names, coef)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="qemu-m4f", choices=("qemu-m4f", "qemu-rv32"))
    parser.add_argument("--no-cycles", action="store_true", help="skip the cycle model (qemu-m4f)")
    parser.add_argument("--out", type=Path, help="where to write the fits (default: costs_<board>.json in the package)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    fits = calibrate(args.board, cycles=False if args.no_cycles else None)
    fits["calibration"]["seconds"] = round(time.monotonic() - start)
    out = args.out or fits_path(args.board)
    out.write_text(json.dumps(fits, indent=1) + "\n")
    print(f"wrote {out} ({fits['calibration']['layer_shapes']} layer shapes, {fits['calibration']['models']} models, "
          f"{fits['calibration']['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
