# Seeded random-call fuzzer of the mcutrain device API (runs on the device: unix port, boards).
#
# The host (tests/fuzz/api.py) prepends SEED, START, COUNT, AVOID = [...], REPLAY = None. Call i
# of seed s is generated from its own random stream (seed, i), reading only the live pool's
# state, and is executed as one line of Python source, printed *before* it runs:
#     "@<i> <source>"                the call (the last such line before a crash is the culprit)
#     "!<i> <ExcType> <message>"     when it raised a Python exception (allowed)
#     "#CORRUPT <i> ..."             a heap canary changed during call i (memory corruption)
#     "=S <json summary>"           at the end: calls made, exceptions by type
# so any chunk can be replayed exactly from its printed lines (api.py REPLAY_PRELUDE + sources).
import gc
import json

import mcutrain as mt

N_SLOTS = 16
P = [None] * N_SLOTS      # live objects: tensors, layers, models, optimizers, policies, results
B = [None] * 4            # bytearrays that frombuffer tensors view (grown and shrunk later)
nan = float("nan")
inf = float("inf")


def buf(i, n):
    B[i] = bytearray(n)
    return B[i]


def filled(t, v):
    t.fill(v)
    return t


G = {"mt": mt, "gc": gc, "P": P, "B": B, "nan": nan, "inf": inf, "buf": buf, "filled": filled}
MODE = [1]


class Rng:
    # A small LCG: identical on every port (no dependence on the random module).
    def __init__(self, seed, index):
        self.s = (seed * 7919 + index * 104729 + 12345) & 0x7FFFFFFF
        for _ in range(3):
            self.next()

    def next(self):
        self.s = (self.s * 1103515245 + 12345) & 0x7FFFFFFF
        return self.s >> 8

    def below(self, n):
        return self.next() % n

    def chance(self, p100):
        return self.below(100) < p100

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def bad(self, p100):
        # A near-valid or hostile choice, p100 scaled by the call's mode: most calls are
        # all-valid (so that they reach deep into the engine), some mixed, a few hostile.
        return self.below(100) < p100 * MODE[0]


HUGE = ["2**31-1", "2**31", "2**32+1", "2**63", "-2**31", "-1", "0", "32768", "16384", "65536", "10**6"]
HOSTILE = ["None", "0", "-1", "2**31-1", "2**32+1", "2**63", "nan", "inf", "-inf", "'x'", "()", "[]",
           "{}", "b''", "1.5", "True", "(1,)", "mt", "mt.float32"]
FLOATS = ["0.1", "0.01", "0.5", "1.0", "0.0", "-1.0", "nan", "inf", "-inf", "1e30", "1e-30", "2.0", "-0.25"]
DTYPES = ["mt.float32", "mt.float16", "mt.int8", "mt.mixed"]
ACT_DTYPES = ["mt.float32", "mt.float16", "mt.int8"]
BUILTIN = (int, float, str, bool, tuple, list, dict, type(None), bytes)


def small(r):
    return r.pick((1, 1, 2, 2, 3, 4, 5, 8))


def int_arg(r, valid):
    return r.pick(HUGE) if r.bad(10) else str(valid)


def float_arg(r, valid):
    return r.pick(FLOATS) if r.bad(15) else valid


def hostile(r):
    if r.chance(30):
        return slot_ref(r)
    return r.pick(HOSTILE)


def slot_ref(r):
    return "P[%d]" % r.below(N_SLOTS)


def shape_code(shape):
    return "(" + "".join("%d, " % d for d in shape) + ")"


def rand_shape(r):
    n = r.pick((1, 2, 2, 3, 4, 4))
    return tuple(small(r) for _ in range(n))


def shape_arg(r, shape=None):
    if shape is None or r.bad(8):
        shape = rand_shape(r)
    if not r.bad(6):
        return shape_code(shape)
    return r.pick(("()", "(0,)", "(2, 0)", "(1, 1, 1, 1, 1)", "(-1, 4)", "(2**31-1, 2)", "(65536, 65536)",
                   "(2**32+1,)", "[2, 2]", "None", "(1.5,)", "'x'", "(46341, 46341)", "(2**16, 2**16, 2)"))


def dtype_arg(r, dtype="mt.float32"):
    if not r.bad(15):
        return dtype
    if r.chance(85):
        return r.pick(DTYPES)
    return r.pick(("'int16'", "None", "5", "'float64'"))


