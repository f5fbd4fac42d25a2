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
            m.epoch(loss=val_loss, accuracy=val_acc)
        m.done()

    `t` is seconds since the Metrics was made, `dt_ms` the mean time per step since the last
    step line. `perf=True` adds `perf`, the mean mt.perf_counter() ticks per step (exact
    instructions on the emulated boards; an int, so it allocates on 32-bit boards).
    Early halting (mcutrain.halting): with skip=SampleSkip(...), step, epoch and done lines
    carry `skipped` and `skip_fraction`; with stop=EarlyStop(...), epoch and done lines carry
    `stop` (the reason, or null), `best`, `best_evaluation` and `evaluations`.
    """

    def __init__(self, every=1, perf=False, skip=None, stop=None, **info):
        self.every = max(1, every)
        self.skip = skip
        self.stop = stop
        self.epoch_index = 0
        self.steps = 0
        self._since = 0
        self._elapsed_us = 0
        self._mark_us = 0
        self._last = time.ticks_us()
        self._perf = None
        if perf:
            from _mcutrain import perf_counter

            self._perf = perf_counter
            self._perf_mark = perf_counter()
        if info:
            report(kind="start", **info)

    def _now(self):
        # Accumulate ticks differences: ticks_us() itself wraps after ~18 minutes.
        now = time.ticks_us()
        self._elapsed_us += time.ticks_diff(now, self._last)
        self._last = now
        return self._elapsed_us

    @property
    def elapsed(self):
        """Seconds since this Metrics was made."""
        return self._now() / 1e6

    def step(self, loss=None, accuracy=None, **extra):
        """Count one training step; write a line every `every` steps."""
        self.steps += 1
        self._since += 1
        if self.steps % self.every:
            return
        us = self._now()
        fields = {"kind": "step", "epoch": self.epoch_index, "step": self.steps}
        if loss is not None:
            fields["loss"] = loss
        if accuracy is not None:
            fields["accuracy"] = accuracy
        fields["t"] = us / 1e6
        fields["dt_ms"] = (us - self._mark_us) / 1000 / self._since
        if self._perf is not None:
            now = self._perf()
            fields["perf"] = (now - self._perf_mark) // self._since
            self._perf_mark = now
        self._mark_us = us
        self._since = 0
        if self.skip is not None:
            fields.update(self.skip.fields())
        fields.update(extra)
        report(**fields)

    def _halting(self, fields):
        # The halting fields, then the caller's (which win on a clash).
        out = {}
        for h in (self.skip, self.stop):
            if h is not None:
                out.update(h.fields())
        out.update(fields)
        return out

    def epoch(self, **fields):
        """End an epoch: a line with its number, the steps so far, and `fields` (for
        example validation loss and accuracy)."""
        report(kind="epoch", epoch=self.epoch_index, step=self.steps, t=self.elapsed,
               **self._halting(fields))
        self.epoch_index += 1

    def done(self, **fields):
        """The final line: total steps and time, plus `fields`."""
        report(kind="done", epoch=self.epoch_index, step=self.steps, t=self.elapsed,
               **self._halting(fields))
