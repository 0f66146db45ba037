"""Refuse an emotion model at load time, with one line, when it cannot be an emotion classifier.

An emotion model takes one image tensor (N, C, H, W) with C = 1 (gray) or 3 and returns
(N, 7) scores in the FER-2013 class order. Without this check a model with another output
(say (N, 8), or (N, 7, 1)) loads and then fails on the first face, ending its stream as
"processing failed". Two checks:

- ``check_onnx_io``: the declared inputs and outputs of an ONNX file (before a runtime loads it);
- ``probe``: one real inference on a blank batch of 2 through the loaded engine (any backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine
from pipeline.core.errors import ModelError
from pipeline.core.types import EMOTIONS

_FIX = "pass a FER-2013 emotion classifier (one (N, C, H, W) image input, (N, 7) output)"


def _dims(value_info: Any) -> list[int | None]:
    return [
        d.dim_value if d.HasField("dim_value") else None
        for d in value_info.type.tensor_type.shape.dim
    ]


def check_onnx_io(model: Path) -> None:
    """ModelError unless the ONNX file declares one 4-D float image input and an (N, 7) output."""
    import onnx

    try:
        m = onnx.load(str(model), load_external_data=False)
    except Exception:
        return  # unreadable files get the backend's own error (with its fix hint)
    init = {t.name for t in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise ModelError(f"emotion model {model} has {len(inputs)} inputs, not 1: {_FIX}")
    inp = inputs[0]
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    dims = _dims(inp)
    channels = dims[1] if len(dims) == 4 else None
    if (
        inp.type.tensor_type.elem_type not in float_types
        or len(dims) != 4
        or channels not in (None, 1, 3)
    ):
        raise ModelError(
            f"emotion model {model}: input {inp.name!r} {_shape(dims)} is not an image tensor"
            f" (N, 1|3, H, W) of floats: {_FIX}"
        )
    if not m.graph.output:
        raise ModelError(f"emotion model {model} has no output: {_FIX}")
    out = m.graph.output[0]
    odims = _dims(out)
    if len(odims) != 2 or odims[1] not in (None, len(EMOTIONS)):
        raise ModelError(
            f"emotion model {model}: output {out.name!r} {_shape(odims)} is not (N, {len(EMOTIONS)}): {_FIX}"
        )


def probe(engine: Engine, model: Path) -> None:
    """One inference on 2 blank crops: ModelError unless it returns (2, 7) finite scores."""
    spec = engine.input_spec
    crops = np.zeros((2, spec.height, spec.width), np.uint8)
    try:
        out = np.asarray(engine.run(engine.pre_process(crops)))
    except Exception as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"emotion model {model} fails on a (2, {spec.channels}, {spec.height}, {spec.width})"
            f" image batch ({why}): {_FIX}"
        ) from None
    if out.shape != (2, len(EMOTIONS)):
        raise ModelError(
            f"emotion model {model} returns shape {tuple(out.shape)} for 2 faces, not"
            f" (2, {len(EMOTIONS)}): {_FIX}"
        )
    if not np.isfinite(out).all():
        raise ModelError(f"emotion model {model} returns NaN or infinite scores: {_FIX}")


def _shape(dims: list[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
