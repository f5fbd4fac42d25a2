"""mt.fit and mt.evaluate (micropython_lib/mcutrain/mcutrain/fit.py, issue 20 item 8): the loop
the examples write by hand, on every target. fit gives exactly the hand-written loop's
weights (in memory and from an int8 .mtd converted with its scale), evaluates in batches, keeps
the best model on flash, follows a learning-rate schedule, stops early and skips with the
halting helpers, and refuses bad arguments clearly."""

from __future__ import annotations

import json

import numpy as np
from mcutrain.formats import write_dataset
from mcutrain.runner import run_on
from test_device_formats import device_path, put, remove

PRELUDE = r"""
import array
import json
import mcutrain as mt

def hexb(t):
    return bytes(memoryview(t)).hex()

def weights(m):
    return ''.join(hexb(p) for p in m.parameters())

def data(n, k=0):
    x = mt.zeros((n, 4))
    v = array.array('f', [((i * 7 + k) % 11 - 5) / 5 for i in range(n * 4)])
    x.copy_from(v)
    y = [1 if v[4 * i] + v[4 * i + 1] > 0 else 0 for i in range(n)]
    return x, y

def mlp(inputs=4):
    mt.seed(3)
    return mt.Sequential(mt.Flatten(), mt.Linear(inputs, 8), mt.ReLU(), mt.Linear(8, 2))
"""


def device_json(target, code: str, timeout: float = 300) -> dict:
    text = run_on(target, PRELUDE + code, timeout=timeout)
    return json.loads(next(line for line in text.splitlines() if line.startswith("@json"))[6:])


def test_fit_in_memory_is_the_hand_written_loop(target):
    r = device_json(target, r"""
x, y = data(10)
a, b = mlp(), mlp()
oa, ob = mt.SGD(a, lr=0.1), mt.SGD(b, lr=0.1)
h = mt.fit(a, (x, y), oa, epochs=2, batch=4, shuffle=False, metrics=False, schedule=0.5)
xb = mt.zeros((4, 4))
for epoch in range(2):
    ob.lr = 0.1 * 0.5 ** epoch
    for start in range(0, 10, 4):
        n = min(4, 10 - start)
        xs = mt.zeros((n, 4))
        mv, src = memoryview(xs), memoryview(x)
        for i in range(4 * n):
            mv[i] = src[4 * start + i]
        b.train_step(xs, y[start:start + n], mt.cross_entropy, ob)
print('@json', json.dumps({'same': weights(a) == weights(b), 'h': h, 'lr': oa.lr}))
""")
    assert r["same"], "fit's weights differ from the hand-written loop's"
    h = r["h"]
    assert h["epochs"] == 2 and len(h["loss"]) == 2 and h["val_loss"] == [None, None]
    assert 0 <= h["accuracy"][1] <= 1 and h["stop"] is None
    assert abs(r["lr"] - 0.05) < 1e-6  # the number schedule multiplied the rate after epoch 1


def test_fit_shuffles_in_memory_data_as_a_dataset_and_leaves_random_alone(target, tmp_path):
    # The same seed trains to the same weights in memory and from an .mtd (one permutation
    # rule; batch 1, so the order decides the weights), not to the unshuffled run's; the
    # global random state is neither reseeded nor consumed.
    rng = np.random.default_rng(8)
    x = rng.normal(size=(13, 4)).astype(np.float32)
    y = rng.integers(0, 2, 13)
    write_dataset(tmp_path / "order.mtd", x, y)
    (path,) = put(target, tmp_path / "order.mtd")
    try:
        r = device_json(target, f"PATH = {path!r}\n" + r"""
import random
ds = mt.Dataset(PATH)
xb, yb = ds.batches(13).__next__()
x, y = mt.zeros((13, 4)), list(yb)
x.copy_from(xb)
out = {}
for name, data, shuffle in (('memory', (x, y), True), ('dataset', ds, True), ('plain', (x, y), False)):
    m = mlp()
    random.seed(77)
    mt.fit(m, data, mt.SGD(m, lr=0.3), epochs=2, batch=1, seed=4, shuffle=shuffle, metrics=False)
    out[name] = weights(m)
    out[name + '_next'] = random.getrandbits(20)
random.seed(77)
out['fresh_next'] = random.getrandbits(20)
print('@json', json.dumps(out))
""")
    finally:
        remove(target, path)
    assert r["memory"] == r["dataset"] != r["plain"]
    assert r["memory_next"] == r["dataset_next"] == r["fresh_next"]