def tensor_code(r, shape=None, dtype=None):
    # A fresh tensor: zeros, filled, from a list, or a frombuffer view of a pooled bytearray.
    if shape is None:
        shape = rand_shape(r)
    if dtype is None:
        dtype = r.pick(("mt.float32", "mt.float32", "mt.float32", "mt.float16", "mt.int8"))
    size = 1
    for d in shape:
        size *= d
    q = dtype == "mt.int8"
    k = r.below(10)
    if k < 2:
        return "mt.zeros(%s, %s)" % (shape_arg(r, shape), dtype_arg(r, dtype))
    if k < 6 or size > 48:
        if q:
            v = str(r.below(255) - 127) if not r.bad(5) else r.pick(("1000", "-129", "0.5", "nan"))
        else:
            v = r.pick(("0.5", "-1.25", "3.0", "0.01", "1.0")) if not r.bad(5) else r.pick(("nan", "inf", "1e38", "-inf"))
        return "filled(mt.zeros(%s, %s), %s)" % (shape_arg(r, shape), dtype_arg(r, dtype), v)
    if k < 9:
        if q:
            vals = ", ".join(str(r.below(61) - 30) for _ in range(size))
        else:
            vals = ", ".join(str((r.below(41) - 20) / 8) for _ in range(size))
        if dtype == "mt.float32" and r.chance(70):
            return "mt.Tensor([%s], %s)" % (vals, shape_arg(r, shape))
        scale = ", scale=%s" % float_arg(r, "0.05") if q and r.chance(50) else ""
        return "mt.Tensor([%s], %s, dtype=%s%s)" % (vals, shape_arg(r, shape), dtype, scale)
    b = r.below(len(B))
    item = {"mt.float32": 4, "mt.float16": 2}.get(dtype, 1)
    if B[b] is not None and len(B[b]) == size * item:
        return "mt.frombuffer(B[%d], %s, %s)" % (b, shape_arg(r, shape), dtype_arg(r, dtype))
    return "mt.frombuffer(buf(%d, %d), %s, %s)" % (b, size * item, shape_arg(r, shape), dtype)


# -- what a layer takes and gives (hints for drawing fitting inputs) ------------------------


def children(obj):
    name = type(obj).__name__
    try:
        if name == "Sequential":
            return list(obj)
        if name == "Residual":
            return [obj.body]
    except Exception:
        pass
    return []


def config(obj):
    try:
        return obj.config()
    except Exception:
        return {}


def in_dtype(r, obj):
    # The dtype obj takes as input (a guess from its type and dtype).
    name = type(obj).__name__
    kids = children(obj)
    if kids:
        return in_dtype(r, kids[0])
    try:
        d = obj.dtype
    except Exception:
        d = None
    if name == "Convert":
        return "float32" if d in ("int8", "float16") else r.pick(("int8", "float16"))
    if d in ("float32", "float16", "int8"):
        return d
    if d == "mixed":
        return "float32"
    return r.pick(("float32", "float32", "float16", "int8"))


def input_hint(r, obj, batch=None):
    # A plausible input shape for obj: its planned shape, else from its (first) layer's config.
    b = batch or r.pick((1, 1, 2, 3))
    try:
        s = obj.input_shape
        if s and r.chance(85):
            return (b,) + tuple(s)[1:] if batch else tuple(s)
    except Exception:
        pass
    name = type(obj).__name__
    kids = children(obj)
    if kids:
        # Layers without a config that fixes the shape pass it on: look further in.
        for k in kids:
            if type(k).__name__ in ("Linear", "Conv1d", "Conv2d", "BatchNorm2d", "Sequential", "Residual"):
                return input_hint(r, k, b)
        return (b, r.pick((2, 4)), r.pick((2, 4)), r.pick((1, 2)))
    c = config(obj)
    if name == "Linear":
        return (b, c.get("in_features", 4))
    if name == "Conv1d":
        return (b, r.pick((3, 4, 6, 8)), c.get("in_channels", 2))
    if name == "Conv2d":
        return (b, r.pick((3, 4, 5, 6)), r.pick((3, 4, 5)), c.get("in_channels", 2))
    if name == "BatchNorm2d":
        return (b, r.pick((1, 2, 3)), r.pick((1, 2, 3)), c.get("num_features", 2))
    if name in ("MaxPool2d", "AvgPool2d", "GlobalAvgPool"):
        return (b, r.pick((2, 4, 6)), r.pick((2, 4)), r.pick((1, 2, 3)))
    return rand_shape(r)


def classes(obj):
    # The width of obj's output if its last layer with a config says (Linear), else None.
    try:
        s = obj.output_shape
        if s:
            return s[-1]
    except Exception:
        pass
    kids = children(obj)
    for k in reversed(kids):
        n = classes(k)
        if n:
            return n
        if type(k).__name__ not in ("Convert", "ReLU", "ReLU6", "Softmax", "Flatten"):
            break
    return config(obj).get("out_features")


def input_code(r, obj, batch=None):
    if r.bad(8):
        return hostile(r)
    if r.bad(6):
        return tensor_code(r)
    d = in_dtype(r, obj)
    if r.bad(8):
        d = r.pick(("float32", "float16", "int8"))
    return tensor_code(r, input_hint(r, obj, batch), "mt." + d)


