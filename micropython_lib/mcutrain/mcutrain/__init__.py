# mcutrain on the device: the C engine (_mcutrain) plus helpers that are easier in Python.
from _mcutrain import *  # noqa: F401,F403  Tensor, layers, losses, optimizers
from _mcutrain import version

from .clone import clone
from .dataset import Dataset, FormatError
from .divergence import DivergenceWatch
from .fit import evaluate, fit
from .halting import EarlyStop, RunningQuantile, SampleSkip
from .model_io import load, save
from .metrics import Metrics, report
from .quantize import dequantize, quantize

__version__ = version()


def fold_batchnorm(model):
    """A new Sequential for inference: a copy of model (a Sequential) with each top-level
    BatchNorm2d folded into the Conv2d, Conv1d or Linear before it. model is left as it is."""
    layers = []
    for layer in model:
        if type(layer).__name__ == "BatchNorm2d" and layers and layers[-1].weight is not None:
            layer.fold_into(layers[-1])  # into the copy
        else:
            layers.append(clone(layer))
    return Sequential(*layers)  # noqa: F405
