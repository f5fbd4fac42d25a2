"""Inference plans (layer.c plan_top, model_sequential.c seq_place_pooled): predict and evaluate
plan no gradient buffers and let a Sequential's activations take turns in two buffers.

What must hold on every target: the same output bits as a forward(training=False, grad=True) in the
training plan (every dtype, nested Sequentials, Residual blocks, views and in-place ReLUs);
memory(inference=True) reports exactly that plan (no gradients, two buffers of the largest
pooled activation); switching between training and inference plans changes no training
result; backward after predict is refused clearly; and a model whose training plan does not
fit a 256 KB board evaluates a batch there.
"""

from __future__ import annotations

import json

import pytest
from mcutrain.runner import open_target, run_on

PRELUDE = r"""
import array
import gc
import json
import mcutrain as mt

def hexb(t):
    return bytes(memoryview(t)).hex()

def filled(shape, k):
    t = mt.zeros(shape)
    n = 1
    for d in shape:
        n *= d
    t.copy_from(array.array('f', [((i * 7 + k) % 23 - 11) / 8 for i in range(n)]))
    return t

def first(dt):
    return [mt.Convert(dt)] if dt != 'float32' else []

def last(dt):
    return [mt.Convert('float32')] if dt != 'float32' else []
"""

# Models covering what the planner treats differently: views (Flatten), in-place and folded
# ReLUs, a ReLU straight after a view, pooling, a nested Sequential and a Residual block.
MODELS = r"""
def cnn(dt):
    return mt.Sequential(*first(dt), mt.Conv2d(1, 4, 3, padding=1, dtype=dt), mt.ReLU(),
                         mt.Conv2d(4, 4, 3, padding=1, groups=4, dtype=dt), mt.ReLU(),
                         mt.Conv2d(4, 6, 1, dtype=dt), mt.ReLU(), mt.MaxPool2d(2), mt.Flatten(),
                         mt.Linear(6 * 3 * 3, 5, dtype=dt), *last(dt))

def nested(dt):
    inner = mt.Sequential(mt.Flatten(), mt.ReLU(), mt.Linear(4 * 6 * 6, 8, dtype=dt), mt.ReLU())
    return mt.Sequential(*first(dt), mt.Conv2d(1, 4, 3, padding=1, dtype=dt), inner,
                         mt.Linear(8, 5, dtype=dt), *last(dt))

def residual(dt):
    body = mt.Sequential(mt.Conv2d(4, 4, 3, padding=1, dtype=dt), mt.ReLU(), mt.Conv2d(4, 4, 1, dtype=dt))
    return mt.Sequential(*first(dt), mt.Conv2d(1, 4, 3, padding=1, dtype=dt), mt.ReLU(), mt.Residual(body),
                         mt.ReLU(), mt.Flatten(), mt.Linear(4 * 6 * 6, 5, dtype=dt), *last(dt))
"""


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_predict_and_evaluate_give_the_training_plans_bits(target, dtype):
    code = PRELUDE + MODELS + f"""
dt = {dtype!r}
out = {{}}
for name, make in (('cnn', cnn), ('nested', nested), ('residual', residual)):
    if dt == 'int8' and name == 'residual':
        continue  # int8 Residual blocks need int8 on both branches: covered by float ones
    mt.seed(5)
    m = make(dt)
    x = filled((3, 6, 6, 1), 1)
    labels = [0, 3, 4]
    ref = hexb(m.forward(x, training=False, grad=True))
    ref_loss = mt.cross_entropy(m.output, labels)
    pred = hexb(m.predict(x))
    loss, acc = m.evaluate(x, labels)
    again = hexb(m.forward(x, training=False, grad=True))
    bare = hexb(m.forward(x, training=False))  # no grad: as predict, in the plan predict used
    out[name] = [ref == pred, ref == again, ref == bare, loss == ref_loss, acc is not None]
    m = None
    gc.collect()
print('@json', json.dumps(out))
"""
    text = run_on(target, code, timeout=300)
    result = json.loads(next(line for line in text.splitlines() if line.startswith("@json"))[6:])
    for name, checks in result.items():
        assert all(checks), (name, checks)


def test_memory_reports_the_inference_plan(target):
    code = PRELUDE + MODELS + r"""
mt.seed(2)
m = cnn('float32')
shape = (4, 6, 6, 1)
train = m.memory(shape)
inf = m.memory(shape, inference=True)
# The pooled activations: conv0, dw conv, 1x1 conv (4x6x6x6), pool, linear; ReLUs in place,
# Flatten a view: two buffers of the largest, 4 * 6 * 6 * 6 floats.
print('@json', json.dumps({'train': train, 'inf': inf, 'largest': 4 * 6 * 6 * 6 * 4}))
x = filled(shape, 3)
m.predict(x)
print('@json2', json.dumps(m.memory(inference=True)))
"""
    text = run_on(target, code, timeout=300)
    r = json.loads(next(line for line in text.splitlines() if line.startswith("@json "))[6:])
    after = json.loads(next(line for line in text.splitlines() if line.startswith("@json2"))[7:])
    train, inf = r["train"], r["inf"]
    assert inf["gradients"] == 0 and inf["optimizer"] == 0
    assert inf["activations"] == 2 * r["largest"]
    assert inf["weights"] == train["weights"]
    assert inf["total"] < train["total"]
    assert after == inf  # the plan predict made is the one memory(inference=True) reports


