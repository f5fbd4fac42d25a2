# Train a small CNN on a Fashion-MNIST subset (real photos of clothing, ten classes) on the board.
#
#   python -m mcutrain.fashion data/          # on the host: data/fashion_{train,test}.u8
#   mpremote mount data run examples/train_fashion.py
#
# The files (590 KB + 200 KB by default) are larger than the board's RAM, so samples are read
# one at a time. Reading through `mpremote mount` costs a UART round trip per sample, so the
# script first copies the files to the board's flash (once: a copy that is still current is
# kept) and reads them from there, as a real board would read a dataset stored in flash.
# The settings below choose the run; the last line printed is a JSON summary.
import gc
import json
import os
import struct

import mcutrain as mt

DTYPE = "float32"  # "float32", "float16", "int8" (fully quantized) or "mixed" (int8 forward, fp32 backward)
EPOCHS = 8
BATCH = 4          # samples per training step (the last few of an epoch that fill no batch wait)
# int8 and mixed layers train with plain SGD: ten times the rate gives momentum 0.9's step size.
# The loss is the batch's mean, so the rate grows with BATCH to keep the step per sample.
MOMENTUM = 0.0 if DTYPE in ("int8", "mixed") else 0.9
LR = 0.003 * (10 if MOMENTUM == 0.0 else 1) * BATCH
DECAY = 0.8        # the learning rate shrinks by this factor each epoch
SEED = 1
UPDATE = None      # None: full update; a policy (mt.TopK(0.1, 0.5), ...), a dict of them by layer
                   # name, or a function of the model giving one (e.g. top-k on the convolutions)
N_TRAIN = None     # None: every training sample in the file; or the first N_TRAIN of them
N_TEST = None      # the same for the test file
TRAIN_EVAL = 1000  # training samples the final train accuracy is measured on
DATA = "/remote"   # where fashion_train.u8 and fashion_test.u8 are (mpremote mount puts them here)
CACHE = "/flash"   # where to keep a copy of them; None (or no such directory): read DATA directly

HEADER = 12  # b"FSH1", uint16 n, uint8 h, uint8 w, uint32 CRC-32 (mcutrain.fashion)


def cached(name):
    """The path to read `name` from: a current copy in CACHE, made first if needed."""
    src = DATA + "/" + name
    try:
        os.stat(CACHE)
    except (OSError, TypeError):
        return src
    dst = CACHE + "/" + name
    with open(src, "rb") as f:
        head = f.read(HEADER)
    size = os.stat(src)[6]
    try:
        with open(dst, "rb") as f:
            if f.read(HEADER) == head and os.stat(dst)[6] == size:
                return dst
    except OSError:
        pass
    buf = bytearray(4096)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while True:
            k = fin.readinto(buf)
            if not k:
                break
            fout.write(memoryview(buf)[:k])
    if os.stat(dst)[6] != size:
        raise OSError("copying " + name + " to " + CACHE + " stopped short")
    return dst


class Samples:
    """One fashion file, read a sample at a time: images stay in the file, labels in RAM."""

    def __init__(self, name, limit):
        self.f = open(cached(name), "rb")
        head = self.f.read(HEADER)
        if head[:4] != b"FSH1":
            raise ValueError(name + " is not a fashion file")
        n, self.h, self.w = struct.unpack("<HBB", head[4:8])
        self.size = self.h * self.w
        self.f.seek(0, 2)
        if self.f.tell() != HEADER + n * (self.size + 1):
            raise ValueError(name + " is truncated")
        self.f.seek(HEADER + n * self.size)
        self.labels = self.f.read(n)
        self.n = n if limit is None else min(n, limit)
        self.pixels = bytearray(self.size)

    def load(self, x, k):
        """Sample k's pixels into x (scaled to 0..1); its label."""
        self.f.seek(HEADER + k * self.size)
        self.f.readinto(self.pixels)
        x.copy_from(self.pixels, scale=1 / 255)
        return self.labels[k]


