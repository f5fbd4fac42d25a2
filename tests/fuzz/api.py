"""Host driver of the random-call API fuzzer (tests/fuzz/api_device.py).

    python tests/fuzz/api.py --calls 50000 --targets unix-san,qemu-m4f,qemu-rv32 --seed 1

Runs the device script in chunks (a fresh process on unix, a soft reset on a board), detects
crashes (signals, nonzero exits, ASan/UBSan reports, board faults and resets) and hangs (a
timeout per chunk), reports each failure with its seed, call index and call, minimizes the
reproducer to the fewest calls that still fail the same way (delta debugging over the printed
calls, replayed exactly), prints a summary table and writes build/fuzz/api.json.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "host"))

DEVICE_SCRIPT = Path(__file__).with_name("api_device.py")
HEAP = 256 * 1024  # the emulated boards' default heap, also for the unix targets
UNIX_BINARIES = {"unix": ROOT / "build/unix/micropython", "unix-san": ROOT / "build/unix-san/micropython"}
CHUNK = {"unix": 500, "unix-san": 500}
BOARD_CHUNK = 250
# What a replay needs besides `import mcutrain as mt` (the names api_device.py's calls use).
REPLAY_PRELUDE = """import mcutrain as mt
import gc
P = [None] * 16
B = [None] * 4
nan = float("nan")
inf = float("inf")
def buf(i, n):
    B[i] = bytearray(n)
    return B[i]
def filled(t, v):
    t.fill(v)
    return t
