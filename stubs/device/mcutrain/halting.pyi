# mcutrain.halting on the device: early halting (our rule; docs/device-api.md, Early halting).
from typing import Any

from . import _Layer, _Loss, _Optimizer

class RunningQuantile:
    q: float
    rate: float
    value: float | None
    count: int
    def __init__(self, q: float = ..., rate: float = ...) -> None: ...
    def update(self, x: float) -> float: ...

class SampleSkip:
    quantile: RunningQuantile
    warmup: int
    max_skip: float
    seen: int
    skipped: int
    def __init__(self, q: float = ..., warmup: int = ..., max_skip: float = ..., rate: float = ...) -> None: ...
    def threshold(self) -> float | None: ...
    def step(self, model: _Layer, x: Any, y: Any, loss: _Loss, opt: _Optimizer) -> float: ...
    @property
    def fraction(self) -> float: ...
    def fields(self) -> dict[str, Any]: ...

class EarlyStop:
    patience: int | None
    min_delta: float
    mode: str
    budget: int | None
    seconds: float | None
    window: int | None
    best: float | None
    best_evaluation: int
    evaluations: int
    since_best: int
    reason: str | None
    def __init__(self, patience: int | None = ..., min_delta: float = ..., mode: str = ...,
                 budget: int | None = ..., seconds: float | None = ..., window: int | None = ...) -> None: ...
    def reset(self) -> None: ...
    def update(self, metric: float) -> bool: ...
    def spent(self) -> bool: ...
    def fields(self) -> dict[str, Any]: ...