def target_code(r, obj, loss, batch):
    # Labels for cross_entropy, a Tensor for mse, for a batch of `batch`.
    if r.bad(6):
        return hostile(r)
    n = classes(obj) or r.pick((2, 3, 4))
    if loss == "mt.mse":
        shape = (batch, n)
        if r.bad(15):
            shape = (n, batch) if r.chance(50) else (batch * n,)
        return tensor_code(r, shape, "mt.float32")
    if batch == 1 and r.chance(40):
        return str(r.below(n)) if not r.bad(10) else r.pick(HUGE)
    labels = [str(r.below(n)) for _ in range(batch)]
    if r.bad(10):
        labels[r.below(batch)] = r.pick(HUGE + ["%d" % n])
    if r.bad(5):
        labels.append("0")
    return "[%s]" % ", ".join(labels)


def batch_of(r, obj):
    try:
        s = obj.input_shape
        if s and r.chance(70):
            return s[0]
    except Exception:
        pass
    return r.pick((1, 1, 2, 3))


def grad_code(r, obj):
    try:
        shape = tuple(obj.output_shape or ())
    except Exception:
        shape = ()
    if not shape or r.bad(10):
        return tensor_code(r)
    try:
        d = obj.dtype
    except Exception:
        d = None
    d = d if d in ("float32", "float16", "int8") else "float32"
    if r.bad(10):
        shape = tuple(reversed(shape)) if r.chance(50) else (shape[0], -1)
        if -1 in shape:
            n = 1
            for x in obj.output_shape[1:]:
                n *= x
            shape = (shape[0], n)
    return tensor_code(r, shape, "mt." + d if not r.bad(10) else r.pick(ACT_DTYPES))


# -- constructors -----------------------------------------------------------------------------


def layer_dtype_kw(r, choices=DTYPES):
    if r.chance(45):
        return ""
    return ", dtype=%s" % dtype_arg(r, r.pick(choices))


def new_linear(r):
    return "mt.Linear(%s, %s%s%s)" % (int_arg(r, small(r)), int_arg(r, small(r)),
                                      ", bias=False" if r.chance(15) else "", layer_dtype_kw(r))


def kernel_arg(r):
    if not r.bad(20):
        return str(r.pick((1, 2, 3, 3, 5)))
    return r.pick(("(1, 3)", "(3, 1)", "(2, 2)", "0", "-1", "2**31-1", "65536", "(3,)", "(1, 2, 3)"))


def conv_args(r):
    cin = small(r)
    groups = 1
    if r.chance(25):
        groups = cin  # depthwise
    cout = cin * r.pick((1, 2)) if groups > 1 else small(r)
    if r.bad(10):
        groups = r.pick((2, 3, 0, -1))
    kw = ""
    if r.chance(40):
        kw += ", stride=%s" % (r.pick(("1", "2", "3", "(1, 2)")) if not r.bad(15) else r.pick(("0", "-1", "2**31-1")))
    if r.chance(40):
        kw += ", padding=%s" % (r.pick(("1", "1", "2", "0", "(1, 0)")) if not r.bad(15) else r.pick(("-1", "16384", "2**31-1")))
    if groups != 1:
        kw += ", groups=%d" % groups
    if r.chance(10):
        kw += ", bias=False"
    return "%s, %s, %s%s%s" % (int_arg(r, cin), int_arg(r, cout), kernel_arg(r), kw, layer_dtype_kw(r))


def new_pool(r, name):
    kw = ""
    if r.chance(30):
        kw += ", stride=%s" % r.pick(("1", "2", "None", "(2, 1)") if not r.bad(20) else ("0", "-1"))
    if r.chance(20):
        kw += ", padding=%s" % r.pick(("0", "1") if not r.bad(20) else ("2", "-1", "5"))
    return "mt.%s(%s%s)" % (name, r.pick(("2", "2", "3", "1", "(2, 1)") if not r.bad(10) else ("0", "-1", "65536")), kw)


def pooled_layer(r):
    # A layer object from the pool if there is one (object reuse), else a fresh one.
    if r.chance(35):
        i = r.below(N_SLOTS)
        if hasattr(P[i], "forward"):
            return "P[%d]" % i
    return new_layer(r, simple=True)


