"""PNG plots of a run (matplotlib, Agg backend): training curves, learning rate, normalised
confusion matrix and per-class F1."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, float]], out: Path) -> list[Path]:
    """``curves.png`` (loss and accuracy, train vs val) and ``lr.png``."""
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [h["loss"] for h in history], "o-", label="train")
    a1.plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    a1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    a2.plot(ep, [h["acc"] for h in history], "o-", label="train")
    a2.plot(ep, [h["val_acc"] for h in history], "o-", label="val")
    a2.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for a in (a1, a2):
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    curves = out / "curves.png"
    fig.savefig(curves, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(ep, [h["lr"] for h in history], "o-")
    ax.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    lr = out / "lr.png"
    fig.savefig(lr, dpi=100)
    plt.close(fig)
    return [curves, lr]


def plot_confusion(m: dict[str, Any], out: Path, title: str = "test") -> Path:
    """``confusion_matrix.png``: rows normalised to recall, with counts in the cells."""
    plt = _plt()
    cm = np.asarray(m["confusion_matrix"], dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    classes = m["classes"]
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix ({title}, row-normalised)")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}\n{int(cm[i, j])}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.tight_layout()
    path = out / "confusion_matrix.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_per_class(m: dict[str, Any], out: Path) -> Path:
    """``per_class_f1.png``: F1 per class with the macro F1 as a line."""
    plt = _plt()
    classes = m["classes"]
    f1 = [m["per_class"][c]["f1"] for c in classes]
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.bar(classes, f1, color="tab:blue")
    ax.axhline(m["f1"], color="tab:red", ls="--", label=f"macro F1 {m['f1']:.3f}")
    ax.set(ylim=(0, 1), ylabel="F1", title="per-class F1 (test)")
    ax.legend()
    fig.tight_layout()
    path = out / "per_class_f1.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_all(history: list[dict[str, float]], test: dict[str, Any], out: Path) -> list[Path]:
    paths = plot_curves(history, out) if history else []
    paths += [plot_confusion(test, out), plot_per_class(test, out)]
    logger.info("plots: %s", ", ".join(p.name for p in paths))
    return paths
