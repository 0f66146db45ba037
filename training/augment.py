"""Batch augmentation in torch (no torchvision): one affine warp per image (rotation, scale,
translation, horizontal flip via ``affine_grid``/``grid_sample``), then brightness and
contrast. Every random draw comes from the ``torch.Generator`` passed in, so a seed fixes it.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from training.config import AugmentSettings


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def affine_params(n: int, cfg: AugmentSettings, g: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) sampling matrices of ``affine_grid`` (output -> input coordinates)."""
    angle = _uniform(n, -cfg.rotation_deg, cfg.rotation_deg, g) * (math.pi / 180.0)
    scale = _uniform(n, 1.0 - cfg.scale, 1.0 + cfg.scale, g)
    tx = _uniform(n, -cfg.translate, cfg.translate, g) * 2.0  # grid coords span [-1, 1]
    ty = _uniform(n, -cfg.translate, cfg.translate, g) * 2.0
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 0, 2] = tx
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    theta[:, 1, 2] = ty
    return theta


def augment(x: torch.Tensor, cfg: AugmentSettings, g: torch.Generator) -> torch.Tensor:
    """Augment ``x`` float (N, C, H, W) with pixels in [0, 1]; returns a new tensor in [0, 1]."""
    if not cfg.enabled or x.numel() == 0:
        return x
    n = x.shape[0]
    theta = affine_params(n, cfg, g).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    shape = (n, 1, 1, 1)
    bright = _uniform(n, -cfg.brightness, cfg.brightness, g).view(shape).to(x)
    contrast = _uniform(n, 1.0 - cfg.contrast, 1.0 + cfg.contrast, g).view(shape).to(x)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean + bright
    return out.clamp_(0.0, 1.0)
