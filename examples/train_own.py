# Train your own exported model on your own dataset, on the board: the README's quickstart.
#
#   mcutrain push-dataset my_data.npz --dtype int8      # -> my_data.mtd on the board's flash
#   mcutrain push-model model.pt                        # -> model.mtm (exported on the way)
#   mcutrain run examples/train_own.py --collect results/mine -- my_data.mtd model.mtm 5
#   mcutrain pull model.mtm trained.pt --like model.pt  # back into your PyTorch module
#
# Arguments: DATASET MODEL [EPOCHS [LR [BATCH]]] [VAL=held_out.mtd]. The trained model
# replaces MODEL: with VAL, the best epoch's (by held-out accuracy); without, the last one.
import sys

import mcutrain as mt

args = [a for a in sys.argv[1:] if "=" not in a]
options = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
if len(args) < 2:
    raise SystemExit("usage: train_own.py DATASET MODEL [EPOCHS [LR [BATCH]]] [VAL=file.mtd]")
DATASET, MODEL = args[0], args[1]
EPOCHS = int(args[2]) if len(args) > 2 else 5
LR = float(args[3]) if len(args) > 3 else 0.01
BATCH = int(args[4]) if len(args) > 4 else 8

model = mt.load(MODEL)
train = mt.Dataset(DATASET)
val = mt.Dataset(options["VAL"]) if "VAL" in options else None
int8 = any(getattr(layer, "dtype", None) == "int8" for layer in model)
opt = mt.SGD(model, lr=LR, rounding="stochastic") if int8 else mt.SGD(model, lr=LR, momentum=0.9)
print("model:", len(model), "layers;", len(train), "samples of", train.sample_shape, train.dtype)
history = mt.fit(model, train, opt, epochs=EPOCHS, batch=BATCH, val=val, schedule=0.9,
                 checkpoint=MODEL if val is not None else None, seed=1)
if val is None:
    mt.save(model, MODEL)  # without held-out data the last weights are the result
print("done:", history["epochs"], "epochs; train accuracy", history["accuracy"][-1],
      "; best held-out", history["best"])
