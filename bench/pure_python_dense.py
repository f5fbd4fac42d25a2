# Device script: the dense_64_32_10 training step in pure MicroPython (array('f') loops),
# the baseline that the C engine is compared against in the same firmware.
import gc
import json
from array import array
from math import exp, log

import mcutrain as mt

TARGET = "unknown"  # set by bench/run.py
N_IN, N_HID, N_OUT = 64, 32, 10


def values(n, seed):
    a = array("f", bytearray(4 * n))
    s = seed
    for i in range(n):
        s = (s * 1103515245 + 12345) & 0x7fffffff
        a[i] = ((s >> 8) / 4194304.0 - 1.0) * 0.2
    return a


w1, b1 = values(N_HID * N_IN, 1), values(N_HID, 2)
w2, b2 = values(N_OUT * N_HID, 3), values(N_OUT, 4)
x = values(N_IN, 5)
h = array("f", bytearray(4 * N_HID))
out = array("f", bytearray(4 * N_OUT))
dh = array("f", bytearray(4 * N_HID))


def train_step(label, lr):
    # forward: h = relu(W1 x + b1), out = W2 h + b2
    for j in range(N_HID):
        acc = b1[j]
        row = j * N_IN
        for i in range(N_IN):
            acc += w1[row + i] * x[i]
        h[j] = acc if acc > 0 else 0.0
    for k in range(N_OUT):
        acc = b2[k]
        row = k * N_HID
        for j in range(N_HID):
            acc += w2[row + j] * h[j]
        out[k] = acc
    # softmax cross-entropy and its gradient, written into out
    m = max(out)
    total = 0.0
    for k in range(N_OUT):
        out[k] = exp(out[k] - m)
        total += out[k]
    loss = -log(out[label] / total)
    for k in range(N_OUT):
        out[k] = out[k] / total - (1.0 if k == label else 0.0)
    # backward of layer 2 (input gradient, then fused SGD update), ReLU, layer 1
    for j in range(N_HID):
        acc = 0.0
        for k in range(N_OUT):
            acc += w2[k * N_HID + j] * out[k]
        dh[j] = acc if h[j] > 0 else 0.0
    for k in range(N_OUT):
        g = lr * out[k]
        row = k * N_HID
        for j in range(N_HID):
            w2[row + j] -= g * h[j]
        b2[k] -= g
    for j in range(N_HID):
        g = lr * dh[j]
        row = j * N_IN
        for i in range(N_IN):
            w1[row + i] -= g * x[i]
        b1[j] -= g
    return loss


train_step(3, 0.01)
gc.collect()
t0 = mt.perf_counter()
train_step(3, 0.01)
t1 = mt.perf_counter()
# forward 64*32 + 32*10, layer-2 input gradient 32*10, weight gradients 64*32 + 32*10
macs = 2 * (N_IN * N_HID + N_HID * N_OUT) + N_HID * N_OUT
print("@bench", json.dumps({"target": TARGET, "case": "pure_python_dense_64_32_10_train", "dtype": "float32",
                            "macs": macs, "instructions": t1 - t0, "mac_per_instr": round(macs / (t1 - t0), 6)}))
