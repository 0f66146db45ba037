"""The tracker on a composed clip where faces enter, leave and cross, through the real worker
(H.264 decode -> SCRFD-format detector -> tracker -> events). The faces are cut from
insightface's ``t1.jpg`` and moved over a plain background, so the truth is known per frame."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.clips import write_h264

W, H, N = 640, 360, 44
SIDE = 96  # face patch size in the clip


def _patches(t1: np.ndarray, models_dir: Path) -> list[np.ndarray]:
    """Four face patches (SIDE x SIDE, BGR) cut from t1.jpg around its detected faces."""
    import cv2

    from pipeline.core.config import DetectorSettings
    from pipeline.stages.detect import FaceDetector

    faces = FaceDetector(DetectorSettings(model_dir=models_dir)).detect(t1)
    pad = 200
    big = cv2.copyMakeBorder(t1, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    out = []
    for x1, y1, x2, y2 in faces.xyxy[:4].tolist():
        cx, cy, r = (x1 + x2) / 2 + pad, (y1 + y2) / 2 + pad, 0.62 * max(x2 - x1, y2 - y1)
        crop = big[int(cy - r) : int(cy + r), int(cx - r) : int(cx + r)]
        out.append(cv2.resize(crop, (SIDE, SIDE), interpolation=cv2.INTER_AREA))
    return out


def _paths() -> dict[str, dict[int, tuple[int, int]]]:
    """Top-left corner of each face per frame. A runs left->right and B right->left one third
    of a face lower, so they cross (B drawn over A) near frame 22; C slides out of the right
    edge by frame 10 (leaves); D slides in from the left from frame 22 (enters)."""
    paths: dict[str, dict[int, tuple[int, int]]] = defaultdict(dict)
    for k in range(N):
        paths["A"][k] = (40 + 12 * k, 60)
        paths["B"][k] = (W - 40 - SIDE - 12 * k, 60 + SIDE // 3)
        if k <= 10:
            paths["C"][k] = (W - SIDE - 20 + 12 * k, H - SIDE - 10)
        if k >= 22:
            paths["D"][k] = (-SIDE + 12 * (k - 22), H - SIDE - 10)
    return paths


def _render(
    patches: list[np.ndarray], paths: dict[str, dict[int, tuple[int, int]]]
) -> list[np.ndarray]:
    frames = []
    for k in range(N):
        img = np.full((H, W, 3), 128, np.uint8)
        for name, patch in zip(
            "CDAB", (patches[2], patches[3], patches[0], patches[1]), strict=True
        ):
            if k not in paths[name]:
                continue
            x, y = paths[name][k]
            xs, xe = max(x, 0), min(x + SIDE, W)
            if xe > xs:
                img[y : y + SIDE, xs:xe] = patch[:, xs - x : xe - x]
        frames.append(img)
    return frames


def _owner(e: dict[str, Any], paths: dict[str, dict[int, tuple[int, int]]]) -> str | None:
    """The face whose patch centre is nearest the event's box centre (within half a patch)."""
    x1, y1, x2, y2 = e["bbox"]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    best, dist = None, SIDE / 2
    for name, path in paths.items():
        pos = path.get(e["frame_num"])
        if pos is not None:
            d = float(np.hypot(pos[0] + SIDE / 2 - cx, pos[1] + SIDE / 2 - cy))
            if d < dist:
                best, dist = name, d
    return best


def test_tracker_clip_faces_enter_leave_and_cross(
    tmp_path: Path, models_dir: Path, t1_image: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli.main import main

    paths = _paths()
    clip = write_h264(tmp_path / "cross.mp4", _render(_patches(t1_image, models_dir), paths))
    out = tmp_path / "events.jsonl"
    argv = ["-q", "run", str(clip), "--models", str(models_dir), "--backend", "onnxruntime"]
    assert main([*argv, "--sink", f"jsonl:{out}", "--stream-id", "cross"]) == 0
    capsys.readouterr()
    events = [json.loads(line) for line in out.read_text().splitlines()]
    ids: dict[str, list[int]] = defaultdict(list)
    for e in events:
        if e["type"] == "face":
            owner = _owner(e, paths)
            assert owner is not None, f"a face where none was drawn: {e['frame_num']} {e['bbox']}"
            ids[owner].append(e["track_id"])
    # every face is tracked under one id while in view, and no two faces share one (no swap)
    assert {k: len(set(v)) for k, v in ids.items()} == {"A": 1, "B": 1, "C": 1, "D": 1}, ids
    assert len({v[0] for v in ids.values()}) == 4
    assert len(ids["A"]) >= N - 8 and len(ids["B"]) >= N - 4  # A may hide behind B briefly
    # D entered later: a new id, above every id seen before it entered
    assert ids["D"][0] > max(ids["A"][0], ids["B"][0], ids["C"][0])
    # C left: its track_end comes while the stream still runs, not only at stream end
    ends = [i for i, e in enumerate(events) if e["type"] == "track_end"]
    c_end = next(i for i in ends if events[i]["track_id"] == ids["C"][0])
    assert events[c_end]["last_frame"] <= 10
    assert any(e["type"] == "face" for e in events[c_end + 1 :])
