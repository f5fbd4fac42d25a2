# Device script: kernel and training-step benchmarks (fp32, float16, int8, mixed), one "@bench {json}"
# line per case.
# Instruction counts come from mt.perf_counter(), exact on the emulated boards (1 count =
# 1 guest instruction under QEMU -icount shift=0). Each case runs once to plan its
# buffers, then is measured on a second, allocation-free run.
import gc
import json

import mcutrain as mt

TARGET = "unknown"  # set by bench/run.py
# set by bench/run.py: "layers" (layer steps and the small models; the default, run on the
# board's 256 KB heap) or "models" (whole-model steps, run on a bigger heap)
PART = "layers"


def report(case, macs, instructions, dtype="float32", **extra):
    fields = {"target": TARGET, "case": case, "dtype": dtype, "macs": macs,
              "instructions": instructions, "mac_per_instr": round(macs / instructions, 4)}
    fields.update(extra)
    print("@bench", json.dumps(fields))


def filled(shape, seed):
    # Deterministic, non-trivial values in [-1, 1).
    n = 1
    for d in shape:
        n *= d
    t = mt.zeros(n)
    s = seed
    for i in range(t.size):
        s = (s * 1103515245 + 12345) & 0x7fffffff
        t[i] = (s >> 8) / 4194304.0 - 1.0
    return t.reshape(shape)


def layer_train_step(case, make_layer, x_shape, dtype="float32"):
    """forward + input gradient + weight gradient + fused SGD update of one layer; float16
    and int8 layers get their input and output gradient converted by mt.Convert first (mixed
    layers take and give float32)."""
    gc.collect()
    layer = make_layer(dtype)
    x = filled(x_shape, 1)
    if dtype in ("float16", "int8"):
        x = mt.Convert(dtype).forward(x)
    opt = mt.SGD(layer, lr=0.001)
    y = layer.forward(x)
    dy = filled(y.shape, 2)
    if dtype in ("float16", "int8"):
        dy = mt.Convert(dtype).forward(dy)
    layer.backward(dy, opt)
    macs = layer.macs()
    gc.collect()
    t0 = mt.perf_counter()
    layer.forward(x)
    layer.backward(dy, opt)
    t1 = mt.perf_counter()
    # forward, input gradient and weight gradient each do the forward's MACs
    report(case, 3 * macs["forward"], t1 - t0, dtype)
    t0 = mt.perf_counter()
    layer.forward(x)
    t1 = mt.perf_counter()
    report(case.replace("_train", "_forward"), macs["forward"], t1 - t0, dtype)


def partial_train_step(case, make_layer, x_shape, update):
    """A training step whose update policy skips structures: forward, then a backward
    that does only the selected channels' work. Reports the backward's instructions
    next to the full update's."""
    backward = {}
    layer = opt = x = y = dy = None
    for policy in (None, update):
        layer = opt = x = y = dy = None  # free the last run's buffers before the next
        gc.collect()
        layer = make_layer()
        x = filled(x_shape, 1)
        opt = mt.SGD(layer, lr=0.001) if policy is None else mt.SGD(layer, lr=0.001, update=policy)
        y = layer.forward(x)
        dy = filled(y.shape, 2)
        layer.backward(dy, opt)
        gc.collect()
        t0 = mt.perf_counter()
        layer.forward(x)
        t1 = mt.perf_counter()
        layer.backward(dy, opt)
        t2 = mt.perf_counter()
        backward[policy is None] = t2 - t1
        forward = t1 - t0
    stats = layer.update_stats()
    macs = layer.macs()["forward"] + stats["backward_macs"]
    report(case, macs, forward + backward[False], backward_instructions=backward[False],
           full_backward_instructions=backward[True],
           backward_speedup=round(backward[True] / backward[False], 2))


def model_train_step(case, model, x_shape, labels):
    gc.collect()
    x = filled(x_shape, 3)
    opt = mt.SGD(model, lr=0.01, momentum=0.9)
    model.train_step(x, labels, mt.cross_entropy, opt)
    gc.collect()
    t0 = mt.perf_counter()
    model.train_step(x, labels, mt.cross_entropy, opt)
    t1 = mt.perf_counter()
    report(case, model.macs()["train_step"], t1 - t0, peak_ram_bytes=model.memory()["total"])


