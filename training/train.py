"""Training loop, checkpoints, resume and the test-split evaluation of a run.

A run directory holds ``config.json`` (the resolved ``TrainConfig``), ``last.pt`` (everything
to resume: weights, optimizer, scheduler, history, early-stopping state), ``best.pt`` (the
weights of the lowest validation loss), ``metrics.json``, PNG plots and ``model_card.md``.
Every epoch reseeds torch from (seed, epoch), so a resumed CPU run repeats an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from engines.base import InputSpec
from pipeline.core.errors import ConfigError, ModelError
from training import models
from training.augment import augment
from training.config import TrainConfig
from training.data import DataSet, Split, class_weights, split_validation
from training.safe_load import load_weights

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "emotion-stream.train/v1"
BEST, LAST, CONFIG, METRICS = "best.pt", "last.pt", "config.json", "metrics.json"
TORCHSCRIPT_SPEC_FILE = "input_spec.json"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is visible here: use --device cpu")
    return dev


def to_input(
    images: torch.Tensor,
    spec: InputSpec,
    device: torch.device,
    aug: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """uint8 (n, H, W) -> normalised float (n, 1, side, side) on ``device`` (resized if needed)."""
    x = images.to(device, non_blocking=True).unsqueeze(1).float().mul_(1.0 / 255.0)
    if x.shape[-2:] != (spec.height, spec.width):
        x = F.interpolate(
            x, size=(spec.height, spec.width), mode="bilinear", align_corners=False, antialias=True
        )
    if aug is not None:
        x = aug(x)
    mean = torch.as_tensor(spec.mean_vec, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(spec.std_vec, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


@dataclass
class LoadedModel:
    """A model to evaluate or export: our checkpoint (logits out) or a TorchScript (probs out)."""

    module: Any
    spec: InputSpec
    outputs_probs: bool
    path: Path
    config: TrainConfig | None = None
    checkpoint: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.arch if self.config else self.path.stem


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_model(target: Path, device: torch.device | None = None) -> LoadedModel:
    """Load a run dir (its ``best.pt``), one of our checkpoints, or a TorchScript ``.pt``
    carrying ``input_spec.json`` (such as ``models/emotion_mini_xception.pt``)."""
    device = device or torch.device("cpu")
    path = target / BEST if target.is_dir() else target
    if not path.is_file():
        raise ModelError(
            f"{path} does not exist: pass a run dir with {BEST}, a checkpoint or a TorchScript .pt"
        )
    if _is_torchscript(path):
        extra = {TORCHSCRIPT_SPEC_FILE: ""}
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        raw = extra[TORCHSCRIPT_SPEC_FILE]
        spec = (
            InputSpec.from_metadata(
                {InputSpec.METADATA_KEY: raw.decode() if isinstance(raw, bytes) else raw}
            )
            if raw
            else None
        )
        if spec is None:
            raise ModelError(
                f"{path} carries no {TORCHSCRIPT_SPEC_FILE}: re-export it with `emotion-stream export`"
            )
        return LoadedModel(module.eval(), spec, spec.softmax_in_model, path)
    ckpt = load_weights(path, "checkpoint", f"pass a run dir or its {BEST}")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(
            f"{path} is not an emotion-stream training checkpoint: pass a run dir or its {BEST}"
        )
    cfg = TrainConfig.model_validate(ckpt["config"])
    module = models.build_model(cfg, load_weights=False)
    module.load_state_dict(ckpt["model"])
    spec = InputSpec(**{**ckpt["input_spec"], "classes": tuple(ckpt["input_spec"]["classes"])})
    return LoadedModel(module.to(device).eval(), spec, False, path, cfg, ckpt)


@torch.no_grad()
def predict(
    lm: LoadedModel, images: torch.Tensor, device: torch.device, batch_size: int = 256
) -> tuple[npt.NDArray[np.float32], float]:
    """Class probabilities (n, 7) and images/s of ``lm`` on uint8 ``images``."""
    out: list[torch.Tensor] = []
    t0 = time.perf_counter()
    for i in range(0, len(images), batch_size):
        y = lm.module(to_input(images[i : i + batch_size], lm.spec, device))
        out.append((y if lm.outputs_probs else torch.softmax(y.float(), dim=1)).float().cpu())
    dt = time.perf_counter() - t0
    probs = torch.cat(out).numpy() if out else np.zeros((0, len(lm.spec.classes)), np.float32)
    return probs, len(images) / dt if dt > 0 else 0.0


@torch.no_grad()
def _val_pass(
    model: nn.Module, split: Split, spec: InputSpec, device: torch.device, crit: nn.Module, bs: int
) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(split), bs):
        x = to_input(split.images[i : i + bs], spec, device)
        y = split.labels[i : i + bs].to(device)
        logits = model(x).float()
        loss_sum += float(crit(logits, y)) * len(y)
        correct += int((logits.argmax(1) == y).sum())
    n = max(len(split), 1)
    return loss_sum / n, correct / n


@dataclass
class TrainState:
    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


class Trainer:
    """Fits ``cfg.arch`` on ``ds`` into ``out``; ``run()`` returns the final ``TrainState``."""

    def __init__(self, cfg: TrainConfig, ds: DataSet, out: Path, resume: bool = False) -> None:
        self.cfg, self.out, self.resume = cfg, out, resume
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.train_split, self.val_split = split_validation(ds["train"], cfg.val_fraction, cfg.seed)
        self.digest = ds.digest()
        self.spec = models.input_spec(cfg)
        torch.manual_seed(cfg.seed)
        self.model = models.build_model(cfg, load_weights=not resume).to(self.device)
        weights = (
            class_weights(self.train_split.labels).to(self.device) if cfg.class_weights else None
        )
        self.crit = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
        self.val_crit = nn.CrossEntropyLoss()
        self.state = TrainState()
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        if resume:
            self._restore()
        else:
            self._make_optim()

    def _frozen_stages(self) -> int:
        frozen = getattr(self.model, "_frozen", [])
        return len(frozen)

    def _make_optim(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optim = torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optim,
            mode="min",
            factor=self.cfg.lr_factor,
            patience=self.cfg.lr_patience,
            min_lr=self.cfg.min_lr,
        )

    def _restore(self) -> None:
        path = self.out / LAST
        if not path.is_file():
            raise ConfigError(f"--resume: {path} does not exist: start the run without --resume")
        ckpt = load_weights(path, "checkpoint", "start the run without --resume")
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ModelError(f"--resume: {path} is not an emotion-stream training checkpoint")
        if ckpt.get("data_digest") != self.digest:
            logger.warning(
                "resume: the data differ from the run's (hash %s vs %s)",
                self.digest[:12],
                str(ckpt.get("data_digest"))[:12],
            )
        freeze = getattr(self.model, "freeze", None)
        if ckpt.get("frozen_stages") and freeze is not None:
            freeze(ckpt["frozen_stages"])
        self.model.load_state_dict(ckpt["model"])
        self._make_optim()
        self.optim.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["state"])
        logger.info(
            "resumed %s at epoch %d (best val loss %.4f)",
            self.out,
            self.state.epoch,
            self.state.best_val_loss,
        )

    def _checkpoint(self, full: bool) -> dict[str, Any]:
        spec = json.loads(self.spec.to_metadata()[InputSpec.METADATA_KEY])
        ck: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "arch": self.cfg.arch,
            "config": self.cfg.model_dump(mode="json"),
            "input_spec": spec,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "epoch": self.state.epoch,
            "data_digest": self.digest,
            "frozen_stages": self._frozen_stages(),
        }
        if full:
            ck |= {
                "optimizer": self.optim.state_dict(),
                "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict(),
                "state": self.state.__dict__.copy(),
            }
        return ck

    def _save(self, name: str, full: bool) -> None:
        tmp = self.out / (name + ".tmp")
        torch.save(self._checkpoint(full), tmp)
        tmp.replace(self.out / name)

    def _train_epoch(self, epoch: int) -> tuple[float, float, float]:
        from tqdm import tqdm

        cfg = self.cfg
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout etc.: same per epoch on resume
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(len(self.train_split), generator=g)
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        t0 = time.perf_counter()
        bar = tqdm(
            total=len(perm),
            unit="img",
            desc=f"epoch {epoch}/{cfg.epochs}",
            leave=False,
            disable=not cfg.progress,
        )
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2:  # batch norm cannot train on one sample
                continue
            x = to_input(
                self.train_split.images[idx],
                self.spec,
                self.device,
                aug=lambda t: augment(t, cfg.augment, g),
            )
            y = self.train_split.labels[idx].to(self.device)
            with torch.autocast(self.device.type, enabled=self.use_amp):
                logits = self.model(x)
                loss = self.crit(logits.float(), y)
            self.optim.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update(len(y))
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        bar.close()
        dt = time.perf_counter() - t0
        return loss_sum / max(seen, 1), correct / max(seen, 1), seen / dt if dt > 0 else 0.0

    def run(self) -> TrainState:
        cfg, st = self.cfg, self.state
        self.out.mkdir(parents=True, exist_ok=True)
        logger.info(
            "training %s on %s: %d train / %d val images, %d trainable parameters",
            cfg.arch,
            self.device,
            len(self.train_split),
            len(self.val_split),
            sum(p.numel() for p in self.model.parameters() if p.requires_grad),
        )
        while st.epoch < cfg.epochs and not st.stopped_early:
            epoch = st.epoch + 1
            lr = self.optim.param_groups[0]["lr"]
            loss, acc, ips = self._train_epoch(epoch)
            val_loss, val_acc = _val_pass(
                self.model,
                self.val_split,
                self.spec,
                self.device,
                self.val_crit,
                cfg.eval_batch_size,
            )
            self.sched.step(val_loss)
            st.epoch = epoch
            st.history.append(
                {
                    "epoch": epoch,
                    "loss": loss,
                    "acc": acc,
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "lr": lr,
                    "img_s": ips,
                }
            )
            logger.info(
                "epoch %d/%d loss %.4f acc %.3f val_loss %.4f val_acc %.3f lr %.2g %.0f img/s",
                epoch,
                cfg.epochs,
                loss,
                acc,
                val_loss,
                val_acc,
                lr,
                ips,
            )
            if val_loss < st.best_val_loss:
                st.best_val_loss, st.best_epoch, st.bad_epochs = val_loss, epoch, 0
                self._save(BEST, full=False)
            else:
                st.bad_epochs += 1
                if st.bad_epochs >= cfg.early_stop_patience:
                    st.stopped_early = True
                    logger.info(
                        "early stop after epoch %d: no better val loss for %d epochs",
                        epoch,
                        st.bad_epochs,
                    )
            self._save(LAST, full=True)
        return st


def write_config(cfg: TrainConfig, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(
        json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    )


def evaluate_split(
    lm: LoadedModel, split: Split, device: torch.device, batch_size: int = 256
) -> tuple[dict[str, Any], float]:
    """The metrics object of ``lm`` on ``split`` and the images/s of the pass."""
    from training import metrics

    probs, ips = predict(lm, split.images, device, batch_size)
    return metrics.compute(split.labels.numpy(), probs, lm.spec.classes), ips
