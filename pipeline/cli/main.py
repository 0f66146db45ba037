"""The ``emotion-stream`` command line.

Each area registers its own subcommands (``register(subparsers)``) from its own module, so
that heavy imports (torch, onnxruntime, tensorrt) happen only inside the chosen command.
Every ``EmotionStreamError`` becomes one ``error: ...`` line and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pipeline.core.errors import EmotionStreamError

logger = logging.getLogger(__name__)

#: Modules that each expose ``register(subparsers)``; one module per area.
COMMAND_MODULES = (
    "pipeline.cli.run",  # run, bench, sample
    "pipeline.cli.worker",  # worker
    "pipeline.cli.config",  # config show
    "pipeline.cli.models",  # models bootstrap | list
    "pipeline.cli.sessions",  # sessions show, tail
    "pipeline.cli.streams",  # streams add | remove | list
    "pipeline.cli.engines",  # engines build | bench | parity
    "pipeline.cli.doctor",  # doctor
    "pipeline.cli.soak",  # soak
    "pipeline.cli.eventlog",  # eventlog list | forget
    "pipeline.cli.web",  # web hash-password
    "training.cli",  # train, evaluate, export
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emotion-stream",
        description="Live video in, per-face emotion events out (Kafka, Redis, JSON lines).",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="More logging (-vv: debug)."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="Only warnings and errors.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("kafka", "urllib3", "matplotlib", "PIL", "libav"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.INFO)
    if verbose < 2:
        logging.getLogger("kafka").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)  # for commands that re-run
    setup_logging(args.verbose, args.quiet)
    try:
        rc = args.func(args)
    except EmotionStreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