def new_layer(r, simple=False):
    k = r.below(17 if not simple else 14)
    if k in (0, 1, 12, 13):
        return new_linear(r)
    if k == 2 or k == 3:
        return "mt.Conv2d(%s)" % conv_args(r)
    if k == 4:
        return "mt.Conv1d(%s)" % conv_args(r)
    if k == 5:
        return r.pick(("mt.ReLU()", "mt.ReLU6()", "mt.Softmax()", "mt.Flatten()", "mt.GlobalAvgPool()"))
    if k == 6:
        return new_pool(r, r.pick(("MaxPool2d", "AvgPool2d")))
    if k == 7:
        return "mt.BatchNorm2d(%s%s%s)" % (int_arg(r, small(r)),
                                           ", eps=%s" % float_arg(r, "1e-5") if r.chance(20) else "",
                                           ", momentum=%s" % float_arg(r, "0.1") if r.chance(20) else "")
    if k == 8:
        return "mt.Convert(%s)" % dtype_arg(r, r.pick(ACT_DTYPES))
    if k == 9:
        return "mt.Add()"
    if k == 10:
        return "mt.BatchNorm2d(%d, dtype=%s)" % (small(r), r.pick(ACT_DTYPES))
    if k == 11:
        return r.pick(("mt.ReLU()", "mt.Flatten()"))
    if k == 14:
        return "mt.Sequential(%s)" % ", ".join(pooled_layer(r) for _ in range(1 + r.below(4)))
    if k == 15:
        body = pooled_layer(r)
        return "mt.Residual(%s%s)" % (body, ", " + pooled_layer(r) if r.chance(30) else "")
    return new_model(r)


def new_model(r):
    # A well-formed model, so that training reaches the kernels (every dtype).
    d = r.pick(("float32", "float32", "float16", "int8", "int8", "mixed"))
    c, h, n = small(r), small(r) + 1, r.pick((2, 3, 4))
    dk = "" if d == "float32" else ", dtype=mt.%s" % d
    pre, post = "", ""
    if d in ("float16", "int8"):
        pre, post = "mt.Convert(mt.%s), " % d, ", mt.Convert(mt.float32)"
    bnd = "" if d in ("float32", "mixed") else ", dtype=mt.%s" % d
    k = r.below(8)
    if k == 0:
        body = "mt.Linear(%d, %d%s), mt.ReLU(), mt.Linear(%d, %d%s)" % (c, h, dk, h, n, dk)
    elif k == 1:
        body = "mt.Conv2d(%d, %d, 3, padding=1%s), mt.ReLU(), mt.MaxPool2d(2), mt.GlobalAvgPool(), mt.Flatten(), mt.Linear(%d, %d%s)" % (
            c, h, dk, h, n, dk)
    elif k == 2:
        body = "mt.Conv2d(%d, %d, 3, groups=%d, padding=1%s), mt.ReLU6(), mt.Conv2d(%d, %d, 1%s), mt.AvgPool2d(2), mt.GlobalAvgPool(), mt.Flatten(), mt.Linear(%d, %d%s)" % (
            c, c, c, dk, c, h, dk, h, n, dk)
    elif k == 3:
        body = "mt.Conv2d(%d, %d, 3, stride=2, padding=1%s), mt.BatchNorm2d(%d%s), mt.ReLU(), mt.GlobalAvgPool(), mt.Flatten(), mt.Linear(%d, %d%s)" % (
            c, h, dk, h, bnd, h, n, dk)
    elif k == 4:
        body = "mt.Conv1d(%d, %d, 3, padding=1%s), mt.ReLU(), mt.GlobalAvgPool(), mt.Flatten(), mt.Linear(%d, %d%s)" % (
            c, h, dk, h, n, dk)
    elif k == 5:
        body = "mt.Conv2d(%d, %d, 1%s), mt.Residual(mt.Sequential(mt.Conv2d(%d, %d, 3, padding=1%s), mt.ReLU())), mt.GlobalAvgPool(), mt.Flatten(), mt.Linear(%d, %d%s)" % (
            c, h, dk, h, h, dk, h, n, dk)
    elif k == 6:
        body = "mt.Linear(%d, %d%s), mt.Softmax()" % (c, n, dk)
    else:
        body = "mt.Conv2d(%d, %d, 3, padding=1%s), mt.BatchNorm2d(%d%s), mt.ReLU(), mt.Residual(mt.Sequential(mt.Conv2d(%d, %d, 3, padding=1, groups=%d%s), mt.ReLU()), mt.Conv2d(%d, %d, 1%s)), mt.GlobalAvgPool(), mt.Flatten(), mt.Linear(%d, %d%s)" % (
            c, h, dk, h, bnd, h, h, h, dk, h, h, dk, h, n, dk)
    return "mt.Sequential(%s%s%s)" % (pre, body, post)


