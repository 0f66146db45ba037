"""Engine backends, one module each: ``onnxruntime``, ``torch``, ``tensorrt``.

Each module holds its pydantic config (``extra="forbid"``, described fields) and its
``Engine`` subclass. Backends are imported lazily through ``engines.registry`` so that a
missing optional dependency fails only the backend that needs it.

Where an engine finds its ``InputSpec``:

- ONNX: ``metadata_props`` under ``InputSpec.METADATA_KEY`` (written by ``emotion-stream export``);
- TorchScript ``.pt``: the extra file ``input_spec.json`` saved with
  ``torch.jit.save(m, path, _extra_files={"input_spec.json": json})``;
- else, for ONNX and TorchScript, a sidecar JSON beside the model (``MODEL.onnx.json`` /
  ``MODEL.pt.json``, or ``MODEL.json``) that a user writes for a foreign model;
- TensorRT plan: the metadata JSON the builder writes beside the plan (``PLAN.json``).

The JSON is the value that ``InputSpec.to_metadata()`` stores (a dict of the spec's fields);
a dict that wraps it under ``InputSpec.METADATA_KEY`` is accepted as well. Fields: channels (1|3),
height, width, colour (gray|rgb|bgr), mean and std (one value or one per channel), scale
(default 1/255), softmax_in_model, classes. A model with no spec falls back to its input
shape (3 channels read as RGB) and the mini-Xception normalisation, with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engines.base import MINI_XCEPTION_SPEC, InputSpec
from pipeline.core.enums import Precision
from pipeline.core.errors import ModelError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_STEM = "emotion_mini_xception"
PRECISIONS = tuple(p.value for p in Precision)


def model_fix_hint(model: Path) -> str:
    """How to get a missing model: the bootstrap command for the default, export otherwise."""
    if model.stem == DEFAULT_MODEL_STEM:
        return f"run `emotion-stream models bootstrap --dir {model.parent or Path('.')}`"
    return "create it with `emotion-stream export` (or pass an existing model with --model)"


def require_file(model: Path, suffixes: Sequence[str], what: str) -> Path:
    """The model path, checked to exist and to carry one of ``suffixes``; else ModelError."""
    model = Path(model)
    if not model.is_file():
        raise ModelError(f"{what} model {model} does not exist: {model_fix_hint(model)}")
    if model.suffix.lower() not in suffixes:
        raise ModelError(
            f"{what} model {model} is not a {'/'.join(suffixes)} file: pass one (see `emotion-stream engines list`)"
        )
    return model


def spec_from_json(raw: str | bytes, source: str) -> InputSpec:
    """Parse the JSON form of an ``InputSpec`` (bare, or wrapped under the metadata key)."""
    try:
        d: Any = json.loads(raw)
        if isinstance(d, dict) and InputSpec.METADATA_KEY in d:
            inner = d[InputSpec.METADATA_KEY]
            d = json.loads(inner) if isinstance(inner, str) else inner
        d = dict(d)
        d["classes"] = tuple(d.get("classes", MINI_XCEPTION_SPEC.classes))
        return InputSpec(**d)
    except (ValueError, TypeError) as exc:
        raise ModelError(
            f"input spec in {source} is not valid ({exc}): fix it or re-export the model"
        ) from exc


def fallback_spec(shape: Sequence[Any], source: str, softmax_in_model: bool = True) -> InputSpec:
    """A spec from an NCHW input shape with the mini-Xception normalisation (and a warning)."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in list(shape)[1:4]]
    c, h, w = [*dims, None, None, None][:3]
    spec = InputSpec(
        channels=c or MINI_XCEPTION_SPEC.channels,
        height=h or MINI_XCEPTION_SPEC.height,
        width=w or MINI_XCEPTION_SPEC.width,
        mean=0.5,
        std=0.5,
        softmax_in_model=softmax_in_model,
    )
    logger.warning(
        "%s carries no input spec (%s, nor a sidecar %s.json); assuming %sx%s %s input "
        "normalised as (x/255 - 0.5) / 0.5, softmax %s the model: write the sidecar if wrong",
        source,
        InputSpec.METADATA_KEY,
        source,
        spec.height,
        spec.width,
        spec.colour,
        "in" if softmax_in_model else "after",
    )
    return spec


def check_shape(spec: InputSpec, shape: Sequence[Any], source: str) -> InputSpec:
    """``spec``, checked against the model's fixed NCHW input dims (dynamic dims pass)."""
    want = (spec.channels, spec.height, spec.width)
    for name, got, w in zip(("channels", "height", "width"), list(shape)[1:4], want, strict=False):
        if isinstance(got, int) and got > 0 and got != w:
            raise ModelError(
                f"input spec in {source} says {name} {w} but the model input has {got}: fix the spec"
            )
    return spec


def spec_from_onnx_props(
    props: Mapping[str, str], shape: Sequence[Any], source: str, output_name: str = "probs"
) -> InputSpec:
    """The spec in ONNX ``metadata_props``, else a sidecar JSON beside the model
    (``MODEL.onnx.json`` or ``MODEL.json``), else the shape fallback."""
    if InputSpec.METADATA_KEY in props:
        return check_shape(spec_from_json(props[InputSpec.METADATA_KEY], source), shape, source)
    side = sidecar_json(Path(source))
    if side is not None:
        return check_shape(spec_from_json(side.read_text(), str(side)), shape, str(side))
    return fallback_spec(shape, source, softmax_in_model="logit" not in output_name.lower())


def onnx_spec(model: Path) -> InputSpec:
    """Read an ONNX file's spec with the ``onnx`` package (no runtime needed)."""
    import onnx

    try:
        m = onnx.load(str(model), load_external_data=False)
    except Exception as exc:
        raise ModelError(
            f"{model} is not a readable ONNX model ({exc}): {model_fix_hint(model)}"
        ) from exc
    props = {p.key: p.value for p in m.metadata_props}
    inputs = [i for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    if not inputs:
        raise ModelError(f"{model} has no graph input: re-export it with `emotion-stream export`")
    dims = [
        d.dim_value if d.HasField("dim_value") else None
        for d in inputs[0].type.tensor_type.shape.dim
    ]
    out = m.graph.output[0].name if m.graph.output else "probs"
    return spec_from_onnx_props(props, dims, str(model), out)


def check_precision(precision: str) -> Precision:
    p = str(precision).lower()
    if p not in PRECISIONS:
        from pipeline.core.errors import ConfigError

        raise ConfigError(
            f"precision {precision!r} is not one of {', '.join(PRECISIONS)}: pick one"
        )
    return Precision(p)


def sidecar_json(model: Path) -> Path | None:
    """``MODEL.json`` or ``MODEL.pt.json`` beside a model, if one exists."""
    for p in (model.with_name(model.name + ".json"), model.with_suffix(".json")):
        if p.is_file():
            return p
    return None