# The layer steps run in every dtype (bench/profile_step.py runs one by name): the layer and
# its input shape.
DTYPE_LAYER_CASES = {
    "conv3x3_16x16x16_32_train": (lambda d: mt.Conv2d(16, 32, 3, padding=1, dtype=d), (1, 16, 16, 16)),
    "dense_256_128_train": (lambda d: mt.Linear(256, 128, dtype=d), (1, 256)),
}

if PART == "layers":
    for dtype in ("float32", "float16", "int8", "mixed"):
        for case, (make, shape) in DTYPE_LAYER_CASES.items():
            layer_train_step(case, make, shape, dtype)
    layer_train_step("depthwise3x3_16x16x32_train", lambda d: mt.Conv2d(32, 32, 3, padding=1, groups=32, dtype=d),
                     (1, 16, 16, 32))
    layer_train_step("pointwise_8x8x32_64_train", lambda d: mt.Conv2d(32, 64, 1, dtype=d), (1, 8, 8, 32))
    partial_train_step("conv3x3_16x16x16_32_train_topk10", lambda: mt.Conv2d(16, 32, 3, padding=1),
                       (1, 16, 16, 16), mt.TopK(0.1))
    model_train_step("dense_64_32_10_train", mt.Sequential(mt.Linear(64, 32), mt.ReLU(), mt.Linear(32, 10)),
                     (1, 64), [3])
    model_train_step("cnn_digits_8x8_train",
                     mt.Sequential(mt.Conv2d(1, 8, 3, padding=1), mt.ReLU(), mt.MaxPool2d(2),
                                   mt.Conv2d(8, 16, 3, padding=1), mt.ReLU(), mt.MaxPool2d(2),
                                   mt.Flatten(), mt.Linear(64, 10)),
                     (1, 8, 8, 1), [3])


# Whole-model training steps: the models of examples/train_kws.py (DS-CNN, WIDTH=32, no
# BatchNorm), examples/train_digits.py (CNN) and an MLP 256-128-10, in float32, float16 and
# int8, plain SGD, the 5th (warm) step measured. float16 and int8 models take float32 input
# through a Convert layer; the int8 DS-CNN is quantized on the board by mt.quantize as
# examples/train_kws.py does it (its head stays float32 if this firmware's AvgPool2d cannot
# take int8), the others are built in int8 as examples/train_digits.py does. bench/run.py
# runs them on a 1 MiB heap: the batch-4 KWS step in float32 needs 0.5 MB, and mt.quantize
# holds the float model beside the int8 one (peak_ram_bytes is what the step itself needs).
WARM_STEPS = 4
KWS_WIDTH = 32
KWS_CLASSES = 12


def dscnn(dtype):
    w = KWS_WIDTH
    first = [mt.Convert(dtype)] if dtype == "float16" else []
    return mt.Sequential(
        *first,
        mt.Conv2d(1, w, (10, 4), stride=2, padding=(5, 1), dtype=dtype), mt.ReLU(),
        mt.Conv2d(w, w, 3, padding=1, groups=w, dtype=dtype), mt.ReLU(), mt.Conv2d(w, w, 1, dtype=dtype), mt.ReLU(),
        mt.Conv2d(w, w, 3, padding=1, groups=w, dtype=dtype), mt.ReLU(), mt.Conv2d(w, w, 1, dtype=dtype), mt.ReLU(),
        mt.AvgPool2d((5, 1)), mt.Flatten(), mt.Linear(5 * 5 * w, KWS_CLASSES, dtype=dtype))


def int8_avgpool():
    # As examples/train_kws.py: whether this firmware's AvgPool2d takes int8 input.
    try:
        mt.Sequential(mt.Convert(mt.int8), mt.AvgPool2d(1), mt.Convert(mt.float32)).predict(mt.zeros((1, 1, 1, 1)))
        return True
    except ValueError:
        return False


