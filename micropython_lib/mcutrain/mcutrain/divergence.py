# Telling a diverging run from a noisy one, from its training losses alone (our rule; the
# papers give none). The first `warmup` losses set the run's starting level L0 (an untrained
# classifier's loss: about ln(classes)); after them a moving average over about 100 steps
# says where the run is. Per-sample losses swing by 50x in healthy runs (hard samples after a
# stretch of easy ones), so single steps and short averages say nothing; the long average
# does. The run is diverging when
#   - a loss is not finite;
#   - the average climbs above `explode` x L0 (the weights blowing up); or
#   - the run had learned (its average fell below L0 / 4) and the average climbs back above
#     `relapse` x L0: a collapse to chance.
# On the digits CNN (8,628 batch-1 steps, float32 and int8) the average never came back above
# 0.27 x L0 once learned; an int8 run whose loss blew up was flagged after 193 steps.
import math

LONG = 0.99      # momentum of the average (about 100 steps)
LEARNED = 0.25   # below this fraction of L0 the run counts as having learned


class DivergenceWatch:
    """Feed it each step's loss (`step(loss)`); `diverged` is then None, or the step at
    which the run was first found diverging, with the reason in `reason`. `fields()` gives
    the metrics fields (`diverged`, `divergence`) once that happened."""

    def __init__(self, warmup=50, explode=2.0, relapse=0.75):
        if warmup < 1 or not explode > 1.0 or not 0.0 < relapse < 1.0:
            raise ValueError("DivergenceWatch: warmup >= 1, explode > 1 and 0 < relapse < 1")
        self.warmup = warmup
        self.explode = explode
        self.relapse = relapse
        self.steps = 0
        self.start = None   # L0
        self.average = 0.0  # the first warmup losses' sum, then the moving average
        self.best = None
        self.diverged = None
        self.reason = None

    def step(self, loss):
        """Observe one step's loss; True the first time the run is found diverging."""
        self.steps += 1
        if self.diverged is not None:
            return False
        if not math.isfinite(loss):
            return self._flag("loss is %r" % (loss,))
        if self.start is None:
            self.average += loss
            if self.steps == self.warmup:
                self.start = self.best = self.average = self.average / self.warmup
            return False
        self.average = LONG * self.average + (1 - LONG) * loss
        self.best = min(self.best, self.average)
        if self.average > self.explode * self.start:
            return self._flag("loss averages %.4g, %.1fx its start %.4g" % (
                self.average, self.average / self.start, self.start))
        if self.best < LEARNED * self.start and self.average > self.relapse * self.start:
            return self._flag("loss averages %.4g, back from %.4g to near its start %.4g" % (
                self.average, self.best, self.start))
        return False

    def _flag(self, reason):
        self.diverged = self.steps
        self.reason = reason
        return True

    def fields(self):
        if self.diverged is None:
            return {}
        return {"diverged": self.diverged, "divergence": self.reason}
