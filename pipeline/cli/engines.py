"""``emotion-stream engines list | build | parity | bench``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = Path("models/emotion_mini_xception.onnx")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return values


Arg = tuple[tuple[str, ...], dict[str, Any]]
JSON_FLAG: Arg = (("--json",), {"action": "store_true", "help": "Print JSON."})

#: Each subcommand's arguments: (names, argparse keywords).
BUILD_ARGS: tuple[Arg, ...] = (
    (("model",), {"type": Path, "metavar": "MODEL.onnx", "help": "ONNX emotion model."}),
    (
        ("--precision",),
        {"choices": ("fp32", "fp16", "int8"), "default": "fp16", "help": "Plan precision."},
    ),
    (("--max-batch",), {"type": int, "default": 32, "help": "Largest batch of the profile."}),
    (("--opt-batch",), {"type": int, "help": "Batch to tune for (default: max batch)."}),
    (
        ("--calib",),
        {
            "type": Path,
            "help": "int8 calibration: folder of aligned face crops, .npy of crops, or a video with faces.",
        },
    ),
    (("--cache", "--out"), {"dest": "cache", "type": Path, "help": "Plan cache folder."}),
    (("--workspace-mb",), {"type": int, "default": 1024, "help": "Builder workspace, MiB."}),
    (("--rebuild",), {"action": "store_true", "help": "Build even if a matching plan is cached."}),
    (
        ("--detector",),
        {
            "action": "store_true",
            "help": "MODEL is an SCRFD-format face detector: build its plan for --input-size "
            "(int8 --calib: a video or a .npy of RGB frames at that size).",
        },
    ),
    (
        ("--input-size",),
        {"default": "640x640", "help": "Detector input WIDTHxHEIGHT (with --detector)."},
    ),
)
PARITY_ARGS: tuple[Arg, ...] = (
    (
        ("model",),
        {
            "type": Path,
            "nargs": "?",
            "default": DEFAULT_MODEL,
            "metavar": "MODEL.onnx",
            "help": "ONNX model.",
        },
    ),
    (("--torch",), {"type": Path, "help": "TorchScript reference (default: MODEL.pt if present)."}),
    (
        ("--crops",),
        {
            "type": Path,
            "help": "Real aligned face crops: .npy (n,H,W) uint8, a folder of crop images, or a video (faces detected and aligned as the worker does).",
        },
    ),
    (
        ("--n",),
        {
            "type": int,
            "default": 256,
            "help": "Number of crops (default synthetic ones, or at most this many from --crops).",
        },
    ),
    (
        ("--int8-calib",),
        {"type": Path, "help": "Also compare a TensorRT int8 plan calibrated on these crops."},
    ),
    (
        ("--detector-dir",),
        {"type": Path, "help": "Detector model folder for --crops VIDEO (default: models)."},
    ),
    (("--every",), {"type": int, "default": 3, "help": "--crops VIDEO: use every Nth frame."}),
    JSON_FLAG,
)
BENCH_ARGS: tuple[Arg, ...] = (
    (
        ("model",),
        {"type": Path, "nargs": "?", "metavar": "MODEL", "help": "ONNX, TorchScript or plan."},
    ),
    (("--model",), {"dest": "model_opt", "type": Path, "help": "Same as MODEL."}),
    (
        ("--backend",),
        {"default": "auto", "help": "auto, all, or a comma list of onnxruntime, torch, tensorrt."},
    ),
    (("--precision",), {"default": "fp32", "help": "fp32, fp16 or int8 (comma list allowed)."}),
    (
        ("--batch-sizes", "--batch"),
        {"dest": "batch_sizes", "type": _ints, "default": [1, 8, 32, 64], "help": "e.g. 1,8,32."},
    ),
    (("--iters",), {"type": int, "default": 50, "help": "Timed calls per batch size."}),
    (
        ("--min-seconds",),
        {"type": float, "default": 0.5, "help": "Time each batch size at least this long."},
    ),
    (("--device",), {"help": "torch device (cpu, cuda)."}),
    (("--json",), {"action": "store_true", "help": "Print the rows as JSON."}),
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``engines`` and its subcommands to the CLI."""
    engines = sub.add_parser(
        "engines", help="Emotion inference engines: list, build, parity, bench."
    )
    esub = engines.add_subparsers(dest="engines_command", metavar="ACTION", required=True)
    commands = (
        ("list", "Backends and whether they can run here (and why not).", (JSON_FLAG,), cmd_list),
        (
            "build",
            "Build (or find cached) a TensorRT plan from an ONNX model.",
            BUILD_ARGS,
            cmd_build,
        ),
        (
            "parity",
            "Compare every available backend with PyTorch on the same crops.",
            PARITY_ARGS,
            cmd_parity,
        ),
        ("bench", "faces/s and latency per backend and batch size.", BENCH_ARGS, cmd_bench),
    )
    for name, help_text, arguments, func in commands:
        p = esub.add_parser(name, help=help_text)
        for names, kw in arguments:
            p.add_argument(*names, **kw)
        p.set_defaults(func=func)


