# mt.fit: the training loop the examples write by hand, for a Dataset or tensors in memory.
import gc

from _mcutrain import Tensor, cross_entropy, zeros

from .dataset import _permutation


def _argmax_hits(out, labels, rows):
    # How many of the first `rows` output rows have their largest value at the label.
    hits = 0
    for r in range(rows):
        row = out[r]
        best = 0
        for c in range(1, len(row)):
            if row[c] > row[best]:
                best = c
        hits += best == labels[r]
    return hits


class _Source:
    """Batches [x, y] (or [x, (y, t)] with teacher logits) from an mt.Dataset or from
    in-memory (x, y), x converted into a float32 buffer when the model takes float32 and the
    data is int8 or float16. The same Tensors and lists are refilled for every batch."""

    def __init__(self, data, batch, convert, teacher=True):
        self.batch = batch
        if isinstance(data, (tuple, list)):
            if len(data) != 2:
                raise ValueError("fit: in-memory data is a pair (x, y)")
            x, y = data
            if not isinstance(x, Tensor) or x.ndim < 2:
                raise TypeError("fit: x must be a Tensor (N, ...) of samples")
            if len(y) != x.shape[0]:
                raise ValueError("fit: x has %d samples but y has %d" % (x.shape[0], len(y)))
            self.ds = None
            self.x, self.y = x, y
            self.count = x.shape[0]
            self.shape = tuple(x.shape[1:])
            self.dtype = x.dtype
            self.scale, self.zero_point = x.scale, x.zero_point
            self.labels = not isinstance(y, Tensor)
            self.teacher = False
        else:
            if not hasattr(data, "batches"):
                raise TypeError("fit: data must be an mt.Dataset or a pair (x, y) of Tensors")
            self.ds = data
            self.count = len(data)
            self.shape = tuple(data.sample_shape)
            self.dtype = data.dtype
            self.scale, self.zero_point = data.scale, data.zero_point
            self.labels = data.label_dtype != "float32"
            # Teacher logits go with the labels (a distillation target) when the Dataset was
            # opened with teacher=True (only then do its batches carry them) and are wanted.
            self.teacher = teacher and getattr(data, "_teacher", False)
        if self.count == 0:
            raise ValueError("fit: no samples")
        self.convert = convert and self.dtype != "float32"
        self.xf = zeros((batch,) + self.shape) if self.convert else None
        if self.ds is None:
            # One batch buffer, refilled row by row (shuffled or not).
            self.xb = zeros((batch,) + self.shape, self.dtype)
            self.xb_mv = memoryview(self.xb)
            self.x_mv = memoryview(self.x)
            self.row = len(self.x_mv) // self.count
            self.yb = [0] * batch if self.labels else zeros((batch,) + tuple(self.y.shape[1:]))
            self.y_mv = None if self.labels else memoryview(self.y)
            self.yb_mv = None if self.labels else memoryview(self.yb)
            self.yrow = 0 if self.labels else len(self.y_mv) // self.count

    def batches(self, shuffle, seed):
        if self.ds is not None:
            for item in self.ds.batches(self.batch, shuffle=shuffle, seed=seed):
                x = item[0]
                n = x.shape[0]
                target = (item[1], item[2]) if self.teacher else item[1]
                yield self._input(x, n), target, n
            return
        # The same seeded permutation as mt.Dataset's shuffle: O(1) memory (no index list),
        # uniform over the samples, and the global random state left alone.
        perm = None
        if shuffle:
            if seed is None:
                import random

                seed = random.getrandbits(30)
            perm = _permutation(self.count, seed)
        for start in range(0, self.count, self.batch):
            n = min(self.batch, self.count - start)
            for r in range(n):
                i = perm(start + r) if perm else start + r
                self.xb_mv[r * self.row:(r + 1) * self.row] = self.x_mv[i * self.row:(i + 1) * self.row]
                if self.labels:
                    self.yb[r] = self.y[i]
                else:
                    self.yb_mv[r * self.yrow:(r + 1) * self.yrow] = self.y_mv[i * self.yrow:(i + 1) * self.yrow]
            x = self.xb if n == self.batch else _rows(self.xb, n)
            y = self.yb if n == self.batch else (self.yb[:n] if self.labels else _rows(self.yb, n))
            yield self._input(x, n), y, n

    def _input(self, x, n):
        if not self.convert:
            return x
        xf = self.xf if n == self.batch else _rows(self.xf, n)
        xf.copy_from(x, scale=self.scale, zero_point=self.zero_point) if self.dtype == "int8" \
            else xf.copy_from(x)
        return xf


def _rows(t, n):
    # The first n rows of t, as a view (the last, shorter batch).
    from _mcutrain import frombuffer

    mv = memoryview(t)
    per = len(mv) // t.shape[0]
    return frombuffer(mv[:n * per], (n,) + tuple(t.shape[1:]), t.dtype)


def evaluate(model, data, loss=cross_entropy, batch=32, convert=True):
    """(mean loss, accuracy or None) of model over data (an mt.Dataset or (x, y)), in
    batches of `batch` (an inference plan: no gradient memory; see Model.predict). A
    dataset's teacher logits are not used: the loss is against its labels."""
    src = _Source(data, batch, convert, teacher=False)
    if convert and src.convert and _takes_int8(model):
        src.convert, src.xf = False, None
    total = 0.0
    hits = 0
    for x, y, n in src.batches(False, None):
        value, acc = model.evaluate(x, y, loss)
        total += value * n
        if acc is not None:
            hits += round(acc * n)
    labels = src.labels
    return total / src.count, (hits / src.count if labels else None)


