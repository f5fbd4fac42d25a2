# Training metrics as JSON lines on stdout, each behind a fixed prefix:
#     @mt {"kind": "step", "epoch": 0, "step": 12, "loss": 0.53, "t": 1.25, "dt_ms": 9.8}
# `mcutrain run --collect DIR` shows them as live progress and writes DIR/results.jsonl and
# results.csv; everything else a script prints passes through untouched.
import json
import sys
import time

PREFIX = "@mt "


def report(**fields):
    """Write one metrics line. Field names are free; the host plots `loss`, `accuracy` and
    `dt_ms` against `step` (or `epoch`)."""
    out = sys.stdout
    out.write(PREFIX)
    json.dump(fields, out)  # streams to stdout: no string of the whole line
    out.write("\n")


class Metrics:
    """Step and epoch records with times measured on the board.

        m = Metrics(every=10)          # a step line every 10 steps
        for epoch in range(3):
            for x, y in batches:
                m.step(model.train_step(x, y, mt.cross_entropy, opt))
            val_loss, val_acc = evaluate(model, test)
            m.epoch(loss=val_loss, accuracy=val_acc)
        m.done()

    `t` is seconds since the Metrics was made. `dt_ms` is the mean time per training step since
    the last step line: the time between step() calls, with the clock restarted after each
    line written and by epoch(), so evaluating before epoch() (or inside `with m.paused():`
    in mid-epoch) and writing the lines themselves do not count. `perf=True` adds `perf`, the
    mean mt.perf_counter() ticks per step on the same clock (exact instructions on the
    emulated boards; read every step, an int: it allocates on 32-bit boards).

    The start line (written when `info` is given) and the done line say `clock`: "emulated"
    on a board whose time is QEMU's instruction count (1 instruction = 1 ns), else "real".
    Early halting (mcutrain.halting): with skip=SampleSkip(...), step, epoch and done lines
    carry `skipped` and `skip_fraction`; with stop=EarlyStop(...), epoch and done lines carry
    `stop` (the reason, or null), `best`, `best_evaluation` and `evaluations`.

    Every loss given to step() also goes to a DivergenceWatch (mcutrain.divergence; `watch`,
    or watch=None for none): once a loss is not finite or the recent losses rise far above
    the run's best level, the next lines (the step line at once, whatever `every`) carry
    `diverged` (the step) and `divergence` (why), and the done line says `diverged` (the step
    or null).
    """

    def __init__(self, every=1, perf=False, skip=None, stop=None, watch=True, **info):
        self.every = max(1, every)
        self.skip = skip
        self.stop = stop
        if watch is True:
            from .divergence import DivergenceWatch

            watch = DivergenceWatch()
        self.watch = watch or None
        self.epoch_index = 0
        self.steps = 0
        self._since = 0
        self._elapsed_us = 0
        self._step_us = 0
        self._last = time.ticks_us()
        self._clock = self._last
        self._perf = None
        self._step_perf = 0
        if perf:
            from _mcutrain import perf_counter

            self._perf = perf_counter
            self._perf_clock = perf_counter()
        if info:
            info.setdefault("clock", clock())
            report(kind="start", **info)
        self._restart()

    def _now(self):
        # Accumulate ticks differences: ticks_us() itself wraps after ~18 minutes.
        now = time.ticks_us()
        self._elapsed_us += time.ticks_diff(now, self._last)
        self._last = now
        return self._elapsed_us

    def _restart(self):
        """Restart the step clock: the time since the last step is not a step's."""
        self._clock = time.ticks_us()
        if self._perf is not None:
            self._perf_clock = self._perf()

    @property
    def elapsed(self):
        """Seconds since this Metrics was made."""
        return self._now() / 1e6

    def step(self, loss=None, accuracy=None, **extra):
        """Count one training step (the time since the previous one); write a line every
        `every` steps."""
        now = time.ticks_us()
        self._step_us += time.ticks_diff(now, self._clock)
        self._clock = now
        if self._perf is not None:
            p = self._perf()
            self._step_perf += p - self._perf_clock
            self._perf_clock = p
        self.steps += 1
        self._since += 1
        flagged = self.watch is not None and loss is not None and self.watch.step(loss)
        if self.steps % self.every and not flagged:
            return
        fields = {"kind": "step", "epoch": self.epoch_index, "step": self.steps}
        if loss is not None:
            fields["loss"] = loss
        if accuracy is not None:
            fields["accuracy"] = accuracy
        fields["t"] = self._now() / 1e6
        fields["dt_ms"] = self._step_us / 1000 / self._since
        if self._perf is not None:
            fields["perf"] = self._step_perf // self._since
            self._step_perf = 0
        self._step_us = 0
        self._since = 0
        if self.skip is not None:
            fields.update(self.skip.fields())
        if self.watch is not None:
            fields.update(self.watch.fields())
        fields.update(extra)
        report(**fields)
        self._restart()

    def paused(self):
        """`with m.paused(): ...` around work between steps that is not training (evaluating
        mid-epoch, saving): it does not count in the next step's time."""
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._restart()
        return False

    def _halting(self, fields):
        # The halting fields, then the caller's (which win on a clash).
        out = {}
        for h in (self.skip, self.stop, self.watch):
            if h is not None:
                out.update(h.fields())
        out.update(fields)
        return out

    def epoch(self, **fields):
        """End an epoch: a line with its number, the steps so far, and `fields` (for
        example validation loss and accuracy). Time since the last step (evaluation) is not
        step time."""
        report(kind="epoch", epoch=self.epoch_index, step=self.steps, t=self.elapsed,
               **self._halting(fields))
        self.epoch_index += 1
        self._restart()

    def done(self, **fields):
        """The final line: total steps and time, plus `fields`."""
        fields.setdefault("clock", clock())
        if self.watch is not None:
            fields.setdefault("diverged", self.watch.diverged)
        report(kind="done", epoch=self.epoch_index, step=self.steps, t=self.elapsed,
               **self._halting(fields))


def clock():
    """"emulated" where time is QEMU's instruction count (-icount shift=0: 1 ns each), else
    "real"."""
    try:
        from _mcutrain import PERF_UNIT
    except ImportError:
        return "real"
    return "emulated" if PERF_UNIT == "instructions" else "real"
