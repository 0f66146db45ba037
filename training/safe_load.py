"""Loading ``.pt`` / ``.pth`` files as weights only: never a pickle that can run code.

``torch.load(..., weights_only=True)`` unpickles only tensors, containers and plain values
(dicts, lists, tuples, numbers, strings); a file that needs anything more (a class, a function,
an object with ``__reduce__``) is refused with one line naming the file, and nothing in it
runs. The project's own checkpoints hold only such values (the configuration and input spec as
plain dicts), so they load this way.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from pipeline.core.errors import ModelError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_NOT_A_PICKLE = ("Unsupported operand", "invalid load key", "pickle data was truncated")


def load_weights(path: Path, what: str, fix: str) -> Any:
    """The contents of ``path`` (``what``: "checkpoint", "pretrained weights"), loaded with
    ``weights_only=True``; ModelError naming the file and ``fix`` if it cannot be."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(exc)
        if detail.startswith(_NOT_A_PICKLE):  # bytes that are no pickle at all
            raise ModelError(f"cannot read {what} {path} ({detail}): {fix}") from None
        found = _GLOBAL.search(str(exc))
        needs = f" (it names {found.group(1)})" if found else ""
        raise ModelError(
            f"{what} {path} holds more than weights{needs}: refused, loading it could run "
            f"code: {fix}"
        ) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors ...
        raise ModelError(f"cannot read {what} {path} ({_first_line(exc)}): {fix}") from None


def _unpickler_detail(exc: BaseException) -> str:
    """The reason torch's weights-only unpickler gives, without its advice to disable it."""
    text = str(exc)
    _, found, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in rest.splitlines() if line.strip()] if found else []
    return lines[0][:200] if lines else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
