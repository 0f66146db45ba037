"""Side by side: the ``fer`` library (its own venv, ``.venv-fer``) and ``emotion-stream run``
with its defaults, on the same 720p clips with known face boxes, back to back in one run.

    python benchmarks/compare_fer.py [--clips faces7,crossing] [--frames 240] [--json PATH]

Per tool and clip: frames/s (decode + detect + classify, model loading excluded; both tools
report it the same way), recall and false boxes per frame against ground truth (a box counts
as a face found at IoU >= 0.4; boxes on "don't care" faces, less than 70% visible, count
neither way), the share of ground-truth faces that got an event, and peak RSS (sampled).
`make bench-peer` builds ``.venv-fer`` first (benchmarks/setup_fer_venv.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from clips import VISIBLE, load_truth, make_clip  # noqa: E402

IOU = 0.4


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def score(
    pred: dict[int, list[list[float]]], truth: dict[int, list[dict[str, Any]]]
) -> dict[str, float]:
    """Recall over visible faces, false boxes per frame (greedy one-to-one at IoU >= 0.4)."""
    from scipy.optimize import linear_sum_assignment

    found = total = false = 0
    for fnum, faces in truth.items():
        gt = np.array([f["box"] for f in faces], float).reshape(-1, 4)
        care = np.array([f["visible"] >= VISIBLE for f in faces], bool)
        boxes = np.array(pred.get(fnum, []), float).reshape(-1, 4)
        m = iou(gt, boxes)
        rows, cols = linear_sum_assignment(-m) if m.size else ([], [])
        hit = [(r, c) for r, c in zip(rows, cols, strict=True) if m[r, c] >= IOU]
        matched = {c for _, c in hit}
        found += sum(1 for r, _ in hit if care[r])
        total += int(care.sum())
        for c in range(len(boxes)):
            if c in matched:
                continue
            # a box on a don't-care face is not false
            if (~care).any() and bool((m[~care, c] >= IOU).any()):
                continue
            false += 1
    return {
        "recall": round(found / max(total, 1), 4),
        "false_per_frame": round(false / max(len(truth), 1), 4),
        "gt_faces": total,
    }


def _rss_peak(proc: subprocess.Popen[bytes], out: list[float]) -> None:
    peak = 0.0
    try:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(True))
            peak = max(peak, rss)
            time.sleep(0.05)
    except psutil.Error:
        pass
    out.append(peak / 2**20)


def _run(cmd: list[str], env: dict[str, str]) -> tuple[str, float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    peak: list[float] = []
    th = threading.Thread(target=_rss_peak, args=(proc, peak))
    th.start()
    stdout, stderr = proc.communicate()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:4])} failed:\n{stderr.decode()[-2000:]}")
    return stdout.decode(), time.perf_counter() - t0, peak[0] if peak else 0.0


def run_ours(clip: Path, out: Path, models: Path, frames: int, extra: list[str]) -> dict[str, Any]:
    events = out / f"{clip.stem}.events.jsonl"
    events.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "-q",
        "run",
        str(clip),
        "--models",
        str(models),
        "--sink",
        f"jsonl:{events}",
        "--json",
        "--max-frames",
        str(frames),
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    stdout, wall, rss = _run(cmd, env)
    summary = json.loads(stdout)
    pred: dict[int, list[list[float]]] = {}
    detected = 0
    n_face = 0
    with events.open() as f:
        for line in f:
            e = json.loads(line)
            if e["type"] == "face":
                pred.setdefault(e["frame_num"], []).append(e["bbox"])
                detected += int(e.get("detected", True))
                n_face += 1
    return {
        "frames": summary["frames_processed"],
        "frames_per_s": summary["frames_per_s"],
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(rss, 1),
        "pred": pred,
        "events": n_face,
        "detected_share": round(detected / max(n_face, 1), 3),
    }


def run_fer(clip: Path, out: Path, venv: Path, frames: int) -> dict[str, Any]:
    py = venv / "bin" / "python"
    if not py.is_file():
        raise SystemExit(
            f"error: {py} missing: run `make bench-peer` (builds {venv}) or pass --skip-fer"
        )
    boxes_path = out / f"{clip.stem}.fer.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    stdout, wall, rss = _run(
        [str(py), str(HERE / "fer_runner.py"), str(clip), str(boxes_path), str(frames)], env
    )
    summary = json.loads(stdout.strip().splitlines()[-1])
    pred = {}
    with boxes_path.open() as f:
        for line in f:
            r = json.loads(line)
            pred[r["frame_num"]] = r["boxes"]
    return {
        "frames": summary["frames"],
        "frames_per_s": summary["frames_per_s"],
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(rss, 1),
        "pred": pred,
        "events": summary["faces"],
        "detected_share": 1.0,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = "| clip | tool | frames/s | recall | false boxes/frame | faces with an event | peak RSS MB |"
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['clip']} | {r['tool']} | {r['frames_per_s']:.1f} | {r['recall']:.3f} | "
            f"{r['false_per_frame']:.3f} | {r['recall']:.3f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", default="faces7,crossing")
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--out", type=Path, default=REPO / "out" / "bench")
    ap.add_argument("--models", type=Path, default=REPO / "models")
    ap.add_argument("--fer-venv", type=Path, default=REPO / ".venv-fer")
    ap.add_argument("--skip-fer", action="store_true", help="Only emotion-stream.")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    ap.add_argument("ours_args", nargs="*", help="Extra `emotion-stream run` flags (after --).")
    args = ap.parse_args()
    rows = []
    for name in args.clips.split(","):
        clip, truth_path = args.out / f"{name}.mp4", args.out / f"{name}.truth.jsonl"
        if not clip.is_file() or not truth_path.is_file():
            clip, truth_path = make_clip(name, args.out, args.frames)
        truth = {k: v for k, v in load_truth(truth_path).items() if k < args.frames}
        tools = ["emotion-stream"] + ([] if args.skip_fer else ["fer 25.10.3"])
        for tool in tools:
            print(f"running {tool} on {name} ...", file=sys.stderr)
            if tool == "emotion-stream":
                r = run_ours(clip, args.out, args.models, args.frames, args.ours_args)
            else:
                r = run_fer(clip, args.out, args.fer_venv, args.frames)
            s = score(r.pop("pred"), truth)
            rows.append({"clip": name, "tool": tool, **r, **s})
    ratio = {}
    for name in args.clips.split(","):
        by = {r["tool"]: r for r in rows if r["clip"] == name}
        if "fer 25.10.3" in by:
            ratio[name] = round(
                by["emotion-stream"]["frames_per_s"] / max(by["fer 25.10.3"]["frames_per_s"], 1e-9),
                2,
            )
    print(table(rows))
    if ratio:
        print(
            "speed ratio emotion-stream / fer (same run): "
            + ", ".join(f"{k} {v}x" for k, v in ratio.items())
        )
    result = {
        "rows": rows,
        "ratio": ratio,
        "cpu_count": psutil.cpu_count(),
        "load_avg": os.getloadavg(),
    }
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
