# Train a student that `mcutrain design` chose for a board: from scratch with cross-entropy,
# or from a host teacher's logits (stored in the .mtd by `push-dataset --teacher`) with
# mt.distillation, with or without early halting (mt.SampleSkip per sample, mt.EarlyStop on
# the validation accuracy: its trend over WINDOW epochs, or PATIENCE epochs without a new
# best). The weights kept are those of the best validation epoch (the checkpoint), whichever
# way the run ends, so every variant is judged the same way.
#
#   mcutrain design --teacher teacher.pt --board nrf52840 --family dscnn -o student.mtm
#   mcutrain push-dataset train.npz --teacher teacher.pt --save train.mtd   (and val, test)
#   mcutrain run examples/train_student.py --mount .
#
# bench/students.py runs it for every task, board budget and variant (docs/students.md).
# The last line printed is a JSON summary.
import gc
import json

import mcutrain as mt

MODEL = "/remote/student.mtm"   # the designed student (fresh weights)
DATA = "/remote"                # train.mtd (with teacher logits for "distill"), val.mtd, test.mtd
CHECKPOINT = "/remote/best.mtm"
LOSS = "distill"     # "ce" (labels only) or "distill"
HALT = False         # early halting: SampleSkip and EarlyStop
EPOCHS = 10
LR = 0.02            # plain SGD: the optimizer the cost model plans for
DECAY = 1.0          # the rate's factor from one epoch to the next (fit's schedule): < 1 lets
                     # a run settle, so that a stop on a plateau has epochs to save
BATCH = 1
TEMPERATURE = 4.0    # mt.distillation's T
ALPHA = 0.3          # weight of the labels' cross-entropy
SKIP_Q = 0.3         # skip a sample whose loss is below this running quantile
SKIP_WARMUP = 200
MAX_SKIP = 0.5       # at most this share of the steps skipped (0: no per-sample skipping)
PATIENCE = None      # evaluations without a better MONITOR before stopping (None: no such rule)
WINDOW = 5           # stop when the mean MONITOR of the last WINDOW evaluations is no better than
                     # that of the WINDOW before (None: no such rule)
MIN_DELTA = 0.0      # ... better by more than this (EarlyStop's min_delta)
MONITOR = "val_accuracy"  # or "val_loss": what the checkpoint keeps the best of, and EarlyStop watches
SEED = 1
TEST = True          # evaluate the best epoch's weights on test.mtd here; False: leave it to a
                     # later run (a fresh heap: on a small board the training's objects stay)

distill = LOSS == "distill"
train = mt.Dataset(DATA + "/train.mtd", teacher=distill, verify=False)
val = mt.Dataset(DATA + "/val.mtd", verify=False)
model = mt.load(MODEL)
shape = (1,) + tuple(train.sample_shape)
# The plans' RAM, asked for before training: this also places the training plan in the heap
# now, in one piece, before fit's per-epoch objects can fragment a small heap.
train_ram = model.memory(shape)["total"]
infer_ram = model.memory(shape, inference=True)["total"]
mt.seed(SEED)
opt = mt.SGD(model, lr=LR)
loss = mt.distillation(temperature=TEMPERATURE, alpha=ALPHA) if distill else mt.cross_entropy
skip = mt.SampleSkip(q=SKIP_Q, warmup=SKIP_WARMUP, max_skip=MAX_SKIP) if HALT and MAX_SKIP else None
stop = mt.EarlyStop(patience=PATIENCE, window=WINDOW, min_delta=MIN_DELTA,
                    mode="min" if MONITOR == "val_loss" else "max") if HALT else None
metrics = mt.Metrics(every=max(1, len(train) // 2), skip=skip, stop=stop, loss_kind=LOSS,
                     halt=HALT, train_samples=len(train))
gc.collect()
t0 = mt.perf_counter()
history = mt.fit(model, train, opt, loss, epochs=EPOCHS, batch=BATCH, val=val, val_batch=BATCH,
                 schedule=DECAY,
                 checkpoint=CHECKPOINT, monitor=MONITOR, metrics=metrics, skip=skip, stop=stop, seed=SEED,
                 train_accuracy=False)
train_instructions = mt.perf_counter() - t0
summary = {
    "loss": LOSS, "halt": HALT, "seed": SEED, "epochs": history["epochs"], "best_epoch": history["best_epoch"],
    "best_val_accuracy": history["best"], "stop": history["stop"], "train_instructions": train_instructions,
    "steps": skip.seen if skip else None, "skipped": skip.skipped if skip else 0,
    "skip_fraction": skip.fraction if skip else 0.0, "train_ram": train_ram, "infer_ram": infer_ram}
if TEST:
    del model, opt  # free what Python lets go of before loading the best epoch's weights
    gc.collect()
    test = mt.Dataset(DATA + "/test.mtd", verify=False)  # opened only now: an open file keeps buffers
    summary["test_loss"], summary["test_accuracy"] = mt.evaluate(mt.load(CHECKPOINT), test, batch=1)
print(json.dumps(summary))
