"""The one engine contract: ``input_spec``, ``warmup()``, ``infer(batch) -> probs (n, 7)``.

``infer`` is ``post_process(run(pre_process(batch)))``. Input batches are aligned face crops,
uint8 gray (n, H, W) or colour (n, H, W, 3) as produced by ``pipeline.stages.align`` from the
engine's ``InputSpec.crop``; each engine normalises them as its ``InputSpec`` says.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from pipeline.core.enums import ColourOrder
from pipeline.core.types import EMOTIONS, CropSpec


@dataclass(frozen=True, slots=True)
class InputSpec:
    """What an engine expects: (channels, height, width), colour order, and how uint8 pixels
    map to floats.

    float = (uint8 * scale - mean[c]) / std[c], per channel c (gray: 1 channel). ``colour`` is
    ``gray`` for 1 channel, ``rgb`` or ``bgr`` for 3 (3 channels without a colour mean RGB).
    A scalar ``mean``/``std`` applies to every channel; both are stored as one value per
    channel. ``layout`` is NCHW for every engine here; height and width need not be equal.
    """

    channels: int
    height: int
    width: int
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    classes: tuple[str, ...] = EMOTIONS
    dtype: str = "float32"
    softmax_in_model: bool = True
    colour: ColourOrder | None = None
    scale: float = 1.0 / 255.0

    #: ONNX ``metadata_props`` key under which exports store this spec as JSON.
    METADATA_KEY = "emotion_stream.input_spec"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"height and width must be positive, got {self.height}x{self.width}")
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        default = ColourOrder.GRAY if self.channels == 1 else ColourOrder.RGB
        colour = default if self.colour is None else ColourOrder(self.colour)
        if colour.channels != self.channels:
            raise ValueError(f"colour {colour} does not fit {self.channels} channel(s)")
        object.__setattr__(self, "colour", colour)
        object.__setattr__(self, "mean", self._per_channel("mean", self.mean))
        object.__setattr__(self, "std", self._per_channel("std", self.std))
        object.__setattr__(self, "classes", tuple(self.classes))
        if float(self.std_vec.min()) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")

    def _per_channel(self, name: str, v: float | Sequence[float]) -> tuple[float, ...]:
        vals = (float(v),) if isinstance(v, int | float) else tuple(float(x) for x in v)
        if len(vals) == 1:
            return vals * self.channels
        if len(vals) != self.channels:
            raise ValueError(f"{name} needs 1 or {self.channels} values, got {len(vals)}")
        return vals

    @property
    def mean_vec(self) -> npt.NDArray[np.float32]:
        """Per-channel mean as float32 (channels,)."""
        return np.asarray(self.mean, np.float32).reshape(-1)

    @property
    def std_vec(self) -> npt.NDArray[np.float32]:
        """Per-channel std as float32 (channels,)."""
        return np.asarray(self.std, np.float32).reshape(-1)

    @property
    def crop(self) -> CropSpec:
        """The aligned crop this model wants (size and colour), for ``pipeline.stages.align``."""
        assert isinstance(self.colour, ColourOrder)
        return CropSpec(self.height, self.width, self.colour)

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` an exported ONNX carries (see ``from_metadata``).

        Compact where it can be: one mean/std when every channel shares it, no colour for gray,
        no scale for 1/255, so a gray model's metadata (and file hash) is what it always was."""
        d = asdict(self)
        d["classes"] = list(self.classes)
        for key in ("mean", "std"):
            vals = list(d[key])
            d[key] = vals[0] if len(set(vals)) == 1 else vals
        if self.colour is ColourOrder.GRAY:
            del d["colour"]
        else:
            d["colour"] = str(self.colour)
        if self.scale == 1.0 / 255.0:
            del d["scale"]
        return {self.METADATA_KEY: json.dumps(d, sort_keys=True)}

    @classmethod
    def from_metadata(cls, props: Mapping[str, str]) -> InputSpec | None:
        """Read the spec written by ``to_metadata``; None if the model carries none.

        Older exports (scalar mean/std, no colour or scale) read as before."""
        raw = props.get(cls.METADATA_KEY)
        if raw is None:
            return None
        d = json.loads(raw)
        d["classes"] = tuple(d["classes"])
        return cls(**d)

    def normalise(self, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """uint8 (n,H,W) gray or (n,H,W,C) in this spec's colour order -> float32 NCHW.

        Gray crops given to a 3-channel spec (say, a gray .npy of calibration crops) are repeated
        into every channel; colour crops for a gray spec are an error."""
        x = crops.astype(np.float32) * np.float32(self.scale)
        if x.ndim == 3:
            x = x[..., None]
        if x.shape[-1] != self.channels:
            if x.shape[-1] != 1:
                raise ValueError(
                    f"crops have {x.shape[-1]} channels, the model wants {self.channels}"
                )
            x = np.repeat(x, self.channels, axis=-1)
        x = (x - self.mean_vec) / self.std_vec
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


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
            self.infer(np.zeros(spec.crop.shape(b), np.uint8))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
