"""Mutation fuzzer of .mtm models and .mtd datasets for the host readers and the device loaders.

    python tests/fuzz/files.py --mutants 2000 --targets unix-san,qemu-m4f,qemu-rv32 --seed 1

Seed files (written here with mcutrain.formats) are mutated by bit flips, byte stores,
truncation, extension, header field stores, tensor/record data changes and structured edits of
the JSON sections (sizes, counts, dtypes, scales, nesting); most mutants get their CRCs
recomputed so they reach the checks past the CRCs. Every mutant goes through the host reader
(read_model / DatasetReader with verify) and through mt.load / mt.Dataset on each target. A
target must only raise FormatError (or OSError), never crash, hang or trip a sanitizer, and
must accept exactly the mutants the host reader accepts (docs/formats.md's shared rules).
Prints a table and writes build/fuzz/files.json (rows as tests/fuzz/summary.py reads them).
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "host"))

from mcutrain.formats import (  # noqa: E402
    DatasetReader,
    FormatError,
    ModelSpec,
    layer,
    model_bytes,
    read_model,
    residual,
    sequential,
    write_dataset,
)

SANITIZED = ROOT / "build" / "unix-san" / "micropython"
SAN_MARKERS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "UndefinedBehaviorSanitizer")
MTM_HEADER = struct.Struct("<4sHH6I")
MTD_HEADER = struct.Struct("<4sHH6I4B3Ifi6I")


def crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# seed files


def seed_files() -> dict[str, bytes]:
    """A few small but varied good files: name -> bytes."""
    rng = np.random.default_rng(5)
    f32 = np.float32
    seeds = {}

    graph = sequential(
        layer("Conv2d", in_channels=1, out_channels=4, kernel_size=3, padding=1),
        layer("BatchNorm2d", num_features=4),
        layer("ReLU"),
        layer("MaxPool2d", kernel_size=2),
        residual(sequential(layer("Conv2d", in_channels=4, out_channels=4, kernel_size=3,
                                  padding=1), layer("ReLU6"))),  # fmt: skip
        layer("Flatten"),
        layer("Linear", in_features=16, out_features=3),
        layer("Softmax"),
    )
    from mcutrain.formats import expected_tensors

    tensors = {n: rng.normal(size=s).astype(f32) for n, s in expected_tensors(graph).items()}
    tensors["1.running_var"] = np.abs(tensors["1.running_var"]) + 0.5
    seeds["cnn.mtm"] = model_bytes(ModelSpec(graph, tensors, (4, 4, 1), {"note": "seed"}))

    lin = layer("Linear", dtype="int8", in_features=8, out_features=4)
    lin["quant_range"] = (-1.5, 2.25)
    mixed = layer("Linear", dtype="mixed", in_features=4, out_features=2)
    mixed["quant_range"] = (-0.5, 0.75)
    conv = layer("Convert", dtype="int8")
    conv["quant_range"] = (0.0, 1.0)
    graph = sequential(conv, lin, layer("ReLU"), layer("Convert", dtype="float32"),
                       layer("Convert", dtype="int8"), mixed,
                       layer("Convert", dtype="float32"))  # fmt: skip
    graph["layers"][4]["quant_range"] = (0.0, 2.25)
    q = {"1.weight": rng.integers(-127, 128, (4, 8)).astype(np.int8),
         "1.bias": rng.normal(size=4).astype(f32), "1.weight_scale": np.full(4, 0.01, f32),
         "5.weight": rng.integers(-127, 128, (2, 4)).astype(np.int8),
         "5.bias": rng.normal(size=2).astype(f32), "5.weight_scale": np.full(2, 0.02, f32)}
    seeds["int8.mtm"] = model_bytes(ModelSpec(graph, q, (8,), {}, {"1.weight": (1.0, 0),
                                                                   "5.weight": (1.0, 0)}))
    graph = sequential(
        layer("Conv1d", dtype="float16", in_channels=2, out_channels=4, kernel_size=3, groups=2),
        layer("ReLU"),
        layer("GlobalAvgPool"),
        layer("Linear", in_features=4, out_features=2, bias=False),
    )
    t16 = {"0.weight": rng.normal(size=(4, 3, 1)).astype(np.float16),
           "0.bias": rng.normal(size=4).astype(np.float16),
           "3.weight": rng.normal(size=(2, 4)).astype(f32)}
    seeds["conv1d16.mtm"] = model_bytes(ModelSpec(graph, t16, (8, 2)))

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.mtd"
        x = rng.normal(size=(9, 3, 2, 1)).astype(f32)
        write_dataset(p, x, np.arange(9) % 3, class_names=["a", "b", "\u00e9"],
                      teacher_logits=rng.normal(size=(9, 3)), teacher_dtype="float16",
                      meta={"rate": 16000, "mfcc": [1, 2.5]}, chunk_records=4)  # fmt: skip
        seeds["teacher.mtd"] = p.read_bytes()
        write_dataset(p, rng.random((5, 4, 4, 1)), np.arange(5) * 50, dtype="int8",
                      num_classes=300, chunk_records=2)  # fmt: skip
        seeds["int8.mtd"] = p.read_bytes()
        write_dataset(p, rng.normal(size=(6, 5)), rng.normal(size=(6, 3)), dtype="float16")
        seeds["targets.mtd"] = p.read_bytes()
        write_dataset(p, np.zeros((0, 2, 3)), np.zeros(0, dtype=np.int64), num_classes=4)
        seeds["empty.mtd"] = p.read_bytes()
    return seeds


# ---------------------------------------------------------------------------------------------
# mutations

INTERESTING_U32 = (0, 1, 2, 3, 4, 15, 16, 31, 32, 79, 80, 81, 127, 128, 255, 256, 4095, 65535,
                   65536, 2**24, 2**31 - 1, 2**31, 2**32 - 1, 2**32 - 16)  # fmt: skip
INTERESTING_JSON = (0, 1, -1, 2, 3, 16, 127, 128, -128, -129, 255, 2**24 - 1, 2**24, 2**31,
                    2**32, 2**63, 10**40, 0.5, -0.0, 1e-45, 1e-31, 1e31, 1e39, -1e39, True,
                    False, None, "", "x", "float16", "int8", "mixed", "float32", "int16",
                    "Conv2d", "Linear", "Sequential", "Residual", "Convert", "weight", [],
                    {}, [1], [1, 2, 3], [0, 0], {"type": "ReLU"}, [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]])  # fmt: skip


def _mtm_sections(data: bytes) -> tuple[bytes, bytes] | None:
    """(graph bytes, data section) of a well-formed .mtm, else None."""
    if len(data) < 32:
        return None
    _, _, _, gsize, _, doff, dsize, _, _ = MTM_HEADER.unpack_from(data)
    if 32 + gsize > len(data) or doff > len(data):
        return None
    return data[32 : 32 + gsize], data[doff : doff + dsize]


def build_mtm(graph: bytes, payload: bytes, **fields: int) -> bytes:
    """An .mtm with correct header and graph CRCs (fields override header values)."""
    doff = (32 + len(graph) + 15) // 16 * 16
    f = {"version": 1, "header_size": 32, "graph_size": len(graph), "graph_crc": crc(graph),
         "data_offset": doff, "data_size": len(payload), "flags": 0}  # fmt: skip
    f.update(fields)
    head = MTM_HEADER.pack(b"MTM\0", f["version"], f["header_size"], f["graph_size"],
                           f["graph_crc"], f["data_offset"], f["data_size"], f["flags"], 0)[:28]
    out = bytearray(head + struct.pack("<I", crc(head)) + graph)
    out += bytes(max(0, doff - len(out)))
    return bytes(out[:doff]) + payload


def fix_mtm_crcs(data: bytes) -> bytes:
    b = bytearray(data)
    if len(b) < 32:
        return data
    gsize = struct.unpack_from("<I", b, 8)[0]
    if 32 + gsize <= len(b):
        struct.pack_into("<I", b, 12, crc(b[32 : 32 + gsize]))
    struct.pack_into("<I", b, 28, crc(b[:28]))
    return bytes(b)


def fix_mtd_crcs(data: bytes) -> bytes:
    b = bytearray(data)
    if len(b) < 80:
        return data
    h = list(MTD_HEADER.unpack_from(b))
    count, rsize, crec, doff, isize = h[3:8]
    ccount, toff = h[20], h[21]
    if 0 < crec and ccount < 100000 and toff + 4 * ccount <= len(b):
        for k in range(ccount):
            start = doff + k * crec * rsize
            stop = min(doff + min(count, (k + 1) * crec) * rsize, len(b))
            if start <= stop <= len(b):
                struct.pack_into("<I", b, toff + 4 * k, crc(b[start:stop]))
        struct.pack_into("<I", b, 72, crc(b[toff : toff + 4 * ccount]))
    if 80 + isize <= len(b):
        struct.pack_into("<I", b, 28, crc(b[80 : 80 + isize]))
    struct.pack_into("<I", b, 76, crc(b[:76]))
    return bytes(b)


def build_mtd(data: bytes, info: bytes) -> bytes:
    """data with its info section replaced (offsets moved, CRCs recomputed)."""
    h = list(MTD_HEADER.unpack_from(data))
    count, rsize, doff, ccount, toff = h[3], h[4], h[6], h[20], h[21]
    table = data[toff : toff + 4 * ccount]
    records = data[doff : doff + count * rsize]
    new_toff = (80 + len(info) + 3) // 4 * 4
    new_doff = (new_toff + len(table) + 15) // 16 * 16
    h[6], h[7], h[21] = new_doff, len(info), new_toff
    out = bytearray(MTD_HEADER.pack(*h)) + info
    out += bytes(new_toff - len(out)) + table
    out += bytes(new_doff - len(out)) + records
    return fix_mtd_crcs(bytes(out))


def _json_paths(doc, path=()):
    yield path
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _json_paths(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _json_paths(v, (*path, i))


def _mutate_json(doc, rng: random.Random):
    paths = list(_json_paths(doc))
    path = rng.choice(paths[1:] or paths)
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    if not path:
        return rng.choice(INTERESTING_JSON)
    key = path[-1]
    old = parent[key]
    op = rng.random()
    if op < 0.12:  # delete
        del parent[key]
    elif op < 0.2 and isinstance(parent, list):  # duplicate
        parent.insert(key, json.loads(json.dumps(old)))
    elif op < 0.28 and isinstance(parent, dict):  # rename a key
        parent[rng.choice(["type", "config", "dtype", "name", "x", key + "_"])] = parent.pop(key)
    elif op < 0.55 and isinstance(old, (int, float)) and not isinstance(old, bool):
        parent[key] = rng.choice([old + 1, old - 1, -old, old * 2, old * 65536, old + 2**32,
                                  float(old), old / 3, old * 1e30])  # fmt: skip
    else:
        parent[key] = json.loads(json.dumps(rng.choice(INTERESTING_JSON)))
    return doc


def _dump(doc, rng: random.Random) -> bytes:
    text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)  # Infinity/NaN on purpose too
    data = bytearray(text.encode())
    if rng.random() < 0.15 and data:  # break the JSON text itself
        for _ in range(rng.randint(1, 3)):
            k = rng.randrange(len(data))
            data[k] = rng.choice(b'[]{},:"\\ 0-eE.\xff\xc0\x80\x00tfn')
    return bytes(data)


def mutate(name: str, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """(mutant, what was done)."""
    kind = name.rsplit(".", 1)[1]
    op = rng.random()
    fix = fix_mtm_crcs if kind == "mtm" else fix_mtd_crcs
    if op < 0.35:  # structured edit of the JSON section
        if kind == "mtm":
            sections = _mtm_sections(data)
            assert sections is not None
            doc = json.loads(sections[0])
            for _ in range(rng.randint(1, 3)):
                doc = _mutate_json(doc, rng)
            return build_mtm(_dump(doc, rng), sections[1]), "json"
        isize = struct.unpack_from("<I", data, 24)[0]
        doc = json.loads(data[80 : 80 + isize] or b"{}")
        for _ in range(rng.randint(1, 2)):
            doc = _mutate_json({"info": doc}, rng).get("info", {})
        return build_mtd(data, _dump(doc, rng)), "json"
    b = bytearray(data)
    if op < 0.6:  # header fields
        fields = ([(4, "H"), (6, "H")] + [(o, "I") for o in range(8, 28, 4)] if kind == "mtm"
                  else [(4, "H"), (6, "H")] + [(o, "I") for o in range(8, 32, 4)]
                  + [(o, "B") for o in range(32, 36)] + [(o, "I") for o in range(36, 48, 4)]
                  + [(48, "f"), (52, "i")] + [(o, "I") for o in range(56, 76, 4)])  # fmt: skip
        for _ in range(rng.randint(1, 2)):
            off, fmt = rng.choice(fields)
            old = struct.unpack_from("<" + fmt, b, off)[0]
            if fmt == "f":
                new = rng.choice([0.0, -1.0, 1e-45, 1e-31, 3e38, float("inf"), float("nan"),
                                  old * 2])  # fmt: skip
            elif fmt == "i":
                new = rng.choice([-129, -128, 127, 128, -(2**31), 2**31 - 1, old + 1])
            else:
                top = {"B": 255, "H": 65535, "I": 2**32 - 1}[fmt]
                new = rng.choice([*INTERESTING_U32, old + 1, old - 1, old + 4, len(b), len(b) + 1,
                                  old * 2, rng.randrange(top + 1)]) % (top + 1)  # fmt: skip
            struct.pack_into("<" + fmt, b, off, new)
        return (fix(bytes(b)) if rng.random() < 0.9 else bytes(b)), "field"
    if op < 0.7:  # truncate or extend
        if rng.random() < 0.6:
            return bytes(b[: rng.randrange(len(b))]), "truncate"
        return bytes(b) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))), "extend"
    if op < 0.8 and kind == "mtm":  # tensor bytes changed, their CRCs fixed: still valid
        sections = _mtm_sections(data)
        assert sections is not None
        doc = json.loads(sections[0])
        payload = bytearray(sections[1])
        for _ in range(rng.randint(1, 4)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        for e in doc["tensors"]:
            e["crc"] = crc(payload[e["offset"] : e["offset"] + e["nbytes"]])
        return build_mtm(json.dumps(doc).encode(), bytes(payload)), "data"
    for _ in range(rng.randint(1, 8)):  # bit flips and byte stores anywhere
        k = rng.randrange(len(b))
        if rng.random() < 0.7:
            b[k] ^= 1 << rng.randrange(8)
        else:
            b[k] = rng.choice([0, 0xFF, 0x7F, 0x80, 0x22, 0x5B])
    return (fix(bytes(b)) if rng.random() < 0.8 else bytes(b)), "bits"


def make_mutants(count: int, seed: int, directory: Path) -> list[tuple[str, str]]:
    """Write `count` mutants into directory; [(file name, mutation kind)]."""
    rng = random.Random(seed)
    seeds = seed_files()
    names = sorted(seeds)
    out = []
    for i in range(count):
        base = names[i % len(names)]
        data, what = mutate(base, seeds[base], rng)
        if rng.random() < 0.2:  # a second round now and then
            try:
                data, what2 = mutate(base, data, rng)
                what += "+" + what2
            except Exception:  # the first round broke what the second one edits
                pass
        name = f"{i:05d}.{base.rsplit('.', 1)[1]}"
        (directory / name).write_bytes(data)
        out.append((name, f"{base}:{what}"))
    return out


# ---------------------------------------------------------------------------------------------
# the host reader's verdict


def host_verdict(path: Path) -> str:
    """'A' (accepted), 'R' (FormatError) or 'E Type: message' (any other exception: a bug)."""
    try:
        if path.suffix == ".mtm":
            read_model(path)
        else:
            with DatasetReader(path, verify=True) as r:
                if len(r):
                    r[0], r[len(r) - 1]
                r.class_names, r.meta  # noqa: B018
                r.read_all()
        return "A"
    except FormatError:
        return "R"
    except Exception as e:
        return f"E {type(e).__name__}: {str(e)[:120]}"


# ---------------------------------------------------------------------------------------------
# the device loaders' verdicts

DEVICE_DRIVER = """
import gc
import mcutrain as mt
def check(name):
    if name.endswith('.mtm'):
        m = mt.load(name)
        del m
    else:
        ds = mt.Dataset(name, verify=True)
        try:
            if len(ds):
                ds[0]
                ds[len(ds) - 1]
                for b in ds.batches(2):
                    break
            ds.class_names
            ds.meta
        finally:
            ds.close()
        if ds.teacher_dtype:
            ds = mt.Dataset(name, verify=False, teacher=True)
            if len(ds):
                ds[0]
            ds.close()
