"""The one engine contract: ``input_spec``, ``warmup()``, ``infer(batch) -> probs (n, 7)``.

``infer`` is ``post_process(run(pre_process(batch)))``. Input batches are aligned face crops,
uint8 gray (n, H, W) as produced by ``pipeline.stages.align``; each engine normalises them as its
``InputSpec`` says.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from pipeline.core.types import EMOTIONS


@dataclass(frozen=True, slots=True)
class InputSpec:
    """What an engine expects: (channels, height, width), and how uint8 pixels map to floats.

    float = (uint8 / 255 - mean) / std, applied per channel (gray: 1 channel).
    ``layout`` is NCHW for every engine here.
    """

    channels: int
    height: int
    width: int
    mean: float
    std: float
    classes: tuple[str, ...] = EMOTIONS
    dtype: str = "float32"
    softmax_in_model: bool = True

    #: ONNX ``metadata_props`` key under which exports store this spec as JSON.
    METADATA_KEY = "emotion_stream.input_spec"

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` an exported ONNX carries (see ``from_metadata``)."""
        d = asdict(self)
        d["classes"] = list(self.classes)
        return {self.METADATA_KEY: json.dumps(d, sort_keys=True)}

    @classmethod
    def from_metadata(cls, props: Mapping[str, str]) -> InputSpec | None:
        """Read the spec written by ``to_metadata``; None if the model carries none."""
        raw = props.get(cls.METADATA_KEY)
        if raw is None:
            return None
        d = json.loads(raw)
        d["classes"] = tuple(d["classes"])
        return cls(**d)

    def normalise(self, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """uint8 (n,H,W) gray or (n,H,W,C) -> float32 NCHW."""
        x = crops.astype(np.float32) * np.float32(1.0 / 255.0)
        x = (x - np.float32(self.mean)) / np.float32(self.std)
        if x.ndim == 3:
            x = x[:, None, :, :]
        else:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if x.shape[1] != self.channels:
            x = np.repeat(x[:, :1], self.channels, axis=1)
        return np.ascontiguousarray(x, dtype=np.float32)


#: The input of the default model, the FER-2013 mini-Xception: 64x64 gray, (x/255 - 0.5) * 2.
MINI_XCEPTION_SPEC = InputSpec(channels=1, height=64, width=64, mean=0.5, std=0.5)


class Engine(abc.ABC):
    """An emotion classifier. Thread-safety: each backend serialises access to its context."""

    name: str = "base"
    precision: str = "fp32"

    @property
    @abc.abstractmethod
    def input_spec(self) -> InputSpec: ...

    def pre_process(self, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        return self.input_spec.normalise(crops)

    @abc.abstractmethod
    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run the model on a normalised NCHW float32 batch; return raw outputs (n, 7)."""

    def post_process(self, out: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = out.astype(np.float32, copy=False)
        if not self.input_spec.softmax_in_model:
            out = out - out.max(axis=1, keepdims=True)
            out = np.exp(out)
        s = out.sum(axis=1, keepdims=True)
        return (out / np.where(s > 0, s, 1)).astype(np.float32)

    def infer(self, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        if len(crops) == 0:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        return self.post_process(self.run(self.pre_process(crops)))

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        spec = self.input_spec
        for b in batch_sizes:
            self.infer(np.zeros((b, spec.height, spec.width), np.uint8))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
