"""ONNX Runtime backend: CPU, or the CUDA / TensorRT execution providers where present."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from engines.backends import check_precision, model_fix_hint, require_file, spec_from_onnx_props
from engines.base import Engine, InputSpec
from pipeline.core.errors import ConfigError, MissingDependencyError, ModelError

logger = logging.getLogger(__name__)

#: Execution providers tried in this order when ``providers`` is empty (TensorRT EP is opt-in).
AUTO_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeConfig(BaseModel):
    """Options of the ONNX Runtime backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    providers: tuple[str, ...] = Field(
        (),
        description="Execution providers in priority order; empty picks CUDA when present, else CPU.",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="Threads inside one operator; 0 lets ONNX Runtime choose."
    )
    inter_op_threads: int = Field(
        0, ge=0, description="Threads across operators; 0 lets ONNX Runtime choose."
    )
    trt_cache_dir: Path | None = Field(
        None,
        description="Engine cache folder for the TensorRT execution provider, when it is used.",
    )


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(
            "onnxruntime",
            "the onnxruntime engine backend",
            "pip install onnxruntime (or onnxruntime-gpu)",
        ) from exc
    return onnxruntime


def pick_providers(available: list[str], wanted: tuple[str, ...], device: str | None) -> list[Any]:
    """Providers to request: ``wanted`` (each must be available) or the automatic order."""
    if wanted:
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ConfigError(
                f"onnxruntime providers {missing} are not available (have {available}): pick from those"
            )
        return list(wanted)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    return [p for p in AUTO_PROVIDERS if p in available] or ["CPUExecutionProvider"]


class OnnxRuntimeEngine(Engine):
    """An ONNX model in an ``onnxruntime.InferenceSession``; ``run`` is serialised by a lock."""

    name = "onnxruntime"

    def __init__(
        self,
        model: Path,
        precision: str = "fp32",
        max_batch: int = 32,
        device: str | None = None,
        config: OnnxRuntimeConfig | None = None,
    ) -> None:
        ort = import_ort()
        self.model = require_file(Path(model), (".onnx",), "emotion")
        self.config = config or OnnxRuntimeConfig()
        self.max_batch = max_batch
        if check_precision(precision) != "fp32":
            logger.warning(
                "onnxruntime backend runs %s in fp32 (it does not convert precision)", self.model
            )
        self.precision = "fp32"
        self._lock = threading.Lock()
        self._session = self._open(ort, device)
        self.providers: list[str] = list(self._session.get_providers())
        inp = self._session.get_inputs()[0]
        out = self._session.get_outputs()[0]
        self._input_name: str = inp.name
        self._output_name: str = out.name
        self._fixed_batch = (
            inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        )
        props = dict(self._session.get_modelmeta().custom_metadata_map)
        self._spec = spec_from_onnx_props(props, inp.shape, str(self.model), out.name)
        logger.info("onnxruntime engine %s on %s", self.model, self.providers)

    def _open(self, ort: Any, device: str | None) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.config.intra_op_threads
        opts.inter_op_num_threads = self.config.inter_op_threads
        opts.log_severity_level = 3
        providers = pick_providers(
            list(ort.get_available_providers()), self.config.providers, device
        )
        prov_args: list[Any] = []
        for p in providers:
            if p == "TensorrtExecutionProvider" and self.config.trt_cache_dir is not None:
                cache = str(self.config.trt_cache_dir)
                prov_args.append(
                    (p, {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache})
                )
            else:
                prov_args.append(p)
        try:
            return ort.InferenceSession(str(self.model), sess_options=opts, providers=prov_args)
        except Exception as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(
                f"{self.model} cannot be loaded by onnxruntime ({msg}): {model_fix_hint(self.model)}"
            ) from exc

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        step = self._fixed_batch or len(x)
        outs = []
        with self._lock:
            for i in range(0, len(x), step):
                chunk = x[i : i + step]
                k = len(chunk)
                if self._fixed_batch and k < step:  # a fixed-batch model: pad the last chunk
                    chunk = np.concatenate(
                        [chunk, np.zeros((step - k, *chunk.shape[1:]), chunk.dtype)]
                    )
                (y,) = self._session.run([self._output_name], {self._input_name: chunk})
                outs.append(np.asarray(y, np.float32)[:k])
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)
