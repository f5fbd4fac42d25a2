# Train a small network on scikit-learn's digits (real 8x8 handwriting) on the board.
#
#   python -m mcutrain.digits data/          # on the host: data/digits_{train,test}.u8
#   mpremote mount data run examples/train_digits.py
#
# The settings below choose the model and the run; the last line printed is a JSON summary.
import gc
import json
import struct

import mcutrain as mt

MODEL = "mlp"      # "mlp" (64-32-10) or "cnn" (two 3x3 convs, max pooling, a linear head)
DTYPE = "float32"  # "float32", "float16", "int8" (fully quantized) or "mixed" (int8 forward, fp32 backward)
EPOCHS = 10 if MODEL == "mlp" else 6
BATCH = 1          # samples per training step (the last few of an epoch that fill no batch wait)
# int8 and mixed layers train with plain SGD: ten times the rate gives momentum 0.9's step size.
# The loss is the batch's mean, so the rate grows with BATCH to keep the step per sample.
MOMENTUM = 0.0 if DTYPE in ("int8", "mixed") else 0.9
LR = (0.01 if MODEL == "mlp" else 0.005) * (10 if MOMENTUM == 0.0 else 1) * BATCH
DECAY = 0.8 if MODEL == "mlp" else 0.7   # the learning rate shrinks by this factor each epoch
SEED = 1
DATA = "/remote"   # where digits_train.u8 and digits_test.u8 are (mpremote mount puts them here)
PRETRAINED = None  # an .mtm to fine-tune (python -m mcutrain.pretrain), instead of MODEL
UPDATE = None      # None: full update; a policy, e.g. mt.TopK(0.1) or mt.ChannelRatio(0.25); a dict of
                   # them by layer name; or a function of the model giving one (e.g. top-k on the convolutions)


def load(name):
    with open(DATA + "/" + name, "rb") as f:
        data = f.read()
    if data[:4] != b"DIG1":
        raise ValueError(name + " is not a digits file")
    n = struct.unpack("<H", data[4:6])[0]
    if len(data) != 6 + 65 * n:
        raise ValueError(name + " is truncated")
    return memoryview(data)[6:6 + 64 * n], memoryview(data)[6 + 64 * n:], n


def build(kind, dtype):
    # float16 and int8 models take float32 pixels through a Convert layer (mixed layers take
    # and give float32).
    first = [] if dtype in ("float32", "mixed") else [mt.Convert(dtype)]
    if kind == "mlp":
        return mt.Sequential(*first, mt.Flatten(), mt.Linear(64, 32, dtype=dtype), mt.ReLU(),
                             mt.Linear(32, 10, dtype=dtype))
    return mt.Sequential(
        *first, mt.Conv2d(1, 8, 3, padding=1, dtype=dtype), mt.ReLU(), mt.MaxPool2d(2),
        mt.Conv2d(8, 16, 3, padding=1, dtype=dtype), mt.ReLU(), mt.MaxPool2d(2),
        mt.Flatten(), mt.Linear(64, 10, dtype=dtype))


def accuracy(model, x, pixels, labels, n):
    correct = 0
    for i in range(n):
        x.copy_from(pixels[64 * i:64 * i + 64], scale=1 / 16)
        out = model.predict(x)  # float32, float16 or int8 logits: the argmax is the same
        best = 0
        for c in range(1, 10):
            if out[0][c] > out[0][best]:
                best = c
        correct += best == labels[i]
    return correct / n


train_px, train_y, n_train = load("digits_train.u8")
test_px, test_y, n_test = load("digits_test.u8")
mt.seed(SEED)
model = mt.load(PRETRAINED) if PRETRAINED else build(MODEL, DTYPE)
update = UPDATE(model) if callable(UPDATE) else UPDATE
if DTYPE in ("int8", "mixed"):  # stochastic rounding keeps updates under half an int8 step
    opt = mt.SGD(model, lr=LR, update=update, rounding="stochastic")
else:
    opt = mt.SGD(model, lr=LR, momentum=MOMENTUM, update=update)
backward_macs = full_backward_macs = 0
x = mt.zeros((1, 8, 8, 1))
# A batch is one float buffer; each sample is copied into its own view of it.
batch = bytearray(4 * 64 * BATCH)
xb = mt.frombuffer(batch, (BATCH, 8, 8, 1))
rows = [mt.frombuffer(memoryview(batch)[256 * b:256 * (b + 1)], (1, 8, 8, 1)) for b in range(BATCH)]
labels = [0] * BATCH
order = list(range(n_train))
state = SEED
step_instructions = 0
for epoch in range(EPOCHS):
    opt.lr = LR * DECAY ** epoch
    for i in range(n_train - 1, 0, -1):  # Fisher-Yates with a fixed LCG: same seed, same run
        state = (state * 1103515245 + 12345) & 0x7fffffff
        j = state % (i + 1)
        order[i], order[j] = order[j], order[i]
    total = 0.0
    for first in range(0, n_train - BATCH + 1, BATCH):
        for b in range(BATCH):
            k = order[first + b]
            rows[b].copy_from(train_px[64 * k:64 * k + 64], scale=1 / 16)
            labels[b] = train_y[k]
        t0 = mt.perf_counter()
        total += BATCH * model.train_step(xb, labels if BATCH > 1 else labels[0], mt.cross_entropy, opt)
        step_instructions = mt.perf_counter() - t0
        if UPDATE is not None:
            stats = model.update_stats()
            backward_macs += stats["backward_macs"]
            full_backward_macs += stats["full_backward_macs"]
    gc.collect()
    print("epoch", epoch + 1, "loss", total / (n_train - n_train % BATCH))

step_ram = model.memory()["total"]  # planned for a training batch (evaluation plans for one sample)
summary = {
    "model": MODEL, "dtype": DTYPE, "epochs": EPOCHS, "batch": BATCH, "seed": SEED,
    "train_accuracy": accuracy(model, x, train_px, train_y, n_train),
    "test_accuracy": accuracy(model, x, test_px, test_y, n_test),
    "step_instructions": step_instructions, "peak_ram_bytes": step_ram,
}
if UPDATE is not None:
    summary["update"] = repr(update)
    summary["backward_mac_fraction"] = backward_macs / full_backward_macs
print(json.dumps(summary))
