# Early halting (issue 18; after Mishra & Gupta, arXiv 2209.15560, whose exact rule is not
# available to us: this rule is our own design, documented in docs/device-api.md).
#   per sample: SampleSkip skips the backward pass of a sample whose loss is already below
#               a running quantile of the recent losses (the forward and loss still run);
#   per run:    EarlyStop ends a run when a held-out metric stops improving (no new best
#               for `patience` evaluations, or the mean of the last `window` evaluations no
#               better than the mean of the `window` before) or a budget (mt.perf_counter()
#               units, or seconds) is spent, and says why.
import math
import time


class RunningQuantile:
    """The q-quantile of a stream of positive values (losses), tracked in O(1) memory.

    A stochastic-approximation quantile (Robbins & Monro) in log space: the estimate is
    multiplied by exp(rate*q) after a value at or above it and by exp(-rate*(1-q)) after
    one below, so it settles where a fraction q of the values lie below it. Working on
    log values makes the step relative (no loss scale to choose: losses span decades over
    a run) and the constant step keeps tracking the losses as they fall, about the last
    1/rate values weighing in. Starts at the first value; values <= 0 count as below.
    """

    def __init__(self, q=0.5, rate=0.05):
        if not 0 < q < 1:
            raise ValueError("q must be in (0, 1)")
        if not 0 < rate <= 1:
            raise ValueError("rate must be in (0, 1]")
        self.q = q
        self.rate = rate
        self._up = math.exp(rate * q)
        self._down = math.exp(-rate * (1 - q))
        self.value = None  # the estimate; None before the first value
        self.count = 0

    def update(self, x):
        """Take one value; returns the new estimate."""
        v = self.value
        if v is None:
            v = x if x > 0 else 1e-30
        elif x < v:
            v *= self._down
        else:
            v *= self._up
        self.value = v
        self.count += 1
        return v


class SampleSkip:
    """Per-sample early halting: skip the backward pass (and update) of a sample whose loss
    is already below the q-quantile of the recent losses.

        skip = mt.SampleSkip(q=0.3, warmup=100, max_skip=0.5)
        for x, y, t in ds.batches(1, shuffle=True):
            skip.step(model, x, (y, t), loss, opt)
        print(skip.skipped, skip.fraction)

    step() is model.train_step(..., skip_below=threshold()): one forward, the loss, then the
    backward pass only when the sample is not skipped, allocating nothing on the boards.
    The first `warmup` steps never skip; no step skips that would take the skipped share
    above `max_skip` (0 disables skipping: every step is exactly train_step). Every loss,
    skipped or not, updates the quantile. With a batch, the batch's mean loss decides for
    the whole batch. Deterministic: the same losses give the same decisions.
    """

    def __init__(self, q=0.3, warmup=100, max_skip=0.5, rate=0.05):
        if not 0 <= max_skip <= 1:
            raise ValueError("max_skip must be in [0, 1]")
        if warmup < 0:
            raise ValueError("warmup must be >= 0")
        self.quantile = RunningQuantile(q, rate)
        self.warmup = warmup
        self.max_skip = max_skip
        self.seen = 0
        self.skipped = 0

    def threshold(self):
        """The next step's skip_below: the quantile, or None (warm-up, or at the cap)."""
        if self.seen < self.warmup or self.skipped + 1 > self.max_skip * (self.seen + 1):
            return None
        return self.quantile.value

    def step(self, model, x, y, loss, opt):
        """One training step that may skip its backward pass; returns the loss."""
        below = self.threshold()
        value = model.train_step(x, y, loss, opt, skip_below=below)
        self.seen += 1
        if below is not None and value < below:  # exactly train_step's test
            self.skipped += 1
        self.quantile.update(value)
        return value

    @property
    def fraction(self):
        """The share of steps skipped so far."""
        return self.skipped / self.seen if self.seen else 0.0

    def fields(self):
        """For metrics lines: skipped and skip_fraction."""
        return {"skipped": self.skipped, "skip_fraction": self.fraction}