def kws_model(dtype):
    if dtype != "int8":
        return dscnn(dtype)
    model = dscnn("float32")
    keep = ()
    if not int8_avgpool():
        pool = [i for i in range(len(model)) if type(model[i]).__name__ == "AvgPool2d"]
        keep = tuple(range(pool[0], len(model)))
    calibration = [filled((1, 49, 10, 1), 10 + i) for i in range(4)]
    q = mt.quantize(model, calibration, keep_float=keep)
    model = calibration = None
    gc.collect()
    return q


def digits_model(dtype):
    first = [mt.Convert(dtype)] if dtype != "float32" else []
    return mt.Sequential(
        *first, mt.Conv2d(1, 8, 3, padding=1, dtype=dtype), mt.ReLU(), mt.MaxPool2d(2),
        mt.Conv2d(8, 16, 3, padding=1, dtype=dtype), mt.ReLU(), mt.MaxPool2d(2),
        mt.Flatten(), mt.Linear(64, 10, dtype=dtype))


def mlp_model(dtype):
    first = [mt.Convert(dtype)] if dtype != "float32" else []
    return mt.Sequential(*first, mt.Linear(256, 128, dtype=dtype), mt.ReLU(), mt.Linear(128, 10, dtype=dtype))


def every_conv(model, policy):
    """An update dict giving `policy` to every Conv2d/Conv1d of a Sequential (the head keeps
    its full update)."""
    return {str(i): policy for i in range(len(model)) if type(model[i]).__name__ in ("Conv2d", "Conv1d")}


def whole_model_step(case, make_model, sample_shape, classes, dtype, batch, conv_update=None):
    gc.collect()
    try:
        model = make_model(dtype)
        x = filled((batch,) + sample_shape, 3)
        labels = [(3 + 5 * i) % classes for i in range(batch)]
        update = every_conv(model, conv_update) if conv_update is not None else None
        if dtype == "int8":
            # as the examples: int8 layers train with plain SGD, new weights stochastically rounded
            opt = mt.SGD(model, lr=0.01, standardize=False, rounding="stochastic", update=update)
        else:
            opt = mt.SGD(model, lr=0.01, update=update)
        for _ in range(WARM_STEPS):
            model.train_step(x, labels, mt.cross_entropy, opt)
        gc.collect()
        t0 = mt.perf_counter()
        model.train_step(x, labels, mt.cross_entropy, opt)
        t1 = mt.perf_counter()
        report(case, model.macs()["train_step"], t1 - t0, dtype, batch=batch,
               peak_ram_bytes=model.memory()["total"])
    except MemoryError:
        print("@skip", json.dumps({"target": TARGET, "case": case, "dtype": dtype, "reason": "MemoryError"}))
    model = x = opt = None
    gc.collect()


WHOLE_MODELS = [("kws_dscnn", kws_model, (49, 10, 1), KWS_CLASSES)]
if TARGET != "qemu-rv32":  # soft float: the KWS steps alone take minutes there
    WHOLE_MODELS += [("digits_cnn", digits_model, (8, 8, 1), 10), ("mlp_256_128_10", mlp_model, (256,), 10)]
# Deutel et al.'s dynamic sparse update at 10%: TopK(0.1, 0.1) on every conv of the KWS
# DS-CNN, against the full update's step above.
TOPK_MODEL_CASES = {"kws_dscnn_train_b1_topk10": (kws_model, (49, 10, 1), KWS_CLASSES, 1)}
if PART == "models":
    for name, make, shape, classes in WHOLE_MODELS:
        for batch in (1, 4):
            for dtype in ("float32", "float16", "int8"):
                whole_model_step("%s_train_b%d" % (name, batch), make, shape, classes, dtype, batch)
    for case, (make, shape, classes, batch) in TOPK_MODEL_CASES.items():
        for dtype in ("float32", "int8"):
            whole_model_step(case, make, shape, classes, dtype, batch, mt.TopK(0.1, 0.1))
