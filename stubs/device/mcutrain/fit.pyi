# mcutrain.fit on the device: mt.fit / mt.evaluate, the training loop of the examples.
from typing import Any, Callable

from . import _Layer, _Loss, _Optimizer
from .halting import EarlyStop, SampleSkip
from .metrics import Metrics

def evaluate(model: _Layer, data: Any, loss: _Loss = ..., batch: int = ..., convert: bool = ...) -> tuple[float, float | None]: ...
def fit(model: _Layer, data: Any, opt: _Optimizer, loss: _Loss = ..., epochs: int = ..., batch: int = ...,
        val: Any = ..., val_batch: int = ..., schedule: Callable[[int], float] | float | None = ...,
        checkpoint: str | None = ..., monitor: str | None = ..., metrics: Metrics | bool | None = ...,
        skip: SampleSkip | None = ..., stop: EarlyStop | None = ..., shuffle: bool = ..., seed: int | None = ...,
        convert: bool = ..., train_accuracy: bool = ...) -> dict[str, Any]: ...
