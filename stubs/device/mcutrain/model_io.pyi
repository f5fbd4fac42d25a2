# mcutrain.model_io on the device: .mtm models to and from flash.
from typing import Any, Sequence, Union

from . import Sequential, _Layer

def load(path: str) -> Sequential: ...
def save(model: _Layer, path: str, input_shape: Union[int, Sequence[int], None] = ...,
         meta: dict[str, Any] | None = ...) -> None: ...