def test_switching_plans_changes_no_training_result(target):
    # Two models from one seed train on the same data; one also predicts and evaluates (at
    # other batch sizes) between steps. Their losses and weights must stay identical.
    code = PRELUDE + MODELS + r"""
res = {}
for dt in ('float32', 'int8'):
    mt.seed(9)
    a = cnn(dt)
    mt.seed(9)
    b = cnn(dt)
    kw = {'rounding': 'stochastic'} if dt == 'int8' else {}
    oa = mt.SGD(a, lr=0.05, **kw)
    ob = mt.SGD(b, lr=0.05, **kw)
    same = True
    for step in range(4):
        x = filled((2, 6, 6, 1), step)
        y = [step % 5, (step + 2) % 5]
        la = a.train_step(x, y, mt.cross_entropy, oa)
        if step:  # after the first step: int8 layers take their first ranges from it
            b.predict(filled((3, 6, 6, 1), 7))
            b.evaluate(filled((1, 6, 6, 1), 8), [1])
        lb = b.train_step(x, y, mt.cross_entropy, ob)
        same = same and la == lb
    same = same and all(hexb(p) == hexb(q) for p, q in zip(a.parameters(), b.parameters()))
    res[dt] = same
print('@json', json.dumps(res))
"""
    text = run_on(target, code, timeout=300)
    r = json.loads(next(line for line in text.splitlines() if line.startswith("@json"))[6:])
    assert r == {"float32": True, "int8": True}, r


def test_a_training_plan_for_the_shape_serves_predict_as_it_is(target):
    # A script that predicts before each train_step (prequential accuracy) must not re-plan
    # twice a sample: at the training shape predict runs in the training plan, whose layers
    # keep their own outputs; at another shape it plans for inference, where they take turns.
    code = PRELUDE + MODELS + r"""
mt.seed(4)
m = cnn('float32')
opt = mt.SGD(m, lr=0.01)
x = filled((2, 6, 6, 1), 5)
m.train_step(x, [1, 2], mt.cross_entropy, opt)
m.predict(x)
conv0 = hexb(m[0].output)
m.forward(x, training=False, grad=True)
print('@same-shape', conv0 == hexb(m[0].output))
x3 = filled((3, 6, 6, 1), 5)
m.predict(x3)
conv0 = hexb(m[0].output)
m.forward(x3, training=False, grad=True)
print('@other-shape', conv0 == hexb(m[0].output))
"""
    text = run_on(target, code, timeout=300)
    assert "@same-shape True" in text, text
    assert "@other-shape False" in text, text  # pooled: a later layer wrote over conv0's output


def test_backward_after_predict_or_evaluate_is_refused_then_works_after_forward(target):
    code = PRELUDE + MODELS + r"""
mt.seed(1)
m = cnn('float32')
x = filled((2, 6, 6, 1), 4)
dy = mt.zeros((2, 5))
for call in ('m.predict(x)', 'm.evaluate(x, [1, 2])', 'm.forward(x, training=False)', 'm.eval()(x)'):
    m.forward(x)
    eval(call)
    try:
        m.backward(dy)
        print('@no-error', call)
    except ValueError as e:
        print('@refused', str(e))
m.train()
m.forward(x)
print('@after-forward', m.backward(dy).shape)
"""
    text = run_on(target, code, timeout=300)
    refused = [line for line in text.splitlines() if line.startswith("@refused")]
    assert len(refused) == 4 and all("call forward first" in line for line in refused), text
    assert "@after-forward (2, 6, 6, 1)" in text, text


KWS_MODEL = r"""
import gc
import mcutrain as mt
w = 32
m = mt.Sequential(mt.Conv2d(1, w, (10, 4), stride=2, padding=(5, 1)), mt.ReLU(),
                  mt.Conv2d(w, w, 3, padding=1, groups=w), mt.ReLU(), mt.Conv2d(w, w, 1), mt.ReLU(),
                  mt.Conv2d(w, w, 3, padding=1, groups=w), mt.ReLU(), mt.Conv2d(w, w, 1), mt.ReLU(),
                  mt.AvgPool2d((5, 1)), mt.Flatten(), mt.Linear(5 * 5 * w, 12))
x = mt.zeros((2, 49, 10, 1))
gc.collect()
"""


def test_kws_sized_model_evaluates_a_batch_its_training_plan_cannot_fit():
    # examples/train_kws.py's DS-CNN (WIDTH=32) in float32 at batch 2: its training step plans
    # more than the 256 KB of qemu-m4f's heap, its inference plan well under it.
    with open_target("unix") as unix:
        sizes = run_on(unix, KWS_MODEL + "print('@sizes', m.memory(x.shape)['total'], "
                       "m.memory(x.shape, inference=True)['total'])")
    train, inf = map(int, next(line for line in sizes.splitlines() if line.startswith("@sizes")).split()[1:])
    assert train > 256 * 1024 > 2 * inf, (train, inf)
    code = KWS_MODEL + r"""
try:
    m.train_step(x, [1, 2], mt.cross_entropy, mt.SGD(m, lr=0.01))
    print('@train fits')
except MemoryError as e:
    print('@train MemoryError', e)
m.release()
gc.collect()
print('@inference', m.memory(x.shape, inference=True)['total'])
print('@eval', m.evaluate(x, [1, 2]))
"""
    with open_target("qemu-m4f") as target:
        text = run_on(target, code, timeout=300)
    assert "@train MemoryError" in text, text
    assert f"@inference {inf}" in text, text  # the planner's figure is the same on both
    assert "@eval (" in text, text