def test_fit_streams_an_int8_dataset_converted_with_its_scale(target, tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 2, 2, 1)).astype(np.float32)
    write_dataset(tmp_path / "fit8.mtd", x, (x.sum(axis=(1, 2, 3)) > 0).astype(np.int64), dtype="int8")
    (path,) = put(target, tmp_path / "fit8.mtd")
    try:
        r = device_json(target, f"PATH = {path!r}\n" + r"""
ds = mt.Dataset(PATH)
a, b = mlp(), mlp()
oa, ob = mt.SGD(a, lr=0.1), mt.SGD(b, lr=0.1)
h = mt.fit(a, ds, oa, epochs=2, batch=2, shuffle=False, metrics=False, val=ds, val_batch=4)
xf = mt.zeros((2, 2, 2, 1))
for epoch in range(2):
    for xb, yb in ds.batches(2):
        n = xb.shape[0]
        xin = xf if n == 2 else mt.zeros((n, 2, 2, 1))
        xin.copy_from(xb, scale=ds.scale, zero_point=ds.zero_point)
        b.train_step(xin, yb, mt.cross_entropy, ob)
# evaluate: batches of 4 give the per-sample mean
one = mt.zeros((1, 2, 2, 1))
total = hits = 0
for xb, yv in ds:
    one.copy_from(xb, scale=ds.scale, zero_point=ds.zero_point)
    l, acc = a.evaluate(one, [yv])
    total += l
    hits += acc
batched = mt.evaluate(a, ds, batch=4)
print('@json', json.dumps({'same': weights(a) == weights(b), 'h': h, 'batched': batched,
                           'single': [total / len(ds), hits / len(ds)]}))
""")
    finally:
        remove(target, path)
    assert r["same"]
    assert len(r["h"]["val_accuracy"]) == 2 and r["h"]["best_epoch"] in (1, 2)
    # The batched mean of means equals the per-sample mean to float32 rounding of ~9 values.
    assert abs(r["batched"][0] - r["single"][0]) < 1e-5 and abs(r["batched"][1] - r["single"][1]) < 1e-9


def test_fit_keeps_the_best_model_and_stops_early(target, tmp_path):
    ckpt = device_path(target, tmp_path, "best.mtm")
    r = device_json(target, f"CKPT = {ckpt!r}\n" + r"""
x, y = data(24)
xv, yv = data(12, 3)
m = mlp()
opt = mt.SGD(m, lr=0.2)
stop = mt.EarlyStop(patience=2, min_delta=0.001)
h = mt.fit(m, (x, y), opt, epochs=30, batch=4, val=(xv, yv), checkpoint=CKPT, stop=stop, seed=5,
           schedule=lambda epoch: 0.2 / (1 + epoch), metrics=False)
best = mt.load(CKPT)
print('@json', json.dumps({'h': h, 'best_acc': mt.evaluate(best, (xv, yv))[1], 'lr': opt.lr,
                           'reason': stop.reason}))
import os
os.remove(CKPT)
""")
    h = r["h"]
    assert h["stop"] == "patience" == r["reason"] and h["epochs"] < 30
    assert r["best_acc"] == h["best"] == max(h["val_accuracy"])  # the checkpoint is the best epoch's
    assert abs(r["lr"] - 0.2 / h["epochs"]) < 1e-6  # the callable schedule set each epoch's rate


def test_fit_distills_with_sample_skipping_from_a_teacher_dataset(target, tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    write_dataset(tmp_path / "teach.mtd", x, y, teacher_logits=np.stack([-x[:, 0], x[:, 0]], 1) * 3)
    (path,) = put(target, tmp_path / "teach.mtd")
    try:
        r = device_json(target, f"PATH = {path!r}\n" + r"""
ds = mt.Dataset(PATH, teacher=True)
m = mlp()
skip = mt.SampleSkip(q=0.5, warmup=5, max_skip=0.5)
h = mt.fit(m, ds, mt.SGD(m, lr=0.1), loss=mt.distillation(temperature=2.0, alpha=0.5), epochs=3,
           val=mt.Dataset(PATH), skip=skip, metrics=False)
print('@json', json.dumps({'h': h, 'seen': skip.seen, 'skipped': skip.skipped}))
""")
    finally:
        remove(target, path)
    assert r["seen"] == 60 and 0 < r["skipped"] <= 30
    assert r["h"]["epochs"] == 3 and all(a is not None for a in r["h"]["val_accuracy"])


def test_fit_trains_on_labels_from_a_teacher_file_opened_without_teacher(target, tmp_path):
    # The same .mtd serves cross-entropy training (its logits unread) and distillation.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    write_dataset(tmp_path / "teach.mtd", x, y, teacher_logits=np.stack([-x[:, 0], x[:, 0]], 1))
    (path,) = put(target, tmp_path / "teach.mtd")
    try:
        r = device_json(target, f"PATH = {path!r}\n" + r"""
m = mlp()
h = mt.fit(m, mt.Dataset(PATH), mt.SGD(m, lr=0.1), epochs=2, val=mt.Dataset(PATH), metrics=False)
print('@json', json.dumps(h))
""")
    finally:
        remove(target, path)
    assert r["epochs"] == 2 and all(a is not None for a in r["accuracy"] + r["val_accuracy"])


def test_fit_refuses_bad_arguments_clearly(target):
    r = device_json(target, r"""
x, y = data(6)
m = mlp()
opt = mt.SGD(m, lr=0.1)
cases = [
    "mt.fit(m, (x,), opt)", "mt.fit(m, (x, y[:5]), opt)", "mt.fit(m, [1, 2], opt)", "mt.fit(m, 7, opt)",
    "mt.fit(m, (x, y), opt, batch=0)", "mt.fit(m, (x, y), opt, epochs=-1)",
    "mt.fit(m, (x, y), opt, monitor='auc')", "mt.fit(m, (x, y), opt, val=(x, y), stop=mt.EarlyStop(mode='min'))",
]
out = []
for c in cases:
    try:
        eval(c)
        out.append([c, 'no error', ''])
    except (ValueError, TypeError) as e:
        out.append([c, type(e).__name__, str(e)])
print('@json', json.dumps(out))
""")
    for call, kind, message in r:
        assert kind in ("ValueError", "TypeError") and message.startswith("fit:"), (call, kind, message)
