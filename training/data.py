"""FER-2013 data sets in both common layouts, loaded into uint8 tensors.

- CSV: the original ``fer2013.csv`` with columns ``emotion`` (0-6, FER order), ``pixels``
  (48*48 space-separated gray values) and ``Usage`` (Training / PublicTest / PrivateTest).
- Folder: ``train/<class>/*.png`` and ``test/<class>/*.png`` with class folders named
  angry, disgust, fear, happy, neutral, sad, surprise (the Kaggle image-folder copy).

Splits: ``train`` is Training (CSV) or ``train/`` (folder); ``test`` is PublicTest +
PrivateTest (CSV) or ``test/`` (folder), the 7,178 images of the published test counts.
A stratified ``val`` share of ``train`` is cut with a fixed seed (``split_validation``).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from pipeline.core.errors import EmotionStreamError
from pipeline.core.types import EMOTIONS
from training.config import Layout

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("emotion", "pixels", "Usage")
CSV_USAGE = {"Training": "train", "PublicTest": "test", "PrivateTest": "test"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm")
FER_SIZE = 48

#: Published FER-2013 counts per split (train = Training; test = PublicTest + PrivateTest).
PUBLISHED_COUNTS: dict[str, dict[str, int]] = {
    "train": {
        "angry": 3995,
        "disgust": 436,
        "fear": 4097,
        "happy": 7215,
        "sad": 4830,
        "surprise": 3171,
        "neutral": 4965,
    },
    "test": {
        "angry": 958,
        "disgust": 111,
        "fear": 1024,
        "happy": 1774,
        "sad": 1247,
        "surprise": 831,
        "neutral": 1233,
    },
}


class DataError(EmotionStreamError):
    """A data set is missing, in the wrong layout, or holds a bad row or image."""


@dataclass(frozen=True, slots=True)
class Split:
    """One split: ``images`` uint8 (n, H, W), ``labels`` int64 (n,) in ``EMOTIONS`` order."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def counts(self) -> dict[str, int]:
        c = torch.bincount(self.labels, minlength=len(EMOTIONS)).tolist()
        return {name: int(c[i]) for i, name in enumerate(EMOTIONS)}

    def subset(self, idx: torch.Tensor, name: str | None = None) -> Split:
        return Split(name or self.name, self.images[idx], self.labels[idx])


@dataclass(frozen=True, slots=True)
class DataSet:
    """The loaded splits (``train``, ``test``; ``val`` after ``split_validation``)."""

    source: Path
    layout: Layout
    splits: dict[str, Split]

    def __getitem__(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(
                f"{self.source} has no '{name}' split (has {sorted(self.splits)}): pick one of those"
            )
        return self.splits[name]

    def digest(self) -> str:
        """sha256 over every split's pixels and labels (the data-set hash of the model card)."""
        h = hashlib.sha256()
        for name in sorted(self.splits):
            s = self.splits[name]
            h.update(name.encode())
            h.update(s.images.contiguous().numpy().tobytes())
            h.update(s.labels.numpy().tobytes())
        return h.hexdigest()


def detect_layout(path: Path) -> Layout:
    if path.is_file():
        return Layout.CSV
    if path.is_dir():
        if (path / "fer2013.csv").is_file():
            return Layout.CSV
        if (path / "train").is_dir() or (path / "test").is_dir():
            return Layout.FOLDER
        raise DataError(
            f"{path} holds neither fer2013.csv nor train/ and test/ class folders: point --data at one of those"
        )
    raise DataError(
        f"{path} does not exist: point --data at fer2013.csv or a folder with train/ and test/"
    )


def load_dataset(path: Path, layout: Layout = Layout.AUTO, limit: int | None = None) -> DataSet:
    """Load a FER-2013 copy (``limit``: at most that many images per split, for smoke runs)."""
    if layout is Layout.AUTO:
        layout = detect_layout(path)
    if layout is Layout.CSV:
        csv_path = path / "fer2013.csv" if path.is_dir() else path
        splits = load_csv(csv_path, limit)
    else:
        splits = load_folder(path, limit)
    for name in ("train", "test"):
        if name not in splits or len(splits[name]) == 0:
            raise DataError(
                f"{path} has no '{name}' images: the data set must hold a train and a test split"
            )
    return DataSet(path, layout, splits)


def _csv_rows(path: Path) -> Iterable[tuple[int, list[str]]]:
    try:
        fh = path.open(newline="")
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror}): check --data") from exc
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != list(CSV_COLUMNS):
            raise DataError(
                f"{path}: header is {header}, expected emotion,pixels,Usage: use the original fer2013.csv or --layout folder"
            )
        for row in reader:
            yield reader.line_num, row


