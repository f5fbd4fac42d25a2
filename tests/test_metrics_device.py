"""mcutrain.metrics on the boards: dt_ms is training-step time only (evaluation before
epoch() and work inside `with m.paused()` are left out; `t` still counts them), and the
start and done lines say whether the clock is emulated."""

from __future__ import annotations

from mcutrain.collect import parse_metrics_line
from mcutrain.runner import run_on

SCRIPT = """
import time
from mcutrain.metrics import Metrics
m = Metrics(every=2, perf=True, model="toy")
for epoch in range(2):
    for i in range(4):
        time.sleep_ms(2)
        m.step(1.0)
    time.sleep_ms(100)  # evaluation
    m.epoch(val_loss=0.5)
for i in range(2):
    time.sleep_ms(2)
    m.step(1.0)
    with m.paused():
        time.sleep_ms(100)  # evaluation in mid-epoch
m.done()
"""
CLOCK = {"unix": "real", "qemu-m4f": "emulated", "qemu-rv32": "emulated"}


def test_dt_ms_leaves_out_evaluation_and_lines_say_the_clock(target):
    records = [r for r in map(parse_metrics_line, run_on(target, SCRIPT).splitlines()) if r]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [2, 4, 6, 8, 10]
    # Each step slept 2 ms (on unix sleep_ms waits for the ms tick to move on twice, so as
    # little as 1 ms). With the 100 ms evaluations counted, the step lines after them would
    # say at least 50 ms; 40 leaves room for a slow, shared machine.
    assert all(1 <= r["dt_ms"] < 40 for r in steps), steps
    assert all(r["perf"] > 0 for r in steps)
    assert records[-1]["kind"] == "done" and records[-1]["t"] >= 0.4  # t is wall time
    assert records[0]["clock"] == records[-1]["clock"] == CLOCK[target.name]
