"""Classification metrics (accuracy, macro precision/recall/F1, error rate, per-class report,
confusion matrix, expected calibration error) and the published FER-2013 figures."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.core.types import EMOTIONS

#: The published results the method is compared against (test split of FER-2013).
PUBLISHED: dict[str, dict[str, float | None]] = {
    "published CNN": {
        "accuracy": 0.665,
        "precision": 0.664,
        "recall": 0.634,
        "f1": 0.644,
        "error_rate": 0.335,
    },
    "published ResNet": {
        "accuracy": 0.542,
        "precision": None,
        "recall": None,
        "f1": None,
        "error_rate": 0.458,
    },
    "best single nets (lit.)": {
        "accuracy": 0.73,
        "precision": None,
        "recall": None,
        "f1": None,
        "error_rate": 0.27,
    },
}
SUMMARY_KEYS = ("accuracy", "precision", "recall", "f1", "error_rate")
ECE_BINS = 15


def confusion(
    y_true: npt.NDArray[np.int64], y_pred: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.int64]:
    """(k, k) counts, rows = true class, columns = predicted class."""
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k).astype(np.int64)


def expected_calibration_error(
    probs: npt.NDArray[np.float32], y_true: npt.NDArray[np.int64], bins: int = ECE_BINS
) -> float:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(float(correct[m].mean()) - float(conf[m].mean()))
    return float(ece)


def compute(
    y_true: npt.NDArray[np.int64],
    probs: npt.NDArray[np.float32],
    classes: tuple[str, ...] = EMOTIONS,
) -> dict[str, Any]:
    """The ``metrics.json`` ``test`` object for predictions ``probs`` (n, k) against ``y_true``."""
    k = len(classes)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(axis=1).astype(np.int64)
    cm = confusion(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    pred_n = cm.sum(axis=0).astype(np.float64)
    true_n = cm.sum(axis=1).astype(np.float64)
    prec = np.divide(tp, pred_n, out=np.zeros(k), where=pred_n > 0)
    rec = np.divide(tp, true_n, out=np.zeros(k), where=true_n > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(k), where=(prec + rec) > 0)
    present = true_n > 0  # macro averages over the classes the split holds
    n = len(y_true)
    acc = float(tp.sum() / n) if n else 0.0
    return {
        "n": n,
        "accuracy": acc,
        "precision": float(prec[present].mean()) if present.any() else 0.0,
        "recall": float(rec[present].mean()) if present.any() else 0.0,
        "f1": float(f1[present].mean()) if present.any() else 0.0,
        "error_rate": 1.0 - acc,
        "ece": expected_calibration_error(probs, y_true),
        "per_class": {
            c: {
                "precision": float(prec[i]),
                "recall": float(rec[i]),
                "f1": float(f1[i]),
                "support": int(true_n[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
    }


def comparison_rows(run_name: str, m: dict[str, Any]) -> list[tuple[str, list[float | None]]]:
    rows: list[tuple[str, list[float | None]]] = [(run_name, [m.get(key) for key in SUMMARY_KEYS])]
    rows += [(name, [fig[key] for key in SUMMARY_KEYS]) for name, fig in PUBLISHED.items()]
    return rows


def comparison_table(run_name: str, m: dict[str, Any], markdown: bool = False) -> str:
    """The run's test figures beside the published table (plain text or markdown)."""
    rows = comparison_rows(run_name, m)

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    if markdown:
        head = "| model | " + " | ".join(SUMMARY_KEYS) + " |\n|---|" + "---|" * len(SUMMARY_KEYS)
        body = [
            "| " + name + " | " + " | ".join(fmt(v) for v in vals) + " |" for name, vals in rows
        ]
        return "\n".join([head, *body])
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'model':<{width}}" + "".join(f"{key:>11}" for key in SUMMARY_KEYS)]
    lines += [f"{name:<{width}}" + "".join(f"{fmt(v):>11}" for v in vals) for name, vals in rows]
    return "\n".join(lines)


def per_class_table(m: dict[str, Any]) -> str:
    lines = [f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for c, v in m["per_class"].items():
        lines.append(
            f"{c:<10}{v['precision']:>10.3f}{v['recall']:>10.3f}{v['f1']:>10.3f}{v['support']:>9}"
        )
    return "\n".join(lines)
