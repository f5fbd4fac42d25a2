# Hello from the board: which firmware is this, and what does a small kernel cost here?
# Run it with `mcutrain run examples/hello.py` or `mpremote connect PORT run examples/hello.py`.
import array
import sys

import mcutrain as mt

print("mcutrain", mt.version(), "on", sys.implementation._machine)

n = 64
a = array.array("f", (i / n for i in range(n)))
b = array.array("f", (1.0 - i / n for i in range(n)))

start = mt.perf_counter()
d = mt.dot(a, b)
cost = mt.perf_counter() - start
print("dot of", n, "floats =", d)
print("took", cost, mt.PERF_UNIT, "for", n, "multiply-adds, call included")

# The same work in plain MicroPython, for scale.
start = mt.perf_counter()
s = 0.0
for i in range(n):
    s += a[i] * b[i]
cost_py = mt.perf_counter() - start
print("pure MicroPython took", cost_py, mt.PERF_UNIT, "(%.0fx)" % (cost_py / cost))