def build(h, w, dtype):
    # float16 and int8 models take float32 pixels through a Convert layer; mixed layers take
    # and give float32 themselves.
    first = [] if dtype in ("float32", "mixed") else [mt.Convert(dtype)]
    return mt.Sequential(
        *first, mt.Conv2d(1, 8, 3, padding=1, dtype=dtype), mt.ReLU(), mt.MaxPool2d(2),
        mt.Conv2d(8, 16, 3, padding=1, dtype=dtype), mt.ReLU(), mt.MaxPool2d(2),
        mt.Flatten(), mt.Linear(16 * (h // 4) * (w // 4), 10, dtype=dtype))


def accuracy(model, x, data, n):
    correct = 0
    for k in range(n):
        label = data.load(x, k)
        out = model.predict(x)  # float32, float16 or int8 logits: the argmax is the same
        best = 0
        for c in range(1, 10):
            if out[0][c] > out[0][best]:
                best = c
        correct += best == label
    return correct / n


start = mt.perf_counter()
train = Samples("fashion_train.u8", N_TRAIN)
test = Samples("fashion_test.u8", N_TEST)
mt.seed(SEED)
model = build(train.h, train.w, DTYPE)
update = UPDATE(model) if callable(UPDATE) else UPDATE
if DTYPE in ("int8", "mixed"):  # stochastic rounding keeps updates under half an int8 step
    opt = mt.SGD(model, lr=LR, rounding="stochastic", update=update)
else:
    opt = mt.SGD(model, lr=LR, momentum=MOMENTUM, update=update)
backward_macs = full_backward_macs = 0
x = mt.zeros((1, train.h, train.w, 1))
# A batch is one float buffer; each sample is read into its own view of it.
batch = bytearray(4 * BATCH * train.size)
xb = mt.frombuffer(batch, (BATCH, train.h, train.w, 1))
rows = [mt.frombuffer(memoryview(batch)[4 * train.size * b:4 * train.size * (b + 1)], (1, train.h, train.w, 1))
        for b in range(BATCH)]
labels = [0] * BATCH
order = list(range(train.n))
state = SEED
step_instructions = 0
for epoch in range(EPOCHS):
    opt.lr = LR * DECAY ** epoch
    for i in range(train.n - 1, 0, -1):  # Fisher-Yates with a fixed LCG: same seed, same run
        state = (state * 1103515245 + 12345) & 0x7fffffff
        j = state % (i + 1)
        order[i], order[j] = order[j], order[i]
    total = 0.0
    for first in range(0, train.n - BATCH + 1, BATCH):
        for b in range(BATCH):
            labels[b] = train.load(rows[b], order[first + b])
        t0 = mt.perf_counter()
        total += BATCH * model.train_step(xb, labels if BATCH > 1 else labels[0], mt.cross_entropy, opt)
        step_instructions = mt.perf_counter() - t0
        if update is not None:
            stats = model.update_stats()
            backward_macs += stats["backward_macs"]
            full_backward_macs += stats["full_backward_macs"]
    gc.collect()
    print("epoch", epoch + 1, "loss", total / (train.n - train.n % BATCH))

step_ram = model.memory()["total"]  # planned for a training batch (evaluation plans for one sample)
summary = {
    "model": "fashion_cnn", "dtype": DTYPE, "epochs": EPOCHS, "batch": BATCH, "seed": SEED,
    "n_train": train.n, "n_test": test.n, "image": [train.h, train.w],
    "train_accuracy": accuracy(model, x, train, min(train.n, TRAIN_EVAL)),
    "test_accuracy": accuracy(model, x, test, test.n),
    "step_instructions": step_instructions, "peak_ram_bytes": step_ram,
}
if update is not None:
    summary["update"] = repr(update)
    summary["backward_mac_fraction"] = backward_macs / full_backward_macs
summary["run_instructions"] = mt.perf_counter() - start  # copying to flash included
print(json.dumps(summary))
