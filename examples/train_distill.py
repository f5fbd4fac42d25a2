# Distillation with early halting on the board: a small student learns scikit-learn's digits
# from a host-trained teacher's logits (stored in the .mtd), skipping the backward pass of
# samples it already matches (mt.SampleSkip) and stopping when the held-out accuracy stops
# improving or a budget is spent (mt.EarlyStop). The rule is ours: docs/device-api.md.
#
#   python bench/halting.py --data data/ --prepare   # digits_{train,val,test}.mtd, the train
#                                                    # file with a PyTorch teacher's logits
#   (the same as: mcutrain push-dataset digits_train.npz --teacher teacher.pt --save ...)
#   mcutrain run examples/train_distill.py --mount data --collect results/distill
#
# The settings below choose the run; metrics lines (@mt ...) carry the skip count and the
# stop reason, and the last line printed is a JSON summary.
import gc
import json

import mcutrain as mt

EPOCHS = 8
STUDENT = "mlp"      # "mlp" (64-HIDDEN-10) or "cnn" (two 3x3 convs, max pooling, a linear head)
HIDDEN = 16          # the MLP's hidden units
LR = 0.005 if STUDENT == "mlp" else 0.002
MOMENTUM = 0.9
TEMPERATURE = 2.0    # mt.distillation's T
ALPHA = 0.3          # weight of the labels' cross-entropy (1 - ALPHA: the teacher's soft targets)
SKIP_Q = 0.3         # skip a sample whose loss is below this quantile of the recent losses
SKIP_WARMUP = 200    # steps that never skip
MAX_SKIP = 0.5       # at most this share of the steps skipped (0: no per-sample skipping)
PATIENCE = 2         # epochs without a better validation accuracy before stopping (None: never)
MIN_DELTA = 0.0      # an improvement must beat the best by more than this
BUDGET = None        # stop after this many mt.perf_counter() units (instructions on the emulated boards)
SECONDS = None       # or after this many seconds
DATA = "/remote"     # digits_train.mtd (with teacher logits), digits_val.mtd, digits_test.mtd
SEED = 1


def evaluate(model, ds):
    """Mean cross-entropy and accuracy over ds, one sample at a time: the training plan for
    one sample serves evaluation without re-planning."""
    total = correct = 0.0
    for x, y in ds:
        loss, acc = model.evaluate(x, y)
        total += loss
        correct += acc
    return total / len(ds), correct / len(ds)


train = mt.Dataset(DATA + "/digits_train.mtd", teacher=True, verify=False)
val = mt.Dataset(DATA + "/digits_val.mtd", verify=False)
test = mt.Dataset(DATA + "/digits_test.mtd", verify=False)
features = 1
for d in train.sample_shape:
    features *= d
mt.seed(SEED)
if STUDENT == "mlp":
    model = mt.Sequential(mt.Flatten(), mt.Linear(features, HIDDEN), mt.ReLU(),
                          mt.Linear(HIDDEN, train.num_classes))
else:  # for 8x8 images, as train_digits.py's CNN
    model = mt.Sequential(mt.Conv2d(1, 8, 3, padding=1), mt.ReLU(), mt.MaxPool2d(2),
                          mt.Conv2d(8, 16, 3, padding=1), mt.ReLU(), mt.MaxPool2d(2),
                          mt.Flatten(), mt.Linear(64, train.num_classes))
opt = mt.SGD(model, lr=LR, momentum=MOMENTUM)
loss_fn = mt.distillation(temperature=TEMPERATURE, alpha=ALPHA)
skip = mt.SampleSkip(q=SKIP_Q, warmup=SKIP_WARMUP, max_skip=MAX_SKIP)
stop = mt.EarlyStop(patience=PATIENCE, min_delta=MIN_DELTA, mode="max", budget=BUDGET,
                    seconds=SECONDS)
metrics = mt.Metrics(every=max(1, len(train) // 4), perf=True, skip=skip, stop=stop,
                     model=STUDENT, hidden=HIDDEN, train_samples=len(train), val_samples=len(val),
                     temperature=TEMPERATURE, alpha=ALPHA, skip_q=SKIP_Q, max_skip=MAX_SKIP,
                     patience=PATIENCE)

step_instructions = 0  # inside the training steps only (forward, loss, backward when not skipped)
train_instructions = 0  # the training passes: steps, reading the samples, the halting rule
epochs = 0
for epoch in range(EPOCHS):
    start = mt.perf_counter()
    total = 0.0
    for x, y, t in train.shuffled(seed=SEED + epoch):
        t0 = mt.perf_counter()
        loss = skip.step(model, x, (y, t), loss_fn, opt)
        step_instructions += mt.perf_counter() - t0
        total += loss
        metrics.step(loss=loss)
        if stop.spent():  # a budget (cheap when none is set)
            break
    train_instructions += mt.perf_counter() - start
    epochs += 1
    gc.collect()
    val_loss, val_acc = evaluate(model, val)
    halt = stop.update(val_acc)
    metrics.epoch(loss=total / len(train), val_loss=val_loss, val_accuracy=val_acc)
    if halt:
        break

test_loss, test_acc = evaluate(model, test)
summary = {"student": STUDENT, "test_accuracy": test_acc, "test_loss": test_loss, "epochs": epochs,
           "step_instructions": step_instructions, "train_instructions": train_instructions,
           "train_steps": skip.seen, "skipped": skip.skipped, "skip_fraction": skip.fraction,
           "stop": stop.reason, "best_val_accuracy": stop.best,
           "best_epoch": stop.best_evaluation}
metrics.done(**summary)
print(json.dumps(summary))
