"""``emotion-stream doctor [--json]``: what this machine can run (see ``pipeline.tools.doctor``)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``doctor`` to the CLI."""
    doctor = sub.add_parser(
        "doctor",
        help="Show CPU, GPU, driver, CUDA, TensorRT, ONNX Runtime, PyAV decoders and usable backends.",
    )
    doctor.add_argument("--json", action="store_true", help="Print the report as JSON.")
    doctor.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from pipeline.tools.doctor import render, report

    rep = report()
    print(json.dumps(rep, indent=2) if args.json else render(rep))
    return 0
