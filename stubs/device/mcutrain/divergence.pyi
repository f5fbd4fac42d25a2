# mcutrain.divergence on the device: flags a diverging run from its training losses.
LONG: float
LEARNED: float

class DivergenceWatch:
    warmup: int
    explode: float
    relapse: float
    steps: int
    start: float | None
    average: float
    best: float | None
    diverged: int | None
    reason: str | None
    def __init__(self, warmup: int = ..., explode: float = ..., relapse: float = ...) -> None: ...
    def step(self, loss: float) -> bool: ...
    def fields(self) -> dict[str, int | str]: ...
