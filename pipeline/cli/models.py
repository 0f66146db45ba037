"""``emotion-stream models bootstrap | list``: build the default models offline, show them."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``models bootstrap`` and ``models list`` to the CLI."""
    p = sub.add_parser("models", help="Build and list the default models (offline, reproducible).")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    b = msub.add_parser(
        "bootstrap", help="Build the default detector and emotion model into a folder."
    )
    b.add_argument(
        "--dir", type=Path, default=Path("models"), help="Models folder (default: models)."
    )
    b.add_argument("--force", action="store_true", help="Rebuild even when the manifest verifies.")
    b.set_defaults(func=cmd_bootstrap)
    ls = msub.add_parser(
        "list", help="Show each model: name, kind, path (from here), sha256, size, license."
    )
    ls.add_argument(
        "--dir", type=Path, default=Path("models"), help="Models folder (default: models)."
    )
    ls.add_argument("--json", action="store_true", help="JSON output.")
    ls.set_defaults(func=cmd_list)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from pipeline.tools.model_zoo.manifest import bootstrap

    entries = bootstrap(args.dir, force=args.force)
    print(f"{len(entries)} models ready in {args.dir}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from pipeline.core.errors import ModelError
    from pipeline.tools.model_zoo.manifest import list_models

    folder: Path = args.dir
    if not folder.is_dir():
        raise ModelError(
            f"models folder {folder} does not exist: run `emotion-stream models bootstrap --dir {folder}`"
        )
    # The manifest keeps paths relative to the folder; a user's script needs them from here.
    entries = [replace(e, path=str(folder / e.path)) for e in list_models(folder)]
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=2))
        return 0
    if not entries:
        print(f"no models in {folder}: run `emotion-stream models bootstrap --dir {folder}`")
        return 0
    rows = [(e.name, e.kind, e.path, e.sha256[:12], str(e.size), e.license) for e in entries]
    header = ("NAME", "KIND", "PATH", "SHA256", "SIZE", "LICENSE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0
