"""The model card (markdown) written next to a run and next to an exported model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.metrics import comparison_table, per_class_table

CARD = "model_card.md"


def render(report: dict[str, Any]) -> str:
    """Markdown from a ``metrics.json`` report (see ``training.cli`` for its keys)."""
    spec = report["input_spec"]
    data = report["data"]
    test = report["test"]
    lines = [
        f"# Model card: {report['run']}",
        "",
        "## Model",
        f"- architecture: `{report['arch']}` ({report.get('arch_description', '')})",
        f"- parameters: {report.get('parameters', 'n/a')}",
        f"- input: {spec['channels']} x {spec['height']} x {spec['width']} "
        f"{spec.get('colour', 'gray')}, NCHW float32, "
        f"normalised as (x/255 - {spec['mean']}) / {spec['std']}",
        f"- output: softmax probabilities over 7 classes in this order: {', '.join(spec['classes'])}",
        f"- best epoch: {report.get('best_epoch', 'n/a')} of {report.get('epochs_run', 'n/a')}",
        "",
        "## Data",
        f"- source: `{data['source']}` ({data['layout']} layout)",
        f"- sha256 of pixels and labels: `{data['digest']}`",
        f"- counts: train {data['counts'].get('train')}, val {data['counts'].get('val')}, test {data['counts'].get('test')}",
        "",
        "## Test metrics beside the published figures",
        "",
        comparison_table(report["run"], test, markdown=True),
        "",
        f"Expected calibration error: {test['ece']:.4f}. Test images: {test['n']}.",
        "",
        "```",
        per_class_table(test),
        "```",
        "",
        "## Speed",
        f"- training: {report.get('train_img_s', 0):.0f} img/s, evaluation: {report.get('eval_img_s', 0):.0f} img/s "
        f"on {report.get('device', 'cpu')}",
        "",
        "## Limits",
        "- FER-2013 is 48x48 gray web images, posed and spontaneous, with label noise; figures on other "
        "faces (lighting, pose, age, ethnicity) may differ. Emotion recognition from faces infers "
        "expressions, not felt emotions.",
    ]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], path: Path) -> Path:
    path.write_text(render(report))
    return path