def policy_code(r):
    k = r.below(8)
    if k == 0:
        return "mt.TopK(%s)" % float_arg(r, r.pick(("0.1", "0.5", "1.0")))
    if k == 1:
        return "mt.TopK(%s, %s)" % (float_arg(r, "0.1"), float_arg(r, "0.5"))
    if k == 2:
        return "mt.ChannelRatio(%s)" % float_arg(r, r.pick(("0.25", "0.5", "1.0")))
    if k == 3:
        return "mt.BiasOnly()"
    if k == 4:
        return "mt.LastLayers(%s)" % int_arg(r, r.pick((1, 2)))
    if k == 5:
        return r.pick(("mt.Full()", "mt.Frozen()"))
    if k == 6:
        return "{%s: %s}" % (r.pick(("'0'", "'1'", "'2'", "'x'", "'0.body.0'", "0", "'4.body.0'")), policy_code(r))
    return slot_ref(r)


def model_ref(r):
    for _ in range(6):
        i = r.below(N_SLOTS)
        if hasattr(P[i], "parameters"):
            return "P[%d]" % i
    return slot_ref(r) if r.bad(30) else new_model(r)


def optimizer_code(r, m=None):
    m = m or model_ref(r)
    kw = ""
    if r.chance(50):
        kw += ", update=%s" % policy_code(r)
    if r.chance(60):
        kw2 = ""
        if r.chance(40):
            kw2 += ", momentum=%s" % float_arg(r, "0.9")
        if r.chance(20):
            kw2 += ", weight_decay=%s" % float_arg(r, "0.01")
        if r.chance(20):
            kw2 += ", standardize=%s" % r.pick(("True", "False") if not r.bad(30) else ("None", "2"))
        if r.chance(20):
            kw2 += ", rounding=%s" % r.pick(("'nearest'", "'stochastic'") if not r.bad(30) else ("'up'", "None"))
        return "mt.SGD(%s, %s%s%s)" % (m, float_arg(r, "0.01"), kw2, kw)
    kw2 = ""
    if r.chance(30):
        kw2 += ", betas=%s" % r.pick(("(0.9, 0.999)", "(0.5, 0.9)") if not r.bad(40) else ("(1.0, 1.0)", "(nan, 0.9)", "(0.9,)", "None"))
    if r.chance(20):
        kw2 += ", eps=%s" % float_arg(r, "1e-8")
    if r.chance(20):
        kw2 += ", weight_decay=%s" % float_arg(r, "0.01")
    return "mt.Adam(%s%s%s%s)" % (m, (", lr=%s" % float_arg(r, "0.001")) if r.chance(60) else "", kw2, kw)


def optim_ref(r, model=None):
    # A pooled optimizer (perhaps built for another model: reuse), or a fresh one for `model`.
    if model is not None and r.chance(45):
        return optimizer_code(r, model)
    for _ in range(6):
        i = r.below(N_SLOTS)
        if hasattr(P[i], "zero_grad"):
            return "P[%d]" % i
    return slot_ref(r) if r.bad(40) else optimizer_code(r, model)


def loss_ref(r):
    return hostile(r) if r.bad(4) else r.pick(("mt.cross_entropy", "mt.mse"))


def calib_code(r, obj):
    n = r.pick((1, 2, 3))
    return "[%s]" % ", ".join(tensor_code(r, input_hint(r, obj), "mt.float32") for _ in range(n))


def new_object(r):
    k = r.below(20)
    if k < 4:
        return tensor_code(r)
    if k < 10:
        return new_layer(r)
    if k < 13:
        return new_model(r)
    if k < 16:
        return optimizer_code(r)
    if k == 16:
        return policy_code(r)
    if k == 17:
        return "bytearray(%d)" % r.pick((1, 4, 8, 16, 24, 48))
    if k == 18:
        m = model_ref(r)
        return r.pick(("mt.fold_batchnorm(%s)" % m, "mt.dequantize(%s)" % m, quantize_code(r, m)))
    return r.pick(("mt.cross_entropy", "mt.mse", "mt.Metrics(every=%s)" % int_arg(r, 2)))


def quantize_code(r, m):
    try:
        obj = eval(m, G)
    except Exception:
        obj = None
    extra = ""
    if r.chance(25):
        extra = r.pick((", keep_float=(0,)", ", samples=1", ", keep_float=('0',)", ", keep_float=('1',)")
                       if not r.bad(30) else (", samples=0", ", samples=-1", ", keep_float=('x',)"))
    return "mt.quantize(%s, %s%s)" % (m, calib_code(r, obj) if not r.bad(10) else hostile(r), extra)


# -- scenarios: valid sequences that reach the engine's deep paths ------------------------------