"""
SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1:abort_on_error=0",
    "UBSAN_OPTIONS": "print_stacktrace=1",
}
_SAN_KIND = re.compile(r"ERROR: AddressSanitizer: ([\w-]+)|runtime error: (.*)|ERROR: LeakSanitizer|"
                       r"AddressSanitizer:DEADLYSIGNAL|ERROR: AddressSanitizer: (SEGV|FPE|BUS)")
_FRAME = re.compile(r"#(\d+) 0x[0-9a-f]+ .*?\(([^()]*micropython)\+(0x[0-9a-f]+)\)")
_UBSAN_LOC = re.compile(r"([\w/.-]+\.[ch]):(\d+):\d+: runtime error: (.*)")


@dataclass
class Outcome:
    """One run of device code: what it printed and how it ended."""

    status: str  # "ok", "crash", "hang"
    stdout: str
    stderr: str = ""
    returncode: int | None = 0
    sanitizer: bool = False

    def calls(self) -> list[tuple[int, str]]:
        return [(int(m.group(1)), m.group(2)) for m in re.finditer(r"^@(\d+) (.*)$", self.stdout, re.M)]

    def corrupted_at(self) -> int | None:
        """The call after which a heap canary had changed (silent memory corruption), if any."""
        m = re.search(r"^#CORRUPT (\d+)", self.stdout, re.M)
        return int(m.group(1)) if m else None

    def summary(self) -> dict | None:
        m = re.search(r"^=S (\{.*\})\s*$", self.stdout, re.M)
        return json.loads(m.group(1)) if m else None

    def exceptions(self) -> dict[str, int]:
        s = self.summary()
        if s is not None:
            return s["exceptions"]
        counts: dict[str, int] = {}
        for name in re.findall(r"^!\d+ (\w+)", self.stdout, re.M):
            counts[name] = counts.get(name, 0) + 1
        return counts


@dataclass
class Failure:
    target: str
    seed: int
    index: int
    call: str
    kind: str  # "crash" or "hang"
    signature: str
    detail: str
    calls: list[str]
    minimized: list[str] | None = None
    chunk: tuple[int, int] = (0, 0)  # (start, count) of the chunk it ran in


@dataclass
class TargetStats:
    target: str
    calls: int = 0
    crashes: int = 0
    hangs: int = 0
    sanitizer_reports: int = 0
    exceptions: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    harness_errors: int = 0


# -- symbolizing sanitizer reports with the firmware's link map (the binary is stripped) --------


class LinkMap:
    def __init__(self, map_path: Path) -> None:
        self.addrs: list[int] = []
        self.names: list[str] = []
        if not map_path.is_file():
            return
        # Every function has its own section (.text.NAME, statics included), placed at an address.
        pairs = []
        text = map_path.read_text(errors="replace")
        for m in re.finditer(r"^ \.text\.([\w.]+)\s+0x([0-9a-f]{8,16})\s+0x[0-9a-f]+\s+(\S+)", text, re.M):
            ours = "*" if "/mcutrain/" in m.group(3) else ""  # a frame in our module, not MicroPython's
            pairs.append((int(m.group(2), 16), f"{ours}{m.group(1)}({Path(m.group(3)).stem})"))
        pairs.sort()
        self.addrs = [a for a, _ in pairs]
        self.names = [n for _, n in pairs]

    def name(self, addr: int) -> str:
        i = bisect.bisect_right(self.addrs, addr) - 1
        return self.names[i] if i >= 0 else "?"


_maps: dict[Path, LinkMap] = {}


def symbolized_frames(stderr: str, binary: Path, limit: int = 8) -> list[str]:
    link = _maps.setdefault(binary, LinkMap(binary.with_name(binary.name + ".map")))
    frames = []
    for m in _FRAME.finditer(stderr):
        frames.append(link.name(int(m.group(3), 16)))
        if len(frames) >= limit:
            break
    return frames


def sanitizer_signature(stderr: str, binary: Path) -> tuple[str, str] | None:
    """(signature, one-line detail) of the first ASan/UBSan report in stderr, else None."""
    ub = _UBSAN_LOC.search(stderr)
    if ub:
        where = f"{Path(ub.group(1)).name}:{ub.group(2)}"
        what = re.sub(r"-?\d+", "N", ub.group(3))[:70]
        frames = symbolized_frames(stderr, binary, 6)
        ours = [f for f in frames if f.startswith("*")][:1]
        return f"UBSan {what} at {where} {''.join(ours)}", f"{ub.group(3)} at {where} via {' < '.join(frames)}"
    m = re.search(r"ERROR: AddressSanitizer: ([\w-]+)", stderr)
    if m:
        frames = symbolized_frames(stderr, binary)
        # Same bug, same place: the first frame and the first frame in our module.
        ours = [f for f in frames if f.startswith("*")]
        top = frames[:1] + ours[:1]
        return f"ASan {m.group(1)} in {' < '.join(top)}", f"{m.group(1)} in {' < '.join(frames)}"
    if "runtime error:" in stderr:
        line = next(line for line in stderr.splitlines() if "runtime error:" in line)
        return "UBSan " + re.sub(r"-?\d+", "N", line)[:90], line
    return None


# -- running device code ------------------------------------------------------------------------


def chunk_script(seed: int, start: int, count: int, avoid: list[str] = (), replay: list[str] | None = None) -> str:
    return (f"SEED = {seed}\nSTART = {start}\nCOUNT = {count}\nAVOID = {list(avoid)!r}\nREPLAY = {replay!r}\n"
            + device_source())


_source: list[str] = []


def device_source() -> str:
    # Read once: a campaign keeps running the script it started with, even if the file changes.
    if not _source:
        _source.append(DEVICE_SCRIPT.read_text())
    return _source[0]


def replay_script(calls: list[str]) -> str:
    """The calls run exactly as the fuzzer ran them (printed, each in its own try, canaries)."""
    return chunk_script(0, 0, len(calls), replay=calls)


class UnixRunner:
    def __init__(self, name: str, timeout: float, binary: Path | None = None) -> None:
        self.name = name
        self.binary = binary or UNIX_BINARIES[name]
        if not self.binary.is_file():
            raise SystemExit(f"{self.binary} not built; run `make firmware-{name}`")
        self.timeout = timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=f"mcutrain-fuzz-{name}-"))

    def run(self, code: str, timeout: float | None = None) -> Outcome:
        script = self.workdir / "fuzz_chunk.py"
        script.write_text(code)
        env = dict(os.environ, **SAN_ENV)
        env["ASAN_SYMBOLIZER_PATH"] = "/nonexistent"  # stripped binary: we symbolize with the map
        try:
            done = subprocess.run(
                [str(self.binary), "-X", f"heapsize={HEAP}", str(script)],
                capture_output=True, timeout=timeout or self.timeout, cwd=self.workdir, env=env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as e:
            return Outcome("hang", _text(e.stdout), _text(e.stderr), None)
        out, err = _text(done.stdout), _text(done.stderr)
        sanitizer = "Sanitizer" in err or "runtime error:" in err
        ok = done.returncode == 0 and not sanitizer and "=S " in out and "#CORRUPT" not in out
        return Outcome("ok" if ok else "crash", out, err, done.returncode, sanitizer)

    def signature(self, o: Outcome) -> tuple[str, str]:
        san = sanitizer_signature(o.stderr, self.binary) if o.sanitizer else None
        if san:
            return san
        if o.status == "hang":
            return "hang", f"no end within {self.timeout} s"
        if o.corrupted_at() is not None:
            return "heap canary changed", "a heap canary changed: an out-of-bounds write into the GC heap"
        if o.returncode is not None and o.returncode < 0:
            return f"signal {-o.returncode}", f"killed by signal {-o.returncode}"
        tail = o.stderr.strip().splitlines()[-1:] or o.stdout.strip().splitlines()[-1:]
        return f"exit {o.returncode}", f"exit {o.returncode}: {tail[0][:120] if tail else ''}"

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


class BoardRunner:
    def __init__(self, name: str, timeout: float, firmware: Path | None = None) -> None:
        from mcutrain.emulator import Emulator

        self.name = name
        self.timeout = timeout
        self.emulator = Emulator(name, heap=HEAP, firmware=firmware)
        self.emulator.start()
        self.binary = None

    def run(self, code: str, timeout: float | None = None) -> Outcome:
        from mcutrain.errors import DeviceError, DeviceTimeout

        self.emulator.start()  # boots again if QEMU died
        try:
            out = self.emulator.exec(code, timeout or self.timeout)
        except DeviceTimeout as e:
            alive = self.emulator.running
            self.emulator.restart()
            return Outcome("hang" if alive else "crash", e.output, self.emulator.output, None)
        except (DeviceError, OSError) as e:
            # OSError: the UART's pty went away under mpremote or us (QEMU died mid-run).
            alive = self.emulator.running
            qemu = self.emulator.output
            self.emulator.restart()
            # drain_uart's OSError hides mpremote's DeviceError, which has the board's output.
            out = getattr(e, "output", None) or getattr(e.__context__, "output", "") or ""
            return Outcome("crash", out, qemu + ("" if alive else "\n(QEMU exited)"), None)
        if "=S " not in out or "#CORRUPT" in out:
            return Outcome("crash", out, "no summary line (board reset?)", None)
        return Outcome("ok", out)

    def signature(self, o: Outcome) -> tuple[str, str]:
        if o.status == "hang":
            return "hang", f"no end within {self.timeout} s (hard fault loop or endless kernel)"
        if o.corrupted_at() is not None:
            return "heap canary changed", "a heap canary changed: an out-of-bounds write into the GC heap"
        if "QEMU exited" in o.stderr:
            return "qemu exit", o.stderr.strip()[-200:]
        if re.search(r"MicroPython v\d", o.stdout):
            return "board reset", "the board rebooted mid-run"
        tail = o.stdout.strip().splitlines()[-1:]
        return "crash", tail[0][:160] if tail else "no output"

    def close(self) -> None:
        self.emulator.close()


def _text(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return (b.decode("utf-8", "replace") if isinstance(b, bytes) else b).replace("\r\n", "\n")


# -- minimizing ---------------------------------------------------------------------------------


def reproduces(runner, calls: list[str], signature: str, timeout: float) -> bool:
    o = runner.run(replay_script(calls), timeout)
    return o.status != "ok" and runner.signature(o)[0] == signature


def ddmin(calls: list[str], test, budget: int) -> list[str]:
    """Zeller's delta debugging: a 1-minimal subsequence of `calls` for which test() holds
    (within `budget` test runs; the last call, the culprit, is always kept)."""
    culprit, rest = calls[-1], calls[:-1]
    n = 2
    runs = 0
    while rest and runs < budget:
        size = max(1, len(rest) // n)
        chunks = [rest[i:i + size] for i in range(0, len(rest), size)]
        reduced = False
        for i in range(len(chunks)):
            complement = [c for j, ch in enumerate(chunks) if j != i for c in ch]
            runs += 1
            if test(complement + [culprit]):
                rest, n, reduced = complement, max(n - 1, 2), True
                break
            if runs >= budget:
                break
        if not reduced:
            if n >= len(rest):
                break
            n = min(len(rest), n * 2)
    return rest + [culprit]


def minimize(runner, failure: Failure, timeout: float, budget: int) -> list[str] | None:
    calls = failure.calls
    if reproduces(runner, calls, failure.signature, timeout):
        return ddmin(calls, lambda c: reproduces(runner, c, failure.signature, timeout), budget)
    # A heap overrun shows where the heap layout puts it: a replay (whose script holds the calls)
    # may crash elsewhere. Then minimize to *a* crash, ending at the same call, and say so.
    if crashes(runner, calls, timeout):
        failure.detail += " | minimized to any crash (the replay's heap differs)"
        return ddmin(calls, lambda c: crashes(runner, c, timeout), budget)
    return None


def crashes(runner, calls: list[str], timeout: float) -> bool:
    return runner.run(replay_script(calls), timeout).status != "ok"


def minimize_on_san(failure: Failure, args) -> list[str] | None:
    if not UNIX_BINARIES["unix-san"].is_file():
        return None
    san = UnixRunner("unix-san", args.timeout, args.micropython)
    try:
        # The same chunk on unix-san: a board that dies loses the UART's last lines, so its own
        # output can stop a few calls before the culprit; the sanitizer build names it exactly.
        o = san.run(chunk_script(failure.seed, failure.chunk[0], failure.chunk[1], args.avoid))
        if o.status == "ok":
            o = san.run(replay_script(failure.calls))
            if o.status == "ok":
                return None
        sig, detail = san.signature(o)
        calls = [c for _, c in o.calls()]
        failure.detail += f" | same calls on unix-san: {detail} at: {calls[-1] if calls else '?'}"
        return ddmin(calls, lambda c: reproduces(san, c, sig, args.timeout), args.minimize_budget)
    finally:
        san.close()


# -- the campaign --------------------------------------------------------------------------------


def fuzz_target(name: str, calls: int, seed: int, args) -> TargetStats:
    stats = TargetStats(name)
    board = name.startswith("qemu")
    runner = BoardRunner(name, args.board_timeout, args.board_firmware) if board else UnixRunner(name, args.timeout, args.micropython)
    chunk = args.chunk or (BOARD_CHUNK if board else CHUNK.get(name, 500))
    seen: set[str] = set()
    start = 0
    t0 = time.monotonic()
    try:
        while stats.calls < calls:
            count = min(chunk, calls - stats.calls)
            o = runner.run(chunk_script(seed, start, count, args.avoid))
            made = o.calls()
            stats.calls += len(made)
            for k, v in o.exceptions().items():
                stats.exceptions[k] = stats.exceptions.get(k, 0) + v
            if o.status == "ok":
                if o.summary() is None:
                    stats.harness_errors += 1
            else:
                sig, detail = runner.signature(o)
                if o.status == "hang":
                    stats.hangs += 1
                else:
                    stats.crashes += 1
                if o.sanitizer:
                    stats.sanitizer_reports += 1
                bad_at = o.corrupted_at()
                if bad_at is not None:
                    made_to = [(i, c) for i, c in made if i <= bad_at]
                else:
                    made_to = made
                index, call = made_to[-1] if made_to else (start, "?")
                f = Failure(name, seed, index, call, o.status, sig, detail, [c for _, c in made_to],
                            chunk=(start, count))
                stats.failures.append(f)
                new = sig not in seen
                seen.add(sig)
                print(f"[{name}] {o.status.upper()} seed={seed} call={index}: {call}\n    {detail}", flush=True)
                if new and args.minimize_budget > 0 and len(f.calls) > 1:
                    if board:
                        # A board replay costs seconds (a hang: the whole timeout), so minimize on
                        # unix-san when the calls fail there too, and say so.
                        f.minimized = minimize_on_san(f, args)
                    else:
                        f.minimized = minimize(runner, f, args.timeout, args.minimize_budget)
                    if f.minimized:
                        print("    minimized reproducer:\n" + REPLAY_PRELUDE_SHORT + "\n".join(
                            "    " + c for c in f.minimized), flush=True)
            if not made:  # nothing ran at all: the script itself does not start
                stats.harness_errors += 1
                if stats.harness_errors > 3:
                    print(f"[{name}] the fuzz script does not run:\n{o.stdout[-800:]}{o.stderr[-800:]}")
                    break
            start += count
            if args.progress:
                print(f"[{name}] {stats.calls} calls, {stats.crashes} crashes, {stats.hangs} hangs "
                      f"({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        runner.close()
    return stats


REPLAY_PRELUDE_SHORT = "    (prelude: tests/fuzz/api.py REPLAY_PRELUDE)\n"


def row(s: TargetStats) -> dict:
    signatures: dict[str, int] = {}
    for f in s.failures:
        signatures[f.signature] = signatures.get(f.signature, 0) + 1
    notes = "; ".join(f"{k} x{v}" for k, v in signatures.items()) or "only Python exceptions"
    exc = sum(s.exceptions.values())
    return {
        "fuzzer": "api", "target": s.target, "runs": s.calls, "crashes": s.crashes, "hangs": s.hangs,
        "sanitizer_reports": s.sanitizer_reports, "python_exceptions": exc, "notes": notes,
    }


def failure_record(f: Failure) -> dict:
    return {"target": f.target, "seed": f.seed, "index": f.index, "call": f.call, "kind": f.kind,
            "signature": f.signature, "detail": f.detail, "minimized": f.minimized, "calls": f.calls,
            "chunk": list(f.chunk)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=5000, help="calls per target")
    p.add_argument("--targets", default="unix-san",
                   help="comma-separated: unix, unix-san, qemu-m4f, qemu-rv32, qemu-rv32f")
    p.add_argument("--board-calls", type=int, default=None, help="calls per emulated board (default --calls)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--chunk", type=int, default=0, help="calls per process/soft reset (default per target)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per unix chunk before it is a hang")
    p.add_argument("--board-timeout", type=float, default=120.0, help="seconds per board chunk")
    p.add_argument("--minimize-budget", type=int, default=200, help="replays per new failure (0: none)")
    p.add_argument("--out", type=Path, default=ROOT / "build/fuzz/api.json")
    p.add_argument("--failures", type=Path, default=ROOT / "build/fuzz/api_failures.json")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--board-firmware", type=Path, default=None,
                   help="another firmware.elf for the (single) emulated board given in --targets")
    p.add_argument("--micropython", type=Path, default=None,
                   help="another unix(-san) binary to fuzz (e.g. a build with a fix under test)")
    p.add_argument("--avoid", action="append", default=[],
                   help="do not make calls containing this text (a known crash that hides others); repeatable")
    args = p.parse_args(argv)

    results = []
    for name in [t.strip() for t in args.targets.split(",") if t.strip()]:
        n = args.board_calls if name.startswith("qemu") and args.board_calls else args.calls
        results.append(fuzz_target(name, n, args.seed, args))
    rows = [row(s) for s in results]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    args.failures.parent.mkdir(parents=True, exist_ok=True)
    args.failures.write_text(json.dumps([failure_record(f) for s in results for f in s.failures], indent=1) + "\n")
    print()
    print("| target | calls | crashes | hangs | sanitizer reports | Python exceptions | notes |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['target']} | {r['runs']} | {r['crashes']} | {r['hangs']} | {r['sanitizer_reports']} | "
              f"{r['python_exceptions']} | {r['notes']} |")
    for s in results:
        if s.exceptions:
            print(f"{s.target} exceptions: " + ", ".join(f"{k} {v}" for k, v in sorted(s.exceptions.items())))
    bad = any(r["crashes"] or r["hangs"] or r["sanitizer_reports"] for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
