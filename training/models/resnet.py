"""ResNet-18/50 (He et al.) written here with torchvision's module and state-dict names
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ..., ``fc``), so that a
local torchvision-format ImageNet ``.pth`` loads into it without torchvision.

Gray input is repeated to the 3 channels the ImageNet stem expects, inside ``forward``.
The head (``fc``) is new: 7 classes. ``freeze(stages)`` freezes the stem (1) and then
layer1..layer4 (2..5), keeping their batch-norm statistics fixed too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from pipeline.core.errors import ModelError
from training.safe_load import load_weights

logger = logging.getLogger(__name__)


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet(nn.Module):
    """ResNet with a ``num_classes`` head; input (N, 1 or 3, H, W) normalised; output logits."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 7,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, planes, stride))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self._frozen: list[nn.Module] = []
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def stages(self) -> list[nn.Module]:
        return [
            nn.ModuleList([self.conv1, self.bn1]),
            self.layer1,
            self.layer2,
            self.layer3,
            self.layer4,
        ]

    def freeze(self, n_stages: int) -> None:
        """Freeze the first ``n_stages`` of stem, layer1..layer4 (weights and BN statistics)."""
        self._frozen = self.stages()[:n_stages]
        for stage in self._frozen:
            for p in stage.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        for stage in getattr(self, "_frozen", []):
            stage.eval()
        return self


def resnet18(num_classes: int = 7) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes: int = 7) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


def load_torchvision_weights(model: ResNet, path: Path) -> int:
    """Load a torchvision-format state dict (ImageNet) except its ``fc``; returns tensors loaded.

    ``ModelError`` if the file is unreadable or its keys/shapes do not match this ResNet."""
    state = load_weights(path, "pretrained weights", "pass a torchvision-format .pth state dict")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(
            f"{path} holds no state dict: pass a torchvision-format .pth (torch.save(model.state_dict()))"
        )
    state = {
        k.removeprefix("module."): v
        for k, v in state.items()
        if not k.removeprefix("module.").startswith("fc.")
    }
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    missing = [k for k in own if not k.startswith("fc.") and k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        bad = (wrong or missing or unexpected)[:3]
        raise ModelError(
            f"{path} does not fit this ResNet (mismatched {len(wrong)}, missing {len(missing)}, unexpected {len(unexpected)}, e.g. {bad}): pass weights of the same depth"
        )
    model.load_state_dict(state, strict=False)
    logger.info("loaded %d pretrained tensors from %s (new 7-class head)", len(state), path)
    return len(state)