for name in NAMES:
    try:
        check(PREFIX + name)
        v = 'A'
    except mt.FormatError:
        v = 'R'
    except OSError:
        v = 'O'
    except Exception as e:
        v = 'E %s: %s' % (type(e).__name__, str(e)[:100])
    print('@%s %s' % (name, v))
    gc.collect()
print('@done')
"""


@dataclass
class Row:
    fuzzer: str
    target: str
    runs: int = 0
    crashes: int = 0
    hangs: int = 0
    sanitizer_reports: int = 0
    python_exceptions: int = 0
    verdict_mismatches: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        d = dict(self.__dict__)
        d["notes"] = "; ".join(self.notes[:12]) + (" ..." if len(self.notes) > 12 else "")
        return d


def _parse(output: str) -> dict[str, str]:
    out = {}
    for line in output.splitlines():
        if line.startswith("@") and " " in line:
            name, verdict = line[1:].split(" ", 1)
            out[name] = verdict.strip()
    return out


def _run_batch_unix(names: list[str], directory: Path, timeout: float) -> tuple[dict[str, str],
                                                                                str, bool]:  # fmt: skip
    script = directory / "driver.py"
    script.write_text(f"NAMES = {names!r}\nPREFIX = {str(directory) + '/'!r}\n" + DEVICE_DRIVER)
    try:
        done = subprocess.run([str(SANITIZED), str(script)], capture_output=True, text=True,
                              timeout=timeout, errors="replace")  # fmt: skip
        return _parse(done.stdout), done.stderr + (
            "" if done.returncode == 0 else f"\nexit {done.returncode}"), False
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        return _parse(out), "", True


def _run_batch_board(target, names: list[str], directory: Path, timeout: float) -> tuple[
    dict[str, str], str, bool
]:
    from mcutrain.errors import DeviceError, DeviceTimeout

    script = directory / "driver.py"
    script.write_text(f"NAMES = {names!r}\nPREFIX = ''\n" + DEVICE_DRIVER)
    try:
        out = target.mpremote("mount", str(directory), "run", str(script), timeout=timeout)
        return _parse(out), "", False
    except DeviceTimeout as e:
        return _parse(e.output), "", True
    except DeviceError as e:
        return _parse(e.output), e.output[-400:], False


def run_target(target_name: str, mutants: list[tuple[str, str]], verdicts: dict[str, str],
               directory: Path, batch: int, timeout: float) -> Row:  # fmt: skip
    """Every mutant through the device loaders on one target, resuming after a crash or hang."""
    row = Row("files", target_name)
    names = [n for n, _ in mutants]
    kinds = dict(mutants)
    target = None
    if target_name != "unix-san":
        from mcutrain.emulator import Emulator
        from mcutrain.runner import EmulatedTarget

        target = EmulatedTarget(Emulator(target_name).__enter__())
    try:
        i = 0
        while i < len(names):
            chunk = names[i : i + batch]
            if target is None:
                got, err, hung = _run_batch_unix(chunk, directory, timeout)
            else:
                got, err, hung = _run_batch_board(target, chunk, directory, timeout)
            for name in chunk:
                if name not in got:
                    break
                row.runs += 1
                _judge(row, name, kinds[name], got[name], verdicts[name])
            done = sum(1 for n in chunk if n in got)
            if done < len(chunk):  # the next mutant crashed or hung the target
                bad = chunk[done]
                row.runs += 1
                if hung:
                    row.hangs += 1
                    row.notes.append(f"hang {bad} ({kinds[bad]})")
                else:
                    row.crashes += 1
                    row.notes.append(f"crash {bad} ({kinds[bad]}): {err.strip()[-160:]}")
                if any(m in err for m in SAN_MARKERS):
                    row.sanitizer_reports += 1
                if target is not None:
                    target.emulator.restart()
                i += done + 1
            else:
                if any(m in err for m in SAN_MARKERS):
                    row.sanitizer_reports += 1
                    row.notes.append(f"sanitizer report in batch at {chunk[0]}: {err[-160:]}")
                i += len(chunk)
    finally:
        if target is not None:
            target.close()
    return row


def _judge(row: Row, name: str, kind: str, device: str, host: str) -> None:
    if device.startswith("E"):
        row.python_exceptions += 1
        row.notes.append(f"{name} ({kind}): {device}")
    elif (device == "A") != (host == "A") and device != "O":
        row.verdict_mismatches += 1
        row.notes.append(f"{name} ({kind}): device {device}, host {host}")


def fuzz(count: int, targets: list[str], seed: int, directory: Path, batch: int = 250,
         timeout: float = 120.0, verbose: bool = True) -> list[Row]:  # fmt: skip
    mutants = make_mutants(count, seed, directory)
    host = Row("files", "host")
    verdicts = {}
    for name, kind in mutants:
        verdicts[name] = v = host_verdict(directory / name)
        host.runs += 1
        if v.startswith("E"):
            host.python_exceptions += 1
            host.notes.append(f"{name} ({kind}): {v}")
    accepted = sum(v == "A" for v in verdicts.values())
    host.notes.insert(0, f"{accepted} of {count} mutants accepted")
    rows = [host]
    for t in targets:
        start = time.monotonic()
        if t == "unix-san" and not SANITIZED.is_file():
            rows.append(Row("files", t, notes=["not built: make firmware-unix-san"]))
            continue
        row = run_target(t, mutants, verdicts, directory, batch if t == "unix-san" else 60,
                         timeout)  # fmt: skip
        row.notes.insert(0, f"{time.monotonic() - start:.0f} s")
        rows.append(row)
        if verbose:
            print(f"  {t}: {row.runs} mutants", file=sys.stderr)
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"{'fuzzer':8} {'target':10} {'runs':>6} {'crashes':>7} {'hangs':>5} {'sanitizer':>9} "
          f"{'py-exc':>6} {'mismatch':>8}  notes")  # fmt: skip
    for r in rows:
        d = r.as_dict()
        print(f"{r.fuzzer:8} {r.target:10} {r.runs:6} {r.crashes:7} {r.hangs:5} "
              f"{r.sanitizer_reports:9} {r.python_exceptions:6} {r.verdict_mismatches:8}  "
              f"{str(d['notes'])[:300]}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=int, default=1000)
    ap.add_argument("--targets", default="unix-san", help="comma-separated: unix-san, qemu-m4f, "
                    "qemu-rv32, qemu-rv32f (the host reader always runs)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz" / "files.json")
    args = ap.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t and t != "host"]
    with tempfile.TemporaryDirectory(prefix="mcutrain-fuzz-files-") as d:
        rows = fuzz(args.mutants, targets, args.seed, Path(d))
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([r.as_dict() for r in rows], indent=1) + "\n")
    bad = sum(r.crashes + r.hangs + r.sanitizer_reports + r.python_exceptions
              + r.verdict_mismatches for r in rows)  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
