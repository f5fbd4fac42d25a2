# Keyword spotting on the board: train a small DS-CNN ("Hello Edge" style, sized for a
# 256 KB-RAM MCU) on MFCC features (49 x 10) of 12 classes, evaluate on held-out voices.
#
#   mcutrain kws-dataset data/                      # on the host: SYNTHETIC speech (espeak-ng, flite)
#   mpremote mount data run examples/train_kws.py   # or: mcutrain run examples/train_kws.py --mount data
#
# `make demo` does all of this and collects the metrics lines (@mt ...) this script prints.
# DTYPE = "int8": the float32 model (PRETRAINED, or a fresh one) is quantized on the board
# (mt.quantize, calibrated on CALIBRATION training samples) and fine-tuned in int8 with plain
# SGD; `python -m mcutrain.demo --dtype int8` runs that (results in results/kws-int8/).
# Adaptation (what `make demo` runs): TRAIN = "kws_enroll.mtd", a few clips per class from
# voices the pretrained model never heard, with EVAL_BEFORE = True; kws_test.mtd then holds the
# rest of those voices' clips, and the final metrics carry accuracy_before and accuracy_after.
# The speech is synthetic: results say how well the model tells synthesized voices apart,
# not how it does on recorded speech.
import gc

import mcutrain as mt

EPOCHS = 4
LR = 0.02
MOMENTUM = 0.9
DECAY = 0.7              # the learning rate shrinks by this factor each epoch
DTYPE = "float32"        # or "int8": quantized on the board (see above), then fine-tuned in int8
CALIBRATION = 256        # int8: training samples whose ranges calibrate the quantized model
INT8_HEAD = None         # int8: classifier (and pooling, if it can) in int8; None: if AvgPool2d takes int8
UPDATE = None            # None: full update; a policy (e.g. mt.TopK(0.1, 0.5)), a dict of them by
                         # layer index, or a function of the (quantized) model giving one
PRETRAINED = None        # an .mtm to fine-tune (e.g. pretrained on the host), else from scratch
SAVE = "/flash/kws_dscnn.mtm"
DATA = "/remote"         # kws_train.mtd and kws_test.mtd (mpremote mount puts them here)
TRAIN = "kws_train.mtd"  # what to train on (in DATA, or a path from /); "kws_enroll.mtd": adapt
TEST = "kws_test.mtd"    # to the held-out voices (the demo reads both from /flash: much faster)
EVAL_BEFORE = False      # evaluate the starting model on TEST first (accuracy_before)
SYNTHETIC = True         # the clips are synthesized speech (False: recorded WAVs, --from-wav)
SEED = 1
EVAL_TRAIN = False       # a full pass over the training set at the end (else: last epoch's running accuracy)
WIDTH = 32               # channels of the DS-CNN
BATCHNORM = False        # BatchNorm after each conv: keeps two activations per block (more RAM)


def dscnn(classes, width, batchnorm):
    """Conv 10x4 stride 2, two depthwise-separable blocks, average pooling over frequency and
    a classifier on the 5x5 time-frequency map (keeping when a word is said helps more than
    global pooling). Every activation of a training step is kept for backward; without
    BatchNorm each conv keeps one (ReLUs run in place), which is what fits a 256 KB board.
    python -m mcutrain.pretrain_kws builds the same network on the host."""
    def block(conv):
        return [conv, mt.BatchNorm2d(width), mt.ReLU()] if batchnorm else [conv, mt.ReLU()]
    return mt.Sequential(
        *block(mt.Conv2d(1, width, (10, 4), stride=2, padding=(5, 1))),
        *block(mt.Conv2d(width, width, 3, padding=1, groups=width)), *block(mt.Conv2d(width, width, 1)),
        *block(mt.Conv2d(width, width, 3, padding=1, groups=width)), *block(mt.Conv2d(width, width, 1)),
        mt.AvgPool2d((5, 1)), mt.Flatten(), mt.Linear(5 * 5 * width, classes))


def int8_avgpool():
    """Whether this firmware's AvgPool2d takes int8 input: plan a tiny one and see."""
    try:
        pool = mt.Sequential(mt.Convert(mt.int8), mt.AvgPool2d(1), mt.Convert(mt.float32))
        pool.predict(mt.zeros((1, 1, 1, 1)))
        return True
    except ValueError:
        return False


def as_float(x, xf, ds):
    """The model input: int8 datasets are converted with their scale and zero point."""
    if x.dtype == "float32":
        return x
    xf.copy_from(x, scale=ds.scale, zero_point=ds.zero_point)
    return xf


def argmax(out):
    row = out[0]
    best = 0
    for c in range(1, len(row)):
        if row[c] > row[best]:
            best = c
    return best


