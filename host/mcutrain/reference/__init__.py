"""numpy reference implementation of mcutrain's layers, losses and optimizers.

Use it to check exported models and results from a board: it follows the device's layouts
(channels-last, OHWI convolution weights, row-major (H, W, C) flatten), parameter names and
PyTorch's update rules, and computes in float64. The C engine's tests compare against it, and
it is itself checked by finite differences (tests/test_reference.py).

`functional` has one forward and one backward function per layer (plus losses and in-place
optimizer steps); `nn` has layer, model and optimizer classes mirroring the device API.
Everything from both is re-exported here.
"""

from . import functional, nn, partial, quantized
from .functional import *
from .nn import *

__all__ = ["functional", "nn", "partial", "quantized"]
__all__ += functional.__all__
__all__ += nn.__all__
