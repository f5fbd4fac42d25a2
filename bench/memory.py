# model.memory() of the same models in float32, float16 and int8: the bytes a training step
# plans (weights, errors, activations, optimizer state, kernel scratch), and each reduced
# dtype's share of float32's. Every dtype trains with plain SGD here, so none keeps optimizer
# state and the ratios compare the layers themselves.
#
#   mcutrain run bench/memory.py          # on the emulated M4F (the numbers are the same on every target)
import mcutrain as mt


def conv_pair(d):
    return [mt.Conv2d(8, 16, 3, padding=1, dtype=d), mt.ReLU(), mt.Conv2d(16, 8, 3, padding=1, dtype=d)]


def small_cnn(flat):
    def build(d):
        return [mt.Conv2d(1, 8, 3, padding=1, dtype=d), mt.ReLU(), mt.MaxPool2d(2),
                mt.Conv2d(8, 16, 3, padding=1, dtype=d), mt.ReLU(), mt.MaxPool2d(2),
                mt.Flatten(), mt.Linear(flat, 10, dtype=d)]
    return build


# name, layers for a dtype, input shape without the batch, and whether float16 and int8
# models take float32 input through a Convert layer (as the examples do: it keeps a converted
# copy of the input) or are given input in their own dtype.
MODELS = (
    ("conv pair 8-16-8, 12x12", conv_pair, (12, 12, 8), True),
    ("the same, input in its dtype", conv_pair, (12, 12, 8), False),
    ("digits CNN, 8x8", small_cnn(64), (8, 8, 1), True),
    ("Fashion CNN, 14x14", small_cnn(144), (14, 14, 1), True),
)


def grouped(n):
    # 12,345: MicroPython's format() has no thousands separator.
    s, out = str(n), ""
    while len(s) > 3:
        s, out = s[:-3], "," + s[-3:] + out
    return s + out


def total(build, dtype, shape, convert):
    first = [mt.Convert(dtype)] if convert and dtype != "float32" else []
    model = mt.Sequential(*first, *build(dtype))
    mt.SGD(model, lr=0.01)
    bytes_ = model.memory(shape)["total"]
    model.release()
    return bytes_


print("| model | batch | float32 | float16 | int8 |")
print("|---|---:|---:|---:|---:|")
for name, build, shape, convert in MODELS:
    for batch in (1, 4):
        fp32 = total(build, "float32", (batch,) + shape, convert)
        cells = [grouped(fp32) + " B"]
        for dtype in ("float16", "int8"):
            n = total(build, dtype, (batch,) + shape, convert)
            cells.append("%s B (%.2fx)" % (grouped(n), n / fp32))
        print("| " + name + " | " + str(batch) + " | " + " | ".join(cells) + " |")