def scenario(r, i):
    m = "P[%d]" % i
    obj = P[i]
    b = batch_of(r, obj)
    k = r.below(10)
    loss = loss_ref(r)
    if classes(obj) is None and loss == "mt.cross_entropy" and r.chance(60):
        loss = "mt.mse"
    if k < 3:
        return "%s.train_step(%s, %s, %s, %s)" % (m, input_code(r, obj, b), target_code(r, obj, loss, b), loss, optim_ref(r, m))
    if k == 3:
        return "%s.forward(%s); %s.backward(%s.backward(%s.output, %s)%s)" % (
            m, input_code(r, obj, b), m, loss, m, target_code(r, obj, loss, b), (", " + optim_ref(r, m)) * r.chance(50))
    if k == 4:
        # backward without an optimizer, then opt.step() (the .grad path), sometimes twice.
        o = optim_ref(r, m) if r.chance(70) else "P[%d]" % r.below(N_SLOTS)
        dy = "%s.backward(%s.output, %s)" % (loss, m, target_code(r, obj, loss, b)) if r.chance(85) else grad_code(r, obj)
        return "o = %s; %s.forward(%s); %s.backward(%s); o.step()%s" % (
            o, m, input_code(r, obj, b), m, dy, "; o.step()" * r.chance(15) + "; o.zero_grad()" * r.chance(30))
    if k == 5:
        return "%s.evaluate(%s, %s%s)" % (m, input_code(r, obj, b), target_code(r, obj, loss, b), (", " + loss) * r.chance(50))
    if k == 6:
        return "P[%d] = %s" % (r.below(N_SLOTS), quantize_code(r, m))
    if k == 7:
        return "P[%d] = %s.predict(%s)" % (r.below(N_SLOTS), m, input_code(r, obj, b))
    if k == 8:
        return "mt.save(%s, 'fz.mtm'); P[%d] = mt.load('fz.mtm')" % (m, r.below(N_SLOTS))
    return "P[%d] = mt.Sequential(%s, %s)" % (r.below(N_SLOTS), m, pooled_layer(r))


# -- methods, attributes ----------------------------------------------------------------------


def method_args(r, obj, name):
    # Arguments for obj.name(...): mostly valid, sometimes near-valid or hostile.
    if r.bad(4):
        return ", ".join(hostile(r) for _ in range(r.below(4)))
    loss = loss_ref(r)
    tname = type(obj).__name__
    b = batch_of(r, obj)
    if name == "forward":
        if tname == "Add":
            x = input_code(r, obj)
            return "%s, %s" % (x, x if r.chance(50) else tensor_code(r))
        return input_code(r, obj, b) + (", training=%s" % r.pick(("False", "True", "None"))) * r.chance(30)
    if name == "backward":
        if tname == "Loss":
            return "%s, %s" % (slot_ref(r), target_code(r, obj, "mt.mse" if obj is mt.mse else "mt.cross_entropy", 1))
        return grad_code(r, obj) + (", " + optim_ref(r)) * r.chance(40)
    if name == "train_step":
        return "%s, %s, %s, %s" % (input_code(r, obj, b), target_code(r, obj, loss, b), loss, optim_ref(r))
    if name == "evaluate":
        return "%s, %s%s" % (input_code(r, obj, b), target_code(r, obj, loss, b), (", " + loss) * r.chance(50))
    if name == "predict":
        return input_code(r, obj, b)
    if name == "load_state_dict":
        j = r.below(N_SLOTS)
        if r.chance(70) and hasattr(P[j], "state_dict"):
            return "P[%d].state_dict()" % j
        return r.pick(("{}", "{'0.weight': %s}" % tensor_code(r), "{'weight': %s, 'x': 1}" % tensor_code(r), "None"))
    if name in ("memory", "macs"):
        return shape_code(input_hint(r, obj)) if r.chance(50) else ("" if not r.bad(20) else shape_arg(r))
    if name == "fold_into":
        return pooled_layer(r)
    if name == "copy_from":
        return tensor_code(r, getattr(obj, "shape", None), "mt." + str(getattr(obj, "dtype", "float32")))
    if name == "fill":
        if getattr(obj, "dtype", None) == "int8":
            return int_arg(r, r.below(255) - 127)
        return float_arg(r, r.pick(("0.5", "1.0", "-2.0")))
    if name == "reshape":
        return shape_arg(r, tuple(reversed(getattr(obj, "shape", (1,)))))
    if name in ("step", "epoch", "done") and tname == "Metrics":
        return "loss=%s" % float_arg(r, "0.5")
    return ""


