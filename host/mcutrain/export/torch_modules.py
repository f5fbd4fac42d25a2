"""PyTorch modules for what nn lacks, so models written with them export to mcutrain as is.

Importing this module imports torch.
"""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """y = body(x) + shortcut(x), shortcut the identity when None: how to write a residual
    block (ResNet) for export. Put the ReLU after the add outside, as its own layer."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class GlobalAvgPool(nn.Module):
    """(N, C, *positions) -> (N, C): the mean over all positions, as mcutrain's GlobalAvgPool."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.dim())))