def evaluate(model, ds, xf):
    correct = 0
    total_loss = 0.0
    for x, y in ds:
        loss, acc = model.evaluate(as_float(x, xf, ds), y)
        total_loss += loss
        correct += acc
    return total_loss / len(ds), correct / len(ds)


def data_path(name):
    return name if name.startswith("/") else DATA + "/" + name


train = mt.Dataset(data_path(TRAIN), verify=False)
classes = train.num_classes
mt.seed(SEED)
model = mt.load(PRETRAINED) if PRETRAINED else dscnn(classes, WIDTH, BATCHNORM)
if DTYPE == "int8":
    # Until AvgPool2d takes int8, the head (pooling, flatten, classifier) stays float32.
    head = INT8_HEAD if INT8_HEAD is not None else int8_avgpool()
    pool = [i for i in range(len(model)) if type(model[i]).__name__ == "AvgPool2d"]
    keep = () if head or not pool else tuple(range(pool[0], len(model)))
    # Calibrated on the host's training clips, as a model quantized before shipping would be.
    calibration = train if TRAIN == "kws_train.mtd" else mt.Dataset(data_path("kws_train.mtd"), verify=False)
    model = mt.quantize(model, calibration, samples=CALIBRATION, keep_float=keep)
    del calibration
    gc.collect()
test = mt.Dataset(data_path(TEST), verify=False)  # opened late: a 256 KB heap is tight while quantizing
update = UPDATE(model) if callable(UPDATE) else UPDATE
if DTYPE == "int8":
    # int8 layers train with plain SGD (no momentum), new weights stochastically rounded.
    opt = mt.SGD(model, lr=LR, standardize=False, rounding="stochastic", update=update)
else:
    opt = mt.SGD(model, lr=LR, momentum=MOMENTUM, update=update)
xf = mt.zeros((1,) + tuple(train.sample_shape))
memory = model.memory(xf.shape)
macs = model.macs()
print("model:", len(model), "layers,", memory["total"], "bytes for a training step", memory)
metrics = mt.Metrics(every=max(1, len(train) // 100), perf=True, model="dscnn", dtype=DTYPE, classes=classes,
                     train_samples=len(train), test_samples=len(test), synthetic=SYNTHETIC,
                     peak_ram_bytes=memory["total"], macs_per_step=macs["train_step"],
                     memory=memory)

step_instructions = 0
correct = seen = 0
test_loss = test_acc = accuracy_before = None
if EVAL_BEFORE:
    print("evaluating the starting model on", TEST, "(%d clips)" % len(test))
    accuracy_before = evaluate(model, test, xf)[1]
    print("before training: accuracy", accuracy_before)
backward_macs = full_backward_macs = 0
for epoch in range(EPOCHS):
    opt.lr = LR * DECAY ** epoch
    correct = 0
    seen = 0
    total = 0.0
    for x, y in train.shuffled(seed=SEED + epoch):
        t0 = mt.perf_counter()
        loss = model.train_step(as_float(x, xf, train), y, mt.cross_entropy, opt)
        step_instructions = mt.perf_counter() - t0
        # The step's logits are still in the model's output: running train accuracy for free.
        correct += argmax(model.output) == y
        if update is not None:
            stats = model.update_stats()
            backward_macs += stats["backward_macs"]
            full_backward_macs += stats["full_backward_macs"]
        seen += 1
        total += loss
        metrics.step(loss=loss, accuracy=correct / seen)
    gc.collect()
    test_loss, test_acc = evaluate(model, test, xf)
    metrics.epoch(loss=total / len(train), accuracy=correct / seen, val_loss=test_loss,
                  val_accuracy=test_acc, lr=opt.lr)

train_acc = evaluate(model, train, xf)[1] if EVAL_TRAIN or not seen else correct / seen
if test_acc is None:  # no epochs: evaluate the model as loaded
    test_loss, test_acc = evaluate(model, test, xf)
if SAVE:
    mt.save(model, SAVE)
done = {"backward_mac_fraction": backward_macs / full_backward_macs if full_backward_macs else 1.0}
if accuracy_before is not None:
    done.update(accuracy_before=accuracy_before, accuracy_after=test_acc)
if update is not None:
    done["update"] = repr(update)
metrics.done(train_accuracy=train_acc, test_accuracy=test_acc, test_loss=test_loss, epochs=EPOCHS,
             dtype=DTYPE, step_instructions=step_instructions, peak_ram_bytes=memory["total"],
             saved=SAVE, synthetic=SYNTHETIC, train_file=TRAIN, train_samples=len(train), **done)