SETTABLE = {
    "trainable": lambda r, o: r.pick(("True", "False") if not r.bad(30) else ("0", "None")),
    "quant_range": lambda r, o: r.pick(("(-1.0, 1.0)", "(0.0, 6.0)", "None") if not r.bad(40) else (
        "(1.0, -1.0)", "(nan, 1.0)", "(-inf, inf)", "(0.0, 0.0)", "(1,)", "(1e38, 1e38)", "1.0", "(-1e-30, 1e-30)")),
    "lr": lambda r, o: float_arg(r, "0.01"),
    "momentum": lambda r, o: float_arg(r, "0.9"),
    "weight_decay": lambda r, o: float_arg(r, "0.0"),
    "standardize": lambda r, o: r.pick(("True", "False")),
    "rounding": lambda r, o: r.pick(("'nearest'", "'stochastic'", "'x'", "None")),
    "scale": lambda r, o: float_arg(r, "0.05"),
    "zero_point": lambda r, o: int_arg(r, r.pick((0, -128, 127, 3))),
    "grad": lambda r, o: tensor_code(r, tuple(getattr(o, "shape", ()) or (2,)), r.pick(("mt.float32", "mt.float32", "mt.float16", "mt.int8")))
    if r.chance(85) else "None",
    "weight": lambda r, o: tensor_code(r, tuple(o.weight.shape) if getattr(o, "weight", None) is not None else None),
    "bias": lambda r, o: tensor_code(r, tuple(o.bias.shape) if getattr(o, "bias", None) is not None else None),
    "step_count": lambda r, o: int_arg(r, 1),
    "selected": lambda r, o: r.pick(("[0]", "None", "(0, 1)")),
}
# Attributes whose values go into a slot (an output buffer, a grad, a weight alias, a child
# layer...) where later calls use them as inputs, mutate them or assign them elsewhere.
KEEPERS = ("output", "weight", "bias", "grad", "running_mean", "running_var", "body", "shortcut", "weight_scale")


# Methods of builtin results (dicts from state_dict(), lists, ints) worth calling: the ones that
# read. `clear()` then `copy()` of a user's own dict trips UBSan in MicroPython's core (a
# memcpy from a NULL table), which is not ours to find; `copy()` of an mcutrain dict stays.
BUILTIN_METHODS = ("copy", "keys", "values", "items", "get", "index", "count")


def attr_call(r, i, obj):
    names = [n for n in dir(obj) if not n.startswith("_")]
    if isinstance(obj, BUILTIN):
        names = [n for n in names if n in BUILTIN_METHODS]
    if not names:
        return "P[%d] = %s" % (i, new_object(r))
    name = r.pick(names)
    if name in ("parameters", "state_dict") and r.chance(40):
        # A parameter of this model given to another (or to itself, twice).
        return "P[%d] = %s.%s()%s" % (r.below(N_SLOTS), "P[%d]" % i, name,
                                      "[0]" if name == "parameters" else "")
    try:
        attr = getattr(obj, name)
    except Exception:
        attr = None
    if callable(attr) and name not in KEEPERS:
        call = "P[%d].%s(%s)" % (i, name, method_args(r, obj, name))
        if r.chance(25):
            return "P[%d] = %s" % (r.below(N_SLOTS), call)
        return call
    settable = name in SETTABLE or name in KEEPERS
    if not settable or r.chance(40):
        if r.chance(60):
            return "P[%d] = P[%d].%s" % (r.below(N_SLOTS), i, name)
        return "P[%d].%s" % (i, name)
    if name in SETTABLE and not r.bad(15):
        value = SETTABLE[name](r, obj)
    elif r.chance(50):
        value = slot_ref(r)  # another pool object: a grad, a weight of another layer...
    else:
        value = hostile(r)
    return "P[%d].%s = %s" % (i, name, value)


def method_call(r):
    i = r.below(N_SLOTS)
    obj = P[i]
    if isinstance(obj, BUILTIN) and r.chance(90):
        # Builtin results (ints, dicts) are rarely worth a call: train a pooled model instead.
        for _ in range(4):
            j = r.below(N_SLOTS)
            if hasattr(P[j], "train_step"):
                return scenario(r, j)
        i = r.below(N_SLOTS)
        obj = P[i]
    if obj is None:
        return "P[%d] = %s" % (i, new_object(r))
    if type(obj) is bytearray:
        k = r.below(3)
        if k == 0:
            return "P[%d].extend(bytes(%d))" % (i, r.pick((1, 4, 64)))
        if k == 1:
            return "P[%d][%d:] = b''" % (i, r.below(8))
        return "P[%d] = mt.frombuffer(P[%d], (%d,), mt.int8)" % (r.below(N_SLOTS), i, max(1, len(obj)))
    if hasattr(obj, "train_step") and r.chance(45):
        return scenario(r, i)
    return attr_call(r, i, obj)


def item_call(r):
    i = r.below(N_SLOTS)
    k = r.below(6)
    if k == 0:
        return "len(P[%d])" % i
    if k == 1:
        return "P[%d] = P[%d][%s]" % (r.below(N_SLOTS), i, int_arg(r, r.below(3)))
    if k == 2:
        return "list(P[%d])" % i
    if k == 3:
        return "repr(P[%d])" % i
    if k == 4:
        return "P[%d][%s] = %s" % (i, int_arg(r, 0), float_arg(r, "1.5"))
    return "memoryview(P[%d])[%s]" % (i, int_arg(r, 0))


