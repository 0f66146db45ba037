"""The published seed CNN for FER-2013: four conv blocks (128, 256, 512, 512 filters; 3x3,
5x5, 3x3, 3x3) each with batch norm, ReLU, 2x2 max pooling and dropout 0.25, then two dense
ReLU layers (256, 512) with batch norm and dropout, and a 7-way output (logits; the softmax
is in the loss and in the exported model). ``width`` scales every filter and unit count.
"""

from __future__ import annotations

import torch
from torch import nn

CONV_FILTERS = (128, 256, 512, 512)
CONV_KERNELS = (3, 5, 3, 3)
DENSE_UNITS = (256, 512)


def _scaled(n: int, width: float) -> int:
    return max(4, round(n * width))


class SeedCNN(nn.Module):
    """Input (N, in_channels, size, size), ``size`` divisible by 16; output logits (N, classes)."""

    def __init__(
        self,
        num_classes: int = 7,
        in_channels: int = 1,
        input_size: int = 48,
        width: float = 1.0,
        conv_dropout: float = 0.25,
        dense_dropout: float = 0.25,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        size = input_size
        for filters, k in zip(CONV_FILTERS, CONV_KERNELS, strict=True):
            cout = _scaled(filters, width)
            layers += [
                nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                nn.Dropout(conv_dropout),
            ]
            cin = cout
            size //= 2
        if size < 1:
            raise ValueError(f"SeedCNN input {input_size} is too small: use at least 16")
        self.features = nn.Sequential(*layers)
        dense: list[nn.Module] = [nn.Flatten()]
        fin = cin * size * size
        for units in DENSE_UNITS:
            u = _scaled(units, width)
            dense += [
                nn.Linear(fin, u, bias=False),
                nn.BatchNorm1d(u),
                nn.ReLU(inplace=True),
                nn.Dropout(dense_dropout),
            ]
            fin = u
        dense.append(nn.Linear(fin, num_classes))
        self.classifier = nn.Sequential(*dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