def fit(model, data, opt, loss=cross_entropy, epochs=1, batch=1, val=None, val_batch=32,
        schedule=None, checkpoint=None, monitor=None, metrics=None, skip=None, stop=None,
        shuffle=True, seed=None, convert=True, train_accuracy=True):
    """Train `model` on `data` (an mt.Dataset, or in-memory (x, y): x a Tensor (N, ...), y
    labels or a Tensor of targets) for `epochs`, in batches of `batch` with `opt` and `loss`.

    val: held-out data (same forms), evaluated after each epoch in batches of val_batch.
    schedule: the learning rate of each epoch, schedule(epoch) -> lr, or a number: opt.lr is
        multiplied by it after every epoch.
    checkpoint: a path: the model is saved there (mt.save, atomic) whenever `monitor` improves.
    monitor: "val_accuracy" (the default with val and labels), "val_loss", "accuracy" or
        "loss" (the default without val); stop's mode must match ("max" for accuracy).
    metrics: an mt.Metrics for the step/epoch/done lines (default: one that writes about ten
        step lines an epoch; False for none). skip (mt.SampleSkip) and stop (mt.EarlyStop)
        add early halting: skip per sample, stop on `monitor` or on its budgets.
    convert: int8/float16 samples go to a float32 buffer (with the data's scale) when the
        model's input is float32.
    Returns the history: {"loss", "accuracy", "val_loss", "val_accuracy"} lists per epoch,
    "epochs" run, "best" and "best_epoch" of `monitor`, "stop" (the reason, or None), and
    "diverged" (the step at which the losses were found diverging, mcutrain.divergence, or
    None; with metrics=False nothing is watched).
    """
    if epochs < 0 or batch < 1:
        raise ValueError("fit: epochs must be >= 0 and batch >= 1")
    src = _Source(data, batch, convert)
    if convert and src.convert and _takes_int8(model):
        src.convert, src.xf = False, None  # an int8 first layer takes the data's own samples
    classes = src.labels and (val is None or _Source(val, 1, False, teacher=False).labels)
    if monitor is None:
        monitor = ("val_accuracy" if classes else "val_loss") if val is not None else "loss"
    if monitor not in ("loss", "accuracy", "val_loss", "val_accuracy"):
        raise ValueError("fit: monitor is loss, accuracy, val_loss or val_accuracy, not %r" % (monitor,))
    higher = monitor.endswith("accuracy")
    if stop is not None and stop.mode != ("max" if higher else "min"):
        raise ValueError("fit: stop watches %s: give it mode=%r" % (monitor, "max" if higher else "min"))
    if metrics is None:
        from .metrics import Metrics

        steps = (src.count + batch - 1) // batch
        metrics = Metrics(every=max(1, steps // 10), skip=skip, stop=stop)
    history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": [], "epochs": 0,
               "best": None, "best_epoch": None, "stop": None}
    for epoch in range(epochs):
        if callable(schedule):
            opt.lr = schedule(epoch)
        elif schedule is not None and epoch:
            opt.lr = opt.lr * schedule
        total = 0.0
        hits = 0
        seen = 0
        halted = False
        epoch_seed = None if seed is None else seed + epoch
        for x, y, n in src.batches(shuffle, epoch_seed):
            if skip is not None:
                value = skip.step(model, x, y, loss, opt)
            else:
                value = model.train_step(x, y, loss, opt)
            total += value * n
            seen += n
            if train_accuracy and src.labels:
                hits += _argmax_hits(model.output, y[0] if src.teacher else y, n)
            if metrics:
                metrics.step(loss=value, accuracy=hits / seen if train_accuracy and src.labels else None)
            if stop is not None and stop.spent():
                halted = True
                break
        history["loss"].append(total / seen if seen else None)
        history["accuracy"].append(hits / seen if seen and train_accuracy and src.labels else None)
        val_loss = val_acc = None
        if val is not None:
            gc.collect()
            val_loss, val_acc = evaluate(model, val, cross_entropy if src.teacher else loss, val_batch, convert)
        history["val_loss"].append(val_loss)
        history["val_accuracy"].append(val_acc)
        history["epochs"] = epoch + 1
        score = history[monitor][-1]
        improved = score is not None and (history["best"] is None or
                                          (score > history["best"] if higher else score < history["best"]))
        if improved:
            history["best"], history["best_epoch"] = score, epoch + 1
            if checkpoint:
                from .model_io import save

                gc.collect()  # saving allocates the file's header: leave it whole blocks
                save(model, checkpoint)
        if stop is not None and not halted and score is not None:
            halted = stop.update(score)
        if metrics:
            metrics.epoch(loss=history["loss"][-1], val_loss=val_loss, val_accuracy=val_acc, lr=opt.lr)
        if halted:
            history["stop"] = stop.reason
            break
    watch = getattr(metrics, "watch", None) if metrics else None
    history["diverged"] = watch.diverged if watch is not None else None
    if metrics:
        metrics.done(epochs=history["epochs"], best=history["best"], best_epoch=history["best_epoch"])
    return history


def _takes_int8(model):
    first = model[0] if hasattr(model, "__len__") and len(model) else model
    return getattr(first, "dtype", None) == "int8" and type(first).__name__ != "Convert"