def buffer_call(r):
    b = r.below(len(B))
    if B[b] is None or r.chance(20):
        return "B[%d] = bytearray(%d)" % (b, r.pick((4, 8, 16, 32, 64)))
    k = r.below(3)
    if k == 0:
        return "B[%d].extend(bytes(%d))" % (b, r.pick((4, 64, 1024)))
    if k == 1:
        return "B[%d][%d:] = b''" % (b, r.below(max(1, len(B[b]))))
    return "B[%d][%d] = %d" % (b, r.below(max(1, len(B[b]))), r.below(256))


def function_call(r):
    k = r.below(10)
    a, b = slot_ref(r), slot_ref(r)
    if k == 0:
        return "mt.dot(%s, %s)" % (a, b)
    if k == 1:
        return "mt.seed(%s)" % int_arg(r, r.below(100))
    if k == 2:
        return "mt.cross_entropy(%s, %s)" % (a, target_code(r, None, "mt.cross_entropy", 1))
    if k == 3:
        return "mt.mse(%s, %s)" % (a, b if r.chance(50) else tensor_code(r, getattr(P[0], "shape", None)))
    if k == 4:
        return "mt.cross_entropy.backward(%s, %s)" % (a, target_code(r, None, "mt.cross_entropy", 2))
    if k == 5:
        return "%s.backward(%s)" % (a, b)
    if k == 6:
        return "mt.Tensor(%s, %s)" % (r.pick(("[]", "[[]]", "[1, [2]]", "[[1, 2], [3]]", "[[[[[1]]]]]", "b'\\x01'",
                                              "bytearray(3)", "[nan, inf]", "[1e40]", "[[1], [2]]")), shape_arg(r))
    if k == 7:
        return "mt.zeros(%s, %s)" % (shape_arg(r), dtype_arg(r))
    if k == 8:
        return "gc.collect()"
    return "mt.Sequential(%s, %s)" % (a, b)


def gen_call(r):
    k = r.below(100)
    if k < 17:
        return "P[%d] = %s" % (r.below(N_SLOTS), new_object(r))
    if k < 82:
        return method_call(r)
    if k < 86:
        return item_call(r)
    if k < 90:
        return buffer_call(r)
    if k < 97:
        return function_call(r)
    return "P[%d] = None" % r.below(N_SLOTS)


def describe(e):
    return str(e).replace("\n", " ")[:100]


# Heap canaries: small byte strings spread through the heap between the calls' allocations. The
# GC heap is invisible to ASan, so an out-of-bounds write into it shows only when it lands on one.
PATTERN = b"\xa5\x5a" * 12
CANARIES = []


def check_canaries(i):
    for c in CANARIES:
        if c != PATTERN:
            print("#CORRUPT %d canary changed: %s" % (i, bytes(c[:24]).hex()))
            c[:] = PATTERN
            return 1
    return 0


def calls(seed, start, count):
    # (index, source) of each call: generated, or REPLAY's sources (api.py's minimizer).
    if REPLAY is not None:  # noqa: F821
        for i, src in enumerate(REPLAY):  # noqa: F821
            yield i, src
        return
    for i in range(start, start + count):
        r = Rng(seed, i)
        MODE[0] = r.pick((0, 0, 0, 0, 0, 0, 1, 1, 1, 3))
        try:
            src = gen_call(r)
            # AVOID (from the host, optional): substrings of calls not to make, e.g. a known
            # crash that would end every chunk before the calls after it can find anything new.
            tries = 0
            while tries < 20 and any(a in src for a in AVOID):  # noqa: F821
                src = gen_call(r)
                tries += 1
        except Exception as e:  # a generator bug reading some odd object: count it, go on
            src = "None  # gen %s: %s" % (type(e).__name__, describe(e))
        yield i, src


def run(seed, start, count):
    # A chunk must not see an earlier chunk's saved model: replays would differ.
    try:
        import os
        os.remove("fz.mtm")
    except Exception:
        pass
    exc = {}
    made = 0
    corrupt = 0
    for i, src in calls(seed, start, count):
        print("@%d %s" % (i, src))
        made += 1
        try:
            exec(src, G)
        except Exception as e:
            name = type(e).__name__
            exc[name] = exc.get(name, 0) + 1
            print("!%d %s %s" % (i, name, describe(e)))
        if len(CANARIES) < 48 and i % 3 == 0:
            CANARIES.append(bytearray(PATTERN))
        elif CANARIES and i % 7 == 0:
            CANARIES[i % len(CANARIES)] = bytearray(PATTERN)  # move some, so they land in new gaps
        corrupt += check_canaries(i)
    print("=S " + json.dumps({"calls": made, "exceptions": exc, "corrupt": corrupt}))


run(SEED, START, COUNT)  # noqa: F821  (defined by the host's prelude)
