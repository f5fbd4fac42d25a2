"""PyTorch models for tests/test_export_sources.py, in a module of their own so that a whole
module saved with torch.save can be loaded again (pickle needs its classes importable)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def randomize_bn(model: nn.Module) -> None:
    """Non-trivial batch-norm statistics and scales, as after training (all distinct, so the
    ONNX exporter does not merge equal initializers)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)
                m.num_batches_tracked.fill_(17)


class ConvBlock(nn.Module):
    """conv (no bias) -> batch norm -> relu, the usual building block."""

    def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pw = nn.Conv2d(cin, cout, 1)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(self.bn1(self.dw(x)), 0, 6)
        return F.relu6(self.bn2(self.pw(x)))


class BasicBlock(nn.Module):
    """ResNet's block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); the shortcut is the
    identity, or a strided 1x1 conv with batch norm when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.downsample(x)
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBlock(3, 8)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 12, stride=2)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DSCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(ConvBlock(1, 8, stride=2), DepthwiseSeparable(8, 8),
                                      DepthwiseSeparable(8, 12))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(x.view(x.size(0), -1))


def mlp() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 8),
                         nn.ReLU6(), nn.Linear(8, 3), nn.Softmax(dim=1)).eval(), (20,)


def cnn() -> tuple[nn.Module, tuple[int, ...]]:
    """Sequential CNN with a spatial Flatten before the Linear (its columns permuted)."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.ReLU(),
                      nn.Conv2d(6, 8, 1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 5))
    randomize_bn(m)
    return m.eval(), (2, 8, 8)


def dscnn() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(2)
    m = DSCNN()
    randomize_bn(m)
    return m.eval(), (1, 10, 8)


def resnet() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(3)
    m = ResNet()
    randomize_bn(m)
    return m.eval(), (3, 8, 8)


MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
    "mlp": mlp, "cnn": cnn, "dscnn": dscnn, "resnet": resnet,
}
