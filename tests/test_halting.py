"""Early halting (mcutrain.halting): the running quantile against numpy, per-sample skipping
through train_step(..., skip_below=...) (deterministic, exactly train_step when nothing is
skipped, allocating nothing on the boards), EarlyStop's patience and budgets, and the fields
reaching the host's results and summary.json."""

from __future__ import annotations

import importlib.util
import io
import json

import numpy as np
import pytest
from conftest import ROOT
from device_errors import assert_raises_clearly
from mcutrain.collect import Collector, summarize
from mcutrain.runner import run_on

HALTING = ROOT / "micropython_lib" / "mcutrain" / "mcutrain" / "halting.py"


def host_halting():
    """The device module in CPython: RunningQuantile is plain Python (math only)."""
    spec = importlib.util.spec_from_file_location("device_halting", HALTING)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rank(stream: np.ndarray, estimate: float) -> float:
    """The share of the stream below the estimate: where it sits, as a quantile."""
    return float(np.mean(stream < estimate))


@pytest.mark.parametrize("q", [0.1, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("dist", ["exponential", "lognormal", "uniform"])
def test_running_quantile_matches_numpy_on_stationary_streams(q, dist):
    rng = np.random.default_rng(int(q * 100) + len(dist))
    stream = {"exponential": rng.exponential(1.0, 20000), "lognormal": rng.lognormal(0, 1.5, 20000),
              "uniform": rng.uniform(0.5, 2.0, 20000)}[dist]
    est = host_halting().RunningQuantile(q, rate=0.01)
    for v in stream:
        est.update(float(v))
    # A constant step keeps the estimate moving: with rate 0.01 its log wanders by about
    # sqrt(rate * q(1-q) / 2) / density, a few hundredths in rank; 0.04 is twice that.
    assert rank(stream, est.value) == pytest.approx(q, abs=0.04)
    assert est.value == pytest.approx(np.quantile(stream, q), rel=0.25)
    assert est.count == len(stream)


def test_running_quantile_tracks_a_falling_stream():
    # Losses fall over training: the estimate follows the recent values, not all of them.
    rng = np.random.default_rng(5)
    n = 6000
    stream = rng.exponential(1.0, n) * np.exp(-np.arange(n) / 1500)
    est = host_halting().RunningQuantile(0.3, rate=0.05)
    for v in stream:
        est.update(float(v))
    recent = stream[-100:]  # about 1 / rate values weigh in
    assert rank(recent, est.value) == pytest.approx(0.3, abs=0.15)
    assert rank(stream, est.value) < 0.1  # the whole stream's quantile would be far higher


STREAM = """
import mcutrain as mt, math
est = mt.RunningQuantile({q}, rate={rate})
s = 12345
for i in range({n}):
    s = (s * 1103515245 + 12345) & 0x7fffffff
    est.update(-math.log((s + 1) / 2147483649))
print(est.value, est.count)
"""


def lcg_exponential(n: int) -> np.ndarray:
    s, out = 12345, []
    for _ in range(n):
        s = (s * 1103515245 + 12345) & 0x7FFFFFFF
        out.append(-np.log((s + 1) / 2147483649))
    return np.array(out)


@pytest.mark.parametrize("q", [0.25, 0.75])
def test_running_quantile_on_device_matches_numpy(target, q):
    n = 3000
    value, count = run_on(target, STREAM.format(q=q, rate=0.02, n=n), timeout=120).split()
    stream = lcg_exponential(n)
    # The same stream: the boards' 30-bit floats change the estimate's last digits only.
    assert int(count) == n
    assert rank(stream, float(value)) == pytest.approx(q, abs=0.05)
    host = host_halting().RunningQuantile(q, rate=0.02)
    for v in stream:
        host.update(float(v))
    assert float(value) == pytest.approx(host.value, rel=1e-3)


# A 2-class task for a small MLP, the same on every target (the data in the script).
SETUP = """
import mcutrain as mt, gc
def make():
    mt.seed(3)
    m = mt.Sequential(mt.Linear(4, 8), mt.ReLU(), mt.Linear(8, 3))
    return m, mt.SGD(m, lr=0.1, momentum=0.9)
xs = []
ys = []
s = 7
for i in range(40):
    x = mt.zeros((1, 4))
    for j in range(4):
        s = (s * 1103515245 + 12345) & 0x7fffffff
        x[0][j] = (s % 1000) / 500 - 1
    xs.append(x)
    ys.append(int(x[0][0] + x[0][1] > 0) + int(x[0][2] > 0.5))
def weights(m):
    return b''.join(bytes(t) for t in m.state_dict().values())
"""


def test_without_skipping_the_path_is_train_step_bit_for_bit(target):
    out = run_on(target, SETUP + """
loss = mt.distillation(temperature=2.0, alpha=0.5)
teacher = mt.zeros((1, 3))
runs = []
for how in ('train_step', 'max_skip=0', 'below=-1', 'warmup'):
    m, opt = make()
    skip = mt.SampleSkip(q=0.5, warmup=1000 if how == 'warmup' else 10,
                         max_skip=0.0 if how == 'max_skip=0' else 0.5)
    losses = []
    for epoch in range(3):
        for x, y in zip(xs, ys):
            teacher[0][y] = 2.0
            if how == 'train_step':
                v = m.train_step(x, (y, teacher), loss, opt)
            elif how == 'below=-1':
                v = m.train_step(x, (y, teacher), loss, opt, skip_below=-1.0)
            else:
                v = skip.step(m, x, (y, teacher), loss, opt)
            teacher[0][y] = 0.0
            losses.append(v)
    runs.append((weights(m), losses, skip.skipped))
for w, losses, skipped in runs:
    print(w == runs[0][0], losses == runs[0][1], skipped)
""", timeout=300).splitlines()
    assert out == ["True True 0"] * 4, out


DECISIONS = SETUP + """
def run():
    m, opt = make()
    skip = mt.SampleSkip(q=0.4, warmup=15, max_skip={max_skip})
    trace = []
    for epoch in range(4):
        for x, y in zip(xs, ys):
            before = weights(m)
            below = skip.threshold()
            n = skip.skipped
            v = skip.step(m, x, y, mt.cross_entropy, opt)
            counted = skip.skipped - n
            # a counted skip left the weights as they were; any other step changed them
            same = weights(m) == before
            assert counted == (same and below is not None and v < below), (v, below, counted, same)
            trace.append('s' if counted else '.')
    return ''.join(trace), skip.skipped, skip.seen, weights(m)
a = run()
b = run()
print(a[0])
print(a[1], a[2], a[0] == b[0] and a[3] == b[3])
"""


@pytest.mark.parametrize("max_skip", [0.2, 0.5])
def test_skip_decisions_are_deterministic_and_counted(target, max_skip):
    trace, skipped, seen, same = run_on(target, DECISIONS.format(max_skip=max_skip), timeout=300).split()
    assert same == "True"  # the same losses give the same decisions and weights
    assert int(seen) == 160 and int(skipped) == trace.count("s") > 0
    assert "s" not in trace[:15]  # the warm-up never skips
    # the cap: at no step does the skipped share exceed max_skip
    for k in range(1, len(trace) + 1):
        assert trace[:k].count("s") <= max_skip * k + 1e-9, (k, trace)


def test_sample_skip_allocates_nothing_per_step(target):
    out = run_on(target, SETUP + """
def run():
    m, opt = make()
    skip = mt.SampleSkip(q=0.5, warmup=5, max_skip=0.5)
    x, y = xs[0], ys[0]
    loss = mt.cross_entropy
    for _ in range(20):
        skip.step(m, x, y, loss, opt)
    gc.collect()
    before = gc.mem_alloc()
    n = skip.skipped
    for _ in range(20):
        skip.step(m, x, y, loss, opt)
    print(gc.mem_alloc() - before, skip.skipped - n)
run()
""")
    grown, skipped = (int(v) for v in out.split())
    assert 0 < skipped < 20  # both paths ran: skipped steps and updates
    if target.name == "unix":
        # The unix port boxes floats (the loss, the threshold, the quantile): a few 32-byte
        # GC blocks per step on 64-bit; nothing is kept.
        assert grown <= 20 * 8 * 32, grown
    else:
        assert grown == 0, f"SampleSkip.step allocated {grown} bytes over 20 steps"


def test_early_stop_patience_min_delta_and_modes(target):
    out = run_on(target, """
import mcutrain as mt
def feed(stop, values):
    for v in values:
        if stop.update(v):
            break
    return stop.reason, stop.best, stop.best_evaluation, stop.evaluations
print(feed(mt.EarlyStop(patience=2), [0.5, 0.6, 0.6, 0.59, 0.7]))
print(feed(mt.EarlyStop(patience=2, min_delta=0.05), [0.5, 0.54, 0.53, 0.9]))
print(feed(mt.EarlyStop(patience=1, mode='min'), [3.0, 2.0, 2.5, 1.0]))
print(feed(mt.EarlyStop(patience=None), [0.5, 0.4, 0.3, 0.2]))
s = mt.EarlyStop(patience=1)
feed(s, [1.0, 0.5])
s.reset()
print(s.reason, s.best, s.evaluations, s.update(0.1))
""").splitlines()
    assert out == [
        "('patience', 0.6, 2, 4)",   # 0.6 again and 0.59 are not better: two without improving
        "('patience', 0.5, 1, 3)",   # steps under min_delta do not count as improving
        "('patience', 2.0, 2, 3)",   # mode 'min': a loss
        "(None, 0.5, 1, 4)",         # patience None: never stops on the metric
        "None None 0 False",
    ], out


def test_early_stop_trend_window_stops_when_the_recent_mean_stops_rising(target):
    out = run_on(target, """
import mcutrain as mt
def feed(stop, values):
    for v in values:
        if stop.update(v):
            break
    return stop.reason, stop.best_evaluation, stop.evaluations
print(feed(mt.EarlyStop(patience=None, window=2), [0.5, 0.6, 0.7, 0.8, 0.6, 0.5, 0.9]))
print(feed(mt.EarlyStop(patience=None, window=2), [0.5, 0.9, 0.7, 0.8, 0.85, 0.88, 0.5, 0.5]))
print(feed(mt.EarlyStop(patience=2, window=2), [0.5, 0.9, 0.7, 0.8, 0.85, 0.88]))
r = feed(mt.EarlyStop(patience=None, window=2, min_delta=0.1), [0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.9])
print(r[0], r[2])  # best_evaluation left out: 0.6 against 0.5 + min_delta is a float tie
print(feed(mt.EarlyStop(patience=None, window=1, mode='min'), [3.0, 2.0, 2.5, 1.0]))
s = mt.EarlyStop(patience=None, window=1)
feed(s, [1.0, 0.5])
s.reset()
print(s.reason, s.update(0.1), s.update(0.2), s.reason)
""").splitlines()
    assert out == [
        "('trend', 4, 6)",      # the last two's mean (0.6+0.5)/2 is below the two before's (0.7+0.8)/2
        "('trend', 2, 7)",      # an early lucky 0.9 does not stop a rising run; the fall at 0.5 does
        "('patience', 2, 4)",   # patience, on the same values, stops two evaluations after the 0.9
        "trend 6",              # 0.8, 0.8 beat 0.7, 0.8 by 0.05 on average: not more than min_delta
        "('trend', 2, 3)",      # mode 'min': 2.5 after 2.0 is no fall
        "None False False None",  # reset() forgets the earlier evaluations; 0.2 after 0.1 rises
    ], out


def test_early_stop_budgets(target):
    out = run_on(target, """
import mcutrain as mt, time
start = mt.perf_counter()
stop = mt.EarlyStop(patience=None, budget=200000)
steps = 0
while not stop.spent():
    steps += 1
print(stop.reason, mt.perf_counter() - start >= 200000, steps > 0, stop.spent())
t0 = time.ticks_ms()
stop = mt.EarlyStop(seconds=0.05)
while not stop.spent():
    pass
print(stop.reason, time.ticks_diff(time.ticks_ms(), t0) >= 50)
stop = mt.EarlyStop(patience=1, budget=10**15, seconds=1000)
print(stop.spent(), stop.update(1.0), stop.update(0.5), stop.reason)
""", timeout=120).splitlines()
    assert out == ["budget True True True", "time True", "False False True patience"], out


def test_bad_halting_arguments_raise_clear_errors(target):
    assert_raises_clearly(target, [
        ("mt.RunningQuantile(0)", "ValueError", "q must be in (0, 1)"),
        ("mt.RunningQuantile(1.0)", "ValueError", "q must be in (0, 1)"),
        ("mt.RunningQuantile(0.5, rate=0)", "ValueError", "rate must be in (0, 1]"),
        ("mt.SampleSkip(max_skip=1.5)", "ValueError", "max_skip must be in [0, 1]"),
        ("mt.SampleSkip(warmup=-1)", "ValueError", "warmup must be >= 0"),
        ("mt.EarlyStop(mode='best')", "ValueError", "mode must be 'max' or 'min'"),
        ("mt.EarlyStop(patience=0)", "ValueError", "patience must be >= 1"),
        ("mt.EarlyStop(window=0)", "ValueError", "window must be >= 1"),
        ("mt.EarlyStop(min_delta=-1)", "ValueError", "min_delta must be >= 0"),
        ("m.train_step(x, 0, mt.cross_entropy, opt, skip_below='low')", "TypeError", "float"),
    ], ["import mcutrain as mt", "m = mt.Sequential(mt.Linear(2, 2))", "opt = mt.SGD(m, lr=0.1)",
        "x = mt.zeros((1, 2))"], after="m.train_step(x, 0, mt.cross_entropy, opt, skip_below=0.0)")


METRICS = SETUP + """
m, opt = make()
skip = mt.SampleSkip(q=0.5, warmup=10, max_skip=0.5)
stop = mt.EarlyStop(patience=1)
metrics = mt.Metrics(every=20, skip=skip, stop=stop, run='halting')
for epoch in range(5):
    for x, y in zip(xs, ys):
        metrics.step(loss=skip.step(m, x, y, mt.cross_entropy, opt))
    acc = [0.5, 0.7, 0.6, 0.9, 0.9][epoch]
    halt = stop.update(acc)
    metrics.epoch(val_accuracy=acc)
    if halt:
        break
metrics.done(test_accuracy=0.65)
print('counts', skip.skipped, skip.seen)
"""


def test_metrics_lines_carry_halting_fields_into_summary_json(target, tmp_path):
    out = run_on(target, METRICS, timeout=300)
    collector = Collector(tmp_path, out=io.StringIO(), status=io.StringIO())
    for line in out.splitlines():
        collector.feed(line)
    collector.close()
    skipped, seen = (int(v) for v in out.splitlines()[-1].split()[1:])
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert steps and all("skipped" in r and "skip_fraction" in r for r in steps)
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["stop"] for r in epochs] == [None, None, "patience"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["skipped"] == skipped > 0 and summary["step"] == seen == 120
    assert summary["skip_fraction"] == pytest.approx(skipped / seen, rel=1e-5)  # 30-bit floats
    assert (summary["stop"], summary["best"], summary["best_evaluation"], summary["evaluations"]) == \
        ("patience", pytest.approx(0.7, rel=1e-5), 2, 3)
    assert summary["test_accuracy"] == pytest.approx(0.65, rel=1e-5)
    assert "skipped" in (tmp_path / "results.csv").read_text().splitlines()[0]


def test_summary_takes_halting_fields_from_earlier_records_and_needs_done():
    records = [{"kind": "step", "step": 10, "skipped": 3, "skip_fraction": 0.3},
               {"kind": "epoch", "epoch": 0, "stop": "budget", "best": 0.8},
               {"kind": "done", "epoch": 1, "step": 12, "test_accuracy": 0.9}]
    assert summarize(records) == {"epoch": 1, "step": 12, "test_accuracy": 0.9, "skipped": 3,
                                  "skip_fraction": 0.3, "stop": "budget", "best": 0.8}
    assert summarize(records[:2]) is None  # a run that did not finish has no summary
    done = {"kind": "done", "skipped": 5, "stop": None}
    assert summarize(records + [done]) == {"skipped": 5, "stop": None, "skip_fraction": 0.3,
                                           "best": 0.8}  # the done line wins, even a null stop