STOP_REASONS = ("patience", "trend", "budget", "time")


class EarlyStop:
    """Per-run early halting: stop when a held-out metric has not improved for `patience`
    evaluations, or its trend over a `window` has flattened, or when a budget is spent.

        stop = mt.EarlyStop(patience=3, mode="max", budget=50_000_000)
        for epoch in range(EPOCHS):
            for x, y in ds.batches(1):
                model.train_step(x, y, loss, opt)
                if stop.spent():          # budgets, between steps
                    break
            if stop.spent() or stop.update(val_accuracy):
                break
        print(stop.reason)                # "patience", "trend", "budget", "time" or None

    mode "max" (accuracy) or "min" (loss); an evaluation improves on the best by more than
    min_delta, or counts towards patience (None: never stop on the metric). window: once
    2*window evaluations are in, stop ("trend") when the mean of the last `window` is not
    better than the mean of the `window` before by more than min_delta (None: no trend
    rule). A trend is steadier than a best value on a noisy metric: one lucky evaluation
    early in a run resets no counter. budget is in
    mt.perf_counter() units (instructions on the emulated boards, ns on unix) and seconds
    in wall time, both counted from when the EarlyStop is made (or from reset()).
    spent() reads mt.perf_counter(), an int that outgrows a small int on 32-bit boards
    after about 2**30 counts: it allocates a little there, so check every few steps.
    """

    def __init__(self, patience=3, min_delta=0.0, mode="max", budget=None, seconds=None, window=None):
        if mode not in ("max", "min"):
            raise ValueError("mode must be 'max' or 'min'")
        if patience is not None and patience < 1:
            raise ValueError("patience must be >= 1 (or None)")
        if window is not None and window < 1:
            raise ValueError("window must be >= 1 (or None)")
        if min_delta < 0:
            raise ValueError("min_delta must be >= 0")
        self.patience = patience
        self.window = window
        self.min_delta = min_delta
        self.mode = mode
        self.budget = budget
        self.seconds = seconds
        self.reset()

    def reset(self):
        """Start again: no best, no reason, the budgets counted from now."""
        from _mcutrain import perf_counter

        self.best = None
        self.best_evaluation = 0  # which evaluation (1-based) gave the best
        self.evaluations = 0
        self.since_best = 0
        self.reason = None
        self._recent = []  # the last 2*window evaluations, oldest first
        self._perf = perf_counter
        self._perf0 = perf_counter()
        self._t0 = time.ticks_ms()

    def update(self, metric):
        """Record one held-out evaluation; True when the run should stop (see reason)."""
        self.evaluations += 1
        best = self.best
        if best is None or (metric > best + self.min_delta if self.mode == "max"
                            else metric < best - self.min_delta):
            self.best = metric
            self.best_evaluation = self.evaluations
            self.since_best = 0
        else:
            self.since_best += 1
            if self.reason is None and self.patience is not None and self.since_best >= self.patience:
                self.reason = "patience"
        w = self.window
        if w is not None:
            recent = self._recent
            recent.append(metric)
            if len(recent) > 2 * w:
                recent.pop(0)
            if self.reason is None and len(recent) == 2 * w:
                gain = (sum(recent[w:]) - sum(recent[:w])) / w
                if (gain if self.mode == "max" else -gain) <= self.min_delta:
                    self.reason = "trend"
        return self.spent()

    def spent(self):
        """Whether the run should stop: a budget is spent, or update() said so."""
        if self.reason is None:
            if self.budget is not None and self._perf() - self._perf0 >= self.budget:
                self.reason = "budget"
            elif self.seconds is not None and \
                    time.ticks_diff(time.ticks_ms(), self._t0) >= self.seconds * 1000:
                self.reason = "time"
        return self.reason is not None

    def fields(self):
        """For metrics lines: stop (the reason, or None), best, best_evaluation, evaluations."""
        return {"stop": self.reason, "best": self.best, "best_evaluation": self.best_evaluation,
                "evaluations": self.evaluations}
