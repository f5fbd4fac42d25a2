"""PyTorch habits on the device (layer_module.c, issue 20 item 2): calling a model runs forward,
train()/eval() set the mode calls run in, plain backward accumulates into .grad until
zero_grad() (so micro-batches add up to their whole batch), named_parameters() names the
parameters, and slicing a Sequential gives its layers. Every target."""

from __future__ import annotations

import json

import numpy as np
from mcutrain.runner import run_on

PRELUDE = r"""
import array
import json
import mcutrain as mt

def filled(shape, k):
    n = 1
    for d in shape:
        n *= d
    t = mt.zeros(shape)
    t.copy_from(array.array('f', [((i * 5 + k) % 17 - 8) / 6 for i in range(n)]))
    return t

def hexb(t):
    return bytes(memoryview(t)).hex()

def model():
    mt.seed(7)
    return mt.Sequential(mt.Conv2d(1, 3, 3, padding=1), mt.BatchNorm2d(3), mt.ReLU(), mt.Flatten(),
                         mt.Linear(3 * 4 * 4, 4))
"""


def device_json(target, code: str) -> dict:
    text = run_on(target, PRELUDE + code, timeout=300)
    return json.loads(next(line for line in text.splitlines() if line.startswith("@json"))[6:])


def test_calling_a_model_is_forward_in_its_mode(target):
    r = device_json(target, r"""
m = model()
x = filled((2, 4, 4, 1), 1)
out = {}
out['call'] = hexb(m(x)) == hexb(m.forward(x))
out['call_kw'] = hexb(m(x, training=False)) == hexb(m.forward(x, training=False))
out['eval_returns_self'] = m.eval() is m
out['modes'] = [m.training] + [l.training for l in m]
out['eval_call'] = hexb(m(x)) == hexb(m.forward(x, training=False))
out['eval_differs'] = hexb(m(x)) != hexb(m.forward(x, training=True))  # BatchNorm: batch statistics
m.train()
out['train_modes'] = [m.training] + [l.training for l in m]
out['train_call'] = hexb(m(x)) == hexb(m.forward(x, training=True))
errors = []
for call in ('m()', 'm(x, x)', 'm(x, bogus=1)', 'm.train(1)', 'm.train(True, False)'):
    try:
        eval(call)
        errors.append(call + ' no error')
    except TypeError:
        errors.append('TypeError')
out['errors'] = errors
print('@json', json.dumps(out))
""")
    assert r["call"] and r["call_kw"] and r["eval_returns_self"]
    assert r["modes"] == [False] * 6 and r["train_modes"] == [True] * 6
    assert r["eval_call"] and r["eval_differs"] and r["train_call"]
    assert r["errors"] == ["TypeError"] * 5, r["errors"]


def test_train_step_in_eval_mode_keeps_batchnorm_statistics(target):
    r = device_json(target, r"""
m = model()
opt = mt.SGD(m, lr=0.05)
x = filled((4, 4, 4, 1), 2)
before = hexb(m[1].running_mean) + hexb(m[1].running_var)
m.eval()
m.train_step(x, [0, 1, 2, 3], mt.cross_entropy, opt)
kept = hexb(m[1].running_mean) + hexb(m[1].running_var) == before
m.train()
m.train_step(x, [0, 1, 2, 3], mt.cross_entropy, opt)
moved = hexb(m[1].running_mean) + hexb(m[1].running_var) != before
print('@json', json.dumps({'kept': kept, 'moved': moved}))
""")
    assert r == {"kept": True, "moved": True}


def test_backward_accumulates_micro_batches_until_zero_grad(target):
    # Two micro-batches of 2, each backward given the gradient of the sum over its samples,
    # add up to the whole batch of 4's gradient: the same sums in another order, so equal
    # to float rounding (a few ulps of values of order 1: 1e-5 absolute).
    r = device_json(target, r"""
m = model()
x = filled((4, 4, 4, 1), 3)
labels = [0, 1, 2, 3]
def grads():
    return [p.grad.tolist() for p in m.parameters()]
def flat(v):
    return [a for row in v for a in (flat(row) if isinstance(row, list) else [row])]
def step(xb, yb):
    out = m.forward(xb, training=False, grad=True)  # BatchNorm's running statistics: samples independent
    dy = mt.cross_entropy.backward(out, yb)
    n = len(yb)
    mv = memoryview(dy)
    for i in range(len(mv)):
        mv[i] *= n  # the gradient of the sum, not the mean, over this micro-batch
    m.backward(dy)
step(x, labels)
whole = flat(grads())
m.zero_grad()
zeroed = all(v == 0 for v in flat(grads()))
step(filled((2, 4, 4, 1), 3), labels[:2])
x2 = mt.zeros((2, 4, 4, 1))
mv, src = memoryview(x2), memoryview(x)
for i in range(len(mv)):
    mv[i] = src[32 + i]
step(x2, labels[2:])
acc = flat(grads())
opt = mt.SGD(m, lr=0.1)
opt.zero_grad()
opt_zeroed = all(v == 0 for v in flat(grads()))
print('@json', json.dumps({'whole': whole, 'acc': acc, 'zeroed': zeroed, 'opt_zeroed': opt_zeroed}))
""")
    assert r["zeroed"] and r["opt_zeroed"]
    whole, acc = np.array(r["whole"]), np.array(r["acc"])
    assert np.abs(whole).max() > 0.1
    np.testing.assert_allclose(acc, whole, atol=1e-5, rtol=0)


def test_named_parameters_and_slicing(target):
    r = device_json(target, r"""
m = model()
named = m.named_parameters()
params = m.parameters()
sd = list(m.state_dict().keys())
out = {
    'names': [n for n, _ in named],
    'same': all(t is p for (_, t), p in zip(named, params)) and len(named) == len(params),
    'state_dict': sd,
    'slice': [type(l).__name__ for l in m[1:3]],
    'identity': m[1:3][0] is m[1],
    'neg': [type(l).__name__ for l in m[::-2]],
    'empty': m[3:1],
    'tail': [type(l).__name__ for l in m[-2:]],
}
print('@json', json.dumps(out))
""")
    assert r["names"] == ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]
    assert r["same"]
    assert set(r["state_dict"]) - set(r["names"]) == {"1.running_mean", "1.running_var"}
    assert r["slice"] == ["BatchNorm2d", "ReLU"] and r["identity"]
    assert r["neg"] == ["Linear", "ReLU", "Conv2d"]
    assert r["empty"] == [] and r["tail"] == ["Flatten", "Linear"]