def load_csv(path: Path, limit: int | None = None) -> dict[str, Split]:
    """Parse ``fer2013.csv``; every bad row is a ``DataError`` naming its line."""
    pixels: dict[str, list[str]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    n_pix: int | None = None
    for line, row in _csv_rows(path):
        if not row:
            continue
        if len(row) < 3:
            raise DataError(
                f"{path} line {line}: {len(row)} fields, expected emotion,pixels,Usage: fix or drop the row"
            )
        label_s, pix, usage = row[0].strip(), row[1].strip(), row[2].strip()
        split = CSV_USAGE.get(usage)
        if split is None:
            raise DataError(
                f"{path} line {line}: Usage '{usage}' is not one of {sorted(CSV_USAGE)}: fix the row"
            )
        if not label_s.isdigit() or int(label_s) >= len(EMOTIONS):
            raise DataError(f"{path} line {line}: emotion '{label_s}' is not 0-6: fix the row")
        count = pix.count(" ") + 1
        if n_pix is None:
            n_pix = count
            side = round(count**0.5)
            if side * side != count:
                raise DataError(
                    f"{path} line {line}: {count} pixels is not a square image: fix the row"
                )
        elif count != n_pix:
            raise DataError(
                f"{path} line {line}: {count} pixels, expected {n_pix} like the rows before: fix the row"
            )
        if limit is not None and len(labels[split]) >= limit:
            continue
        pixels[split].append(pix)
        labels[split].append(int(label_s))
    if n_pix is None:
        raise DataError(f"{path} has no data rows: use a complete fer2013.csv")
    side = round(n_pix**0.5)
    return {name: _parse_pixels(path, name, pixels[name], labels[name], side) for name in pixels}


def _parse_pixels(path: Path, name: str, rows: list[str], labels: list[int], side: int) -> Split:
    if not rows:
        return Split(
            name, torch.zeros((0, side, side), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
        )
    flat = _fast_ints(" ".join(rows))
    if flat.size != len(rows) * side * side or flat.min() < 0 or flat.max() > 255:
        bad = next(i for i, r in enumerate(rows) if not _row_ok(r, side))
        raise DataError(
            f"{path}: {name} row {bad + 1} has a pixel that is not an integer 0-255: fix the row"
        )
    images = torch.from_numpy(flat.astype(np.uint8).reshape(len(rows), side, side))
    return Split(name, images, torch.tensor(labels, dtype=torch.int64))


def _fast_ints(text: str) -> npt.NDArray[np.int64]:
    """Parse space-separated integers in C (4-5x faster than str.split); on a bad token the
    result fails the caller's size or range check, which then finds and names the row."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return np.fromstring(text, dtype=np.int64, sep=" ")
        except ValueError:  # numpy 2: raises instead of stopping
            return np.array([-1], dtype=np.int64)


def _row_ok(row: str, side: int) -> bool:
    parts = row.split()
    return len(parts) == side * side and all(p.isdigit() and int(p) <= 255 for p in parts)


def load_folder(root: Path, limit: int | None = None, size: int | None = None) -> dict[str, Split]:
    """Read ``root/{train,test}/<class>/*.png`` as gray; sizes must all agree."""
    import cv2

    splits: dict[str, Split] = {}
    expected = size
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            continue
        imgs: list[npt.NDArray[np.uint8]] = []
        labels: list[int] = []
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            if class_dir.name.lower() not in EMOTIONS:
                raise DataError(
                    f"{class_dir}: unknown class folder '{class_dir.name}': rename it to one of {', '.join(sorted(EMOTIONS))}"
                )
            label = EMOTIONS.index(class_dir.name.lower())
            files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for f in files[: limit if limit is not None else None]:
                img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
                if img is None:
                    raise DataError(f"{f} is not a readable image: replace or delete it")
                if expected is None:
                    expected = img.shape[0]
                if img.shape != (expected, expected):
                    raise DataError(
                        f"{f} is {img.shape[1]}x{img.shape[0]}, expected {expected}x{expected} like the others: resize or delete it"
                    )
                imgs.append(np.asarray(img, dtype=np.uint8))
                labels.append(label)
        if limit is not None and len(labels) > limit:
            keep = np.random.default_rng(0).permutation(len(labels))[:limit]
            keep.sort()
            imgs = [imgs[i] for i in keep]
            labels = [labels[i] for i in keep]
        side = expected or FER_SIZE
        arr = np.stack(imgs) if imgs else np.zeros((0, side, side), np.uint8)
        splits[split] = Split(split, torch.from_numpy(arr), torch.tensor(labels, dtype=torch.int64))
    if not splits:
        raise DataError(f"{root} has no train/ or test/ folder: use the layout train/<class>/*.png")
    return splits


def split_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Stratified (per class) ``fraction`` of ``train`` as ``val``; same seed, same split."""
    g = torch.Generator().manual_seed(seed)
    val_idx: list[torch.Tensor] = []
    train_idx: list[torch.Tensor] = []
    for c in range(len(EMOTIONS)):
        idx = torch.nonzero(train.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = round(len(idx) * fraction)
        if len(idx) > 1:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    tr = torch.sort(torch.cat(train_idx)).values
    va = torch.sort(torch.cat(val_idx)).values
    return train.subset(tr, "train"), train.subset(va, "val")


def class_weights(labels: torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights n / (k * count_c), 0-count classes get weight 0."""
    counts = torch.bincount(labels, minlength=len(EMOTIONS)).double()
    w = torch.where(counts > 0, labels.numel() / (len(EMOTIONS) * counts.clamp(min=1)), 0.0)
    return w.float()


def counts_table(ds: DataSet) -> str:
    """Class counts per split beside the published FER-2013 counts."""
    lines = [f"{'class':<10}" + "".join(f"{s:>10}{'(FER)':>8}" for s in ("train", "test"))]
    for name in EMOTIONS:
        row = f"{name:<10}"
        for split in ("train", "test"):
            have = ds.splits[split].counts()[name] if split in ds.splits else 0
            row += f"{have:>10}{PUBLISHED_COUNTS[split][name]:>8}"
        lines.append(row)
    tot = f"{'total':<10}"
    for split in ("train", "test"):
        have = len(ds.splits[split]) if split in ds.splits else 0
        tot += f"{have:>10}{sum(PUBLISHED_COUNTS[split].values()):>8}"
    lines.append(tot)
    return "\n".join(lines)


# ---- learnable synthetic data (tests only: FER-2013 itself cannot be shipped) -------------


def synthetic_images(
    n: int, seed: int, size: int = FER_SIZE
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """``n`` gray images whose class sets the frequency of horizontal stripes (1.2 to 9
    cycles per image, a factor 1.4 apart, so that flips, shifts and +-10 % zoom keep the
    classes apart), plus noise; labels cycle through the 7 classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % len(EMOTIONS)
    rng.shuffle(labels)
    y = np.arange(size, dtype=np.float64)[None, :, None]
    cycles = 1.2 * 1.4 ** labels[:, None, None].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    img = (
        128
        + 70 * np.sin(2 * np.pi * cycles * y / size + phase)
        + rng.normal(0, 20, (n, size, size))
    )
    return np.clip(img, 0, 255).astype(np.uint8), labels


def write_synthetic_csv(path: Path, n: int, seed: int, n_test: int | None = None) -> Path:
    """A small fer2013.csv-format file (``n`` Training rows, ``n_test`` test rows)."""
    n_test = n // 4 if n_test is None else n_test
    imgs, labels = synthetic_images(n + n_test, seed)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for i in range(n + n_test):
            usage = "Training" if i < n else ("PublicTest" if i % 2 else "PrivateTest")
            w.writerow([int(labels[i]), " ".join(map(str, imgs[i].ravel().tolist())), usage])
    return path


def write_synthetic_folder(root: Path, n: int, seed: int, n_test: int | None = None) -> Path:
    """The same synthetic data in the image-folder layout under ``root``."""
    import cv2

    n_test = n // 4 if n_test is None else n_test
    imgs, labels = synthetic_images(n + n_test, seed)
    for i in range(n + n_test):
        split = "train" if i < n else "test"
        d = root / split / EMOTIONS[int(labels[i])]
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i:06d}.png"), imgs[i])
    return root
