# One federated round on the board (MicroPython; sent as a script, see board_round.py):
# train the global model on this board's own dataset with mt.fit and save it in place, or
# evaluate it. One `@mt` line reports the outcome. Arguments: --key value pairs (below).
import gc
import sys

import mcutrain as mt

ARGS = {"mode": "train", "model": "fleet_global.mtm", "data": "fleet_train.mtd", "epochs": "1",
        "steps": "0", "batch": "1", "lr": "0.01", "momentum": "0.9", "update": "full", "seed": "1"}
argv = sys.argv[1:]
for i in range(0, len(argv) - 1, 2):
    ARGS[argv[i].lstrip("-")] = argv[i + 1]


def policy(text):
    # "full", "topk:MIN[:MAX]", "last:K", "bias", "channels:RATIO"
    parts = text.split(":")
    if parts[0] == "full":
        return None
    if parts[0] == "topk":
        return mt.TopK(float(parts[1]), float(parts[2]) if len(parts) > 2 else None)
    if parts[0] == "last":
        return mt.LastLayers(int(parts[1]))
    if parts[0] == "bias":
        return mt.BiasOnly()
    if parts[0] == "channels":
        return mt.ChannelRatio(float(parts[1]))
    raise ValueError("unknown update policy " + text)


class Steps:
    # An mt.fit `stop` that ends training after a number of steps (fit asks spent() each step).
    mode = "min"
    reason = "steps"

    def __init__(self, steps):
        self.left = steps

    def spent(self):
        self.left -= 1
        return self.left <= 0

    def update(self, score):
        return False


model = mt.load(ARGS["model"])
gc.collect()  # mt.load's read buffers go before the training plan asks for its blocks
data = mt.Dataset(ARGS["data"])
quantized = False
for i in range(len(model)):
    if getattr(model[i], "dtype", "float32") in ("int8", "mixed") and type(model[i]).__name__ != "Convert":
        quantized = True
gc.collect()
if ARGS["mode"] == "evaluate":
    loss, accuracy = mt.evaluate(model, data)
    mt.report(kind="fleet", mode="evaluate", loss=loss, accuracy=accuracy, samples=len(data))
else:
    lr, update = float(ARGS["lr"]), policy(ARGS["update"])
    if quantized:  # int8 layers train with plain SGD and stochastic rounding (see train_digits.py)
        opt = mt.SGD(model, lr=lr, update=update, rounding="stochastic")
    else:
        opt = mt.SGD(model, lr=lr, momentum=float(ARGS["momentum"]), update=update)
    steps, batch = int(ARGS["steps"]), int(ARGS["batch"])
    epochs = int(ARGS["epochs"])
    if steps > 0:
        per_epoch = (len(data) + batch - 1) // batch
        epochs = (steps + per_epoch - 1) // per_epoch
    t0 = mt.perf_counter()
    history = mt.fit(model, data, opt, epochs=epochs, batch=batch, seed=int(ARGS["seed"]),
                     metrics=False, stop=Steps(steps) if steps > 0 else None)
    ticks = mt.perf_counter() - t0
    gc.collect()
    mt.save(model, ARGS["model"])
    seen = len(data) * (history["epochs"] - 1) + len(data) if steps <= 0 else steps * batch
    mt.report(kind="fleet", mode="train", loss=history["loss"][-1], accuracy=history["accuracy"][-1],
              samples=len(data), seen=seen, epochs=history["epochs"], ticks=ticks,
              peak_ram=model.memory()["total"])
