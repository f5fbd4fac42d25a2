"""mcutrain.divergence on the boards: a run whose losses are not finite or rise far above
their best level is flagged in the metrics lines and fit()'s history; noisy healthy runs,
and losses that only start high, are not."""

from __future__ import annotations

import json

import pytest
from mcutrain.collect import parse_metrics_line
from mcutrain.runner import run_on

WATCH = """
import mcutrain as mt
def run(losses, **kw):
    w = mt.DivergenceWatch(**kw)
    first = None
    for i, v in enumerate(losses):
        if w.step(v) and first is None:
            first = i + 1
    return w.diverged, first
# Healthy: learns, with bursts of hard samples 50x the typical loss.
noisy = [2.3 * 0.97 ** i + 0.01 + (0.5 if i % 40 < 3 else 0.0) for i in range(600)]
stuck = [2.3 + (0.3 if i % 5 == 0 else -0.1) for i in range(600)]  # never learns: not diverging
collapse = [2.3 * 0.98 ** i + 0.05 for i in range(300)] + [2.3] * 200
explode = [2.3 * 0.98 ** i + 0.05 for i in range(100)] + [0.05 * 1.2 ** i for i in range(100)]
print(json.dumps({
    "noisy": run(noisy), "stuck": run(stuck), "collapse": run(collapse), "explode": run(explode),
    "nan": run([1.0, 0.9, float("nan"), 0.5]), "inf": run([1.0, float("inf")]),
    "early": run([50.0, 2.0, 1.0, 40.0, 1.0]),
}))
"""


def test_divergence_watch_flags_collapse_and_non_finite_losses_only(target):
    got = json.loads(run_on(target, "import json\n" + WATCH).strip().splitlines()[-1])
    assert got["noisy"] == [None, None] and got["stuck"] == [None, None]
    step, first = got["collapse"]
    assert step == first and 300 < step <= 400  # within 100 steps of the collapse at 301
    step, first = got["explode"]
    assert step == first and 100 < step <= 150
    assert got["nan"] == [3, 3] and got["inf"] == [2, 2]
    assert got["early"] == [None, None]  # before the warm-up only non-finite losses count


def test_divergence_watch_refuses_bad_settings(target):
    out = run_on(target, """
import mcutrain as mt
for kw in ({'explode': 1.0}, {'warmup': 0}, {'relapse': 1.0}):
    try:
        mt.DivergenceWatch(**kw)
        print('accepted', kw)
    except ValueError as e:
        print('ValueError', e)
""")
    assert out.count("ValueError") == 3 and "accepted" not in out


FIT = """
import mcutrain as mt
mt.seed(3)
model = mt.Sequential(mt.Linear(4, 3))
x = mt.zeros((60, 4)); x.fill(1.0)
y = [i % 3 for i in range(60)]
opt = mt.SGD(model, lr=0.05)
# The second epoch at lr: the weights blow up (or not) after a first epoch's warm-up.
h = mt.fit(model, (x, y), opt, epochs=2, schedule=lambda e: 0.05 if e == 0 else {lr},
           metrics=mt.Metrics(every=30))
print('history', h['diverged'])
"""


@pytest.mark.parametrize("lr, diverges", [(0.05, False), (1e4, True)])
def test_fit_reports_divergence_in_the_lines_and_the_history(target, lr, diverges):
    out = run_on(target, FIT.format(lr=lr))
    records = [r for r in map(parse_metrics_line, out.splitlines()) if r]
    done = [r for r in records if r["kind"] == "done"][-1]
    history = [line for line in out.splitlines() if line.startswith("history")][-1].split()[1]
    if diverges:
        assert isinstance(done["diverged"], int) and history == str(done["diverged"])
        flagged = [r for r in records if r["kind"] == "step" and "diverged" in r]
        assert flagged and "divergence" in flagged[0] and flagged[0]["step"] == done["diverged"]
    else:
        assert done["diverged"] is None and history == "None"
        assert not any("diverged" in r for r in records if r["kind"] != "done")