def cmd_list(args: argparse.Namespace) -> int:
    from engines.registry import list_backends

    rows = list_backends()
    if args.json:
        print(
            json.dumps(
                [
                    {"backend": r.backend, "available": r.available, "reason": r.reason}
                    for r in rows
                ],
                indent=2,
            )
        )
    else:
        for r in rows:
            print(f"{r.backend:12s} {'yes' if r.available else 'no ':3s}  {r.reason}")
    return 0


def _calib_crops(source: Path | None, model: Path) -> Path | None:
    """A video becomes a ``.npy`` of the worker's aligned crops; crops pass through as given."""
    from engines.calibrate import VIDEO_SUFFIXES

    if source is None or source.suffix.lower() not in VIDEO_SUFFIXES:
        return source
    import numpy as np

    from engines.backends import onnx_spec
    from pipeline.tools.calibration import video_cropper

    crops = video_cropper()(source, onnx_spec(model), 512)
    out = Path(tempfile.mkdtemp(prefix="es-calib-")) / f"{source.stem}-crops.npy"
    np.save(out, crops)
    logger.info("calibration: %d crops from %s saved to %s", len(crops), source, out)
    return out


def _input_hw(size: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input-size {size!r} is not WIDTHxHEIGHT: pass e.g. 640x640") from None
    return h, w


def _detector_calib(source: Path | None, hw: tuple[int, int]) -> Path | None:
    """A video becomes a ``.npy`` of frames as the detector sees them (letterboxed RGB)."""
    from engines.calibrate import VIDEO_SUFFIXES

    if source is None or source.suffix.lower() not in VIDEO_SUFFIXES:
        return source
    import numpy as np

    from pipeline.tools.gpu_check import letterbox_rgb, real_frames

    frames = np.stack([letterbox_rgb(f, hw) for f in real_frames(source, 2, 64)])
    out = Path(tempfile.mkdtemp(prefix="es-calib-")) / f"{source.stem}-frames.npy"
    np.save(out, frames)
    return out


def cmd_build(args: argparse.Namespace) -> int:
    from engines.registry import cuda_available
    from engines.trt_builder import BuildSettings, ensure_plan, import_trt

    trt = import_trt()  # MissingDependencyError: one line that says how to get TensorRT
    if not cuda_available():
        raise ConfigError(
            f"building a TensorRT plan from {args.model} needs a CUDA GPU and none is visible: run it on the GPU machine"
        )
    detector: dict[str, Any] = {}
    if args.detector:
        detector = {"kind": "detector", "input_hw": _input_hw(args.input_size)}
        calib = _detector_calib(args.calib, detector["input_hw"])
    else:
        calib = _calib_crops(args.calib, args.model)
    settings = BuildSettings(
        **detector,
        precision=args.precision,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        calib=calib,
        cache_dir=args.cache,
        workspace_mb=args.workspace_mb,
        rebuild=args.rebuild,
    )
    plan, meta, built = ensure_plan(args.model, settings, trt)
    print(
        json.dumps(
            {
                "plan": str(plan),
                "built": built,
                **{
                    k: meta.get(k)
                    for k in (
                        "precision",
                        "max_batch",
                        "opt_batch",
                        "trt_version",
                        "gpu_name",
                        "compute_capability",
                        "build_seconds",
                    )
                },
            },
            indent=2,
        )
    )
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    from engines.parity import THRESHOLDS, run_parity

    crops = None
    if args.crops is not None:
        from engines.backends import onnx_spec
        from engines.calibrate import load_crops
        from pipeline.tools.calibration import video_cropper

        crops = load_crops(
            args.crops,
            onnx_spec(args.model),
            limit=args.n,
            video_crops=video_cropper(every=args.every, detector_dir=args.detector_dir),
        )
    ref, rows = run_parity(
        args.model,
        args.torch,
        crops=crops,
        n=args.n,
        int8_calib=_calib_crops(args.int8_calib, args.model),
    )
    ok = all(r.passed is not False for r in rows)
    if args.json:
        th = {
            k: {"min_agreement": v.min_agreement, "max_abs": v.max_abs}
            for k, v in THRESHOLDS.items()
        }
        print(
            json.dumps(
                {
                    "reference": ref,
                    "rows": [r.as_dict() for r in rows],
                    "thresholds": th,
                    "passed": ok,
                },
                indent=2,
            )
        )
    else:
        print(f"reference: {ref}")
        for r in rows:
            verdict = "report" if r.passed is None else "ok" if r.passed else "FAIL"
            print(
                f"{r.backend:12s} {r.precision:5s} {r.device:24s} n={r.n} max|d|={r.max_abs_diff:.2e} mean|d|={r.mean_abs_diff:.2e} top1={100 * r.top1_agreement:.2f}% {verdict}"
            )
    if not rows:
        print("no backend to compare with the reference here", file=sys.stderr)
    return 0 if ok else 1


def _bench_plan(args: argparse.Namespace, model: Path) -> list[tuple[str, Path, str]]:
    """(backend, model file, precision) combinations to run."""
    from engines.registry import SUFFIXES, availability, resolve_backend

    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if args.backend == "auto":
        backends = [resolve_backend(model, "auto")[0]]
    elif args.backend == "all":
        backends = [b for b in ("onnxruntime", "torch", "tensorrt") if availability(b).available]
    else:
        backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    plan = []
    for b in backends:
        file = model
        if model.suffix.lower() not in SUFFIXES.get(b, ()):
            alt = [
                model.with_suffix(s) for s in SUFFIXES.get(b, ()) if model.with_suffix(s).is_file()
            ]
            if not alt and args.backend == "all":
                logger.warning("skipping %s: no model file it reads beside %s", b, model)
                continue
            file = (
                alt[0] if alt else model.with_suffix(SUFFIXES[b][0])
            )  # missing: load says how to get it
        plan += [(b, file, p) for p in precisions]
    if not plan:
        raise ModelError(
            f"no backend can run {model} here: check `emotion-stream engines list` and the model path"
        )
    return plan


def cmd_bench(args: argparse.Namespace) -> int:
    from engines.bench import bench_engine
    from engines.registry import load_engine

    model = args.model_opt or args.model or DEFAULT_MODEL
    rows: list[dict[str, Any]] = []
    for backend, file, precision in _bench_plan(args, model):
        engine = load_engine(
            file,
            backend=backend,
            precision=precision,
            max_batch=max(args.batch_sizes),
            device=args.device,
        )
        device = str(getattr(engine, "device", ",".join(getattr(engine, "providers", []))))
        rows += [
            r.as_dict() | {"model": str(file)}
            for r in bench_engine(
                engine, args.batch_sizes, args.iters, min_seconds=args.min_seconds, device=device
            )
        ]
        engine.close()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(
            f"{'backend':12s} {'prec':5s} {'batch':>5s} {'faces/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s} {'cpu%':>6s} {'rss MB':>7s} {'x b1':>6s}"
        )
        for r in rows:
            sp = "" if r["speedup_vs_b1"] is None else f"{r['speedup_vs_b1']:.2f}"
            print(
                f"{r['backend']:12s} {r['precision']:5s} {r['batch']:5d} {r['images_per_s']:10.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['cpu_percent']:6.0f} {r['peak_rss_mb']:7.0f} {sp:>6s}"
            )
    return 0
