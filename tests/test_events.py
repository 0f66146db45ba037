"""Unit tests of the v1 event contract: ids, timestamps, encoding, schema validation."""

from __future__ import annotations

import copy
import json
import re
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest

from pipeline.core import events as ev
from pipeline.core.types import EMOTIONS, Emotions, Faces, Frame, FrameResult
from pipeline.runtime.stream import TrackSummary

CTX = ev.EventContext(
    "w-1", "sess", "det_retinaface", "emotion_mini_xception", "onnxruntime", "fp32"
)
RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def make_result(
    stream: str = "cam", frame_num: int = 5, tids: list[int] | None = None, seed: int = 0
) -> FrameResult:
    tids = [1, 2, 3] if tids is None else tids
    n = len(tids)
    rng = np.random.default_rng(seed)
    frame = Frame(
        stream,
        frame_num,
        frame_num / 25,
        1_700_000_000.25 + frame_num / 25,
        np.zeros((120, 160, 3), np.uint8),
        decoded_at=time.time(),
    )
    xy = rng.random((n, 2)) * 80
    faces = Faces.create(
        np.hstack([xy, xy + 30]), rng.random(n) * 0.5 + 0.5, rng.random((n, 5, 2)) * 100, tids
    )
    p = rng.random((n, 7)).astype(np.float32)
    p /= p.sum(1, keepdims=True)
    return FrameResult(frame, faces, Emotions(p), Emotions(p[::-1].copy()))


def test_face_events_one_per_face_and_valid() -> None:
    events = ev.face_events(make_result(), CTX)
    assert [e["track_id"] for e in events] == [1, 2, 3]
    for e in events:
        ev.validate(e)
        assert e["type"] == "face" and e["schema"] == ev.SCHEMA_ID
        assert e["frame"] == {"width": 160, "height": 120}
        assert list(e["emotion"]["probs"]) == list(EMOTIONS)
        assert abs(sum(e["emotion"]["probs"].values()) - 1) < 1e-3
        assert e["emotion"]["label"] == max(e["emotion"]["probs"], key=e["emotion"]["probs"].get)
        assert e["latency_ms"] >= 0


def test_face_events_empty_frame_gives_none() -> None:
    assert ev.face_events(make_result(tids=[]), CTX) == []


def test_event_ids_same_on_replay() -> None:
    a = [e["event_id"] for e in ev.face_events(make_result(seed=1), CTX)]
    b = [e["event_id"] for e in ev.face_events(make_result(seed=2), CTX, now=time.time() + 9)]
    assert a == b


def test_event_ids_distinct_per_stream_frame_track() -> None:
    ids: set[str] = set()
    for stream in ("a", "b"):
        for fn in range(20):
            ids.update(e["event_id"] for e in ev.face_events(make_result(stream, fn), CTX))
    assert len(ids) == 2 * 20 * 3


def test_event_ids_untracked_faces_distinct() -> None:
    ids = [e["event_id"] for e in ev.face_events(make_result(tids=[-1, -1, -1]), CTX)]
    assert len(set(ids)) == 3


def test_event_ids_lifecycle_distinct_from_faces() -> None:
    assert ev.face_event_id("s", 1, 1) != ev.track_end_event_id("s", 1, 1)
    assert ev.track_end_event_id("s", 1, 1) != ev.stream_end_event_id("s", 1)
    assert ev.face_event_id("s", 1, 1) == ev.face_event_id("s", 1, 1)


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1_700_000_000.1234, "2023-11-14T22:13:20.123Z"),
        (1_700_000_000.9996, "2023-11-14T22:13:21.000Z"),
    ],
)
def test_rfc3339_utc_milliseconds(ts: float, text: str) -> None:
    assert ev.rfc3339(ts) == text
    assert RFC3339_MS.match(text)
    assert abs(ev.parse_rfc3339(text) - ts) < 0.001


def test_face_event_timestamp_from_frame_wall_clock() -> None:
    result = make_result(frame_num=50)
    e = ev.face_events(result, CTX)[0]
    assert e["timestamp"] == ev.rfc3339(result.frame.wall_ts)
    assert e["pts"] == pytest.approx(2.0) and e["frame_num"] == 50


def test_encode_compact_and_deterministic() -> None:
    e = ev.face_events(make_result(), CTX)[0]
    data = ev.encode(e)
    assert data == ev.encode(json.loads(data))
    assert b" " not in data and b"\n" not in data
    assert ev.decode(data) == e


def test_encode_rejects_nan() -> None:
    e = ev.face_events(make_result(), CTX)[0]
    e["det_score"] = float("nan")
    with pytest.raises(ValueError):
        ev.encode(e)


def test_track_end_event_dwell_and_dominant() -> None:
    summary = TrackSummary(3, 40, 10.0, 12.5, 0.12, 1.6, faces=30, labels=Counter(sad=20, happy=10))
    e = ev.track_end_event("cam", 7, summary, CTX)
    ev.validate(e)
    assert e["dwell_s"] == 2.5 and e["dominant"] == "sad" and e["faces"] == 30
    assert e["emotions"]["sad"] == 20 and e["emotions"]["angry"] == 0
    assert e["event_id"] == ev.track_end_event("cam", 7, summary, CTX)["event_id"]


def test_stream_end_event_valid_with_error() -> None:
    e = ev.stream_end_event("cam", 120, "error", CTX, "cam: decode failed")
    ev.validate(e)
    assert e["frames"] == 120 and e["error"] == "cam: decode failed"


def _broken(mutate: Any) -> dict[str, Any]:
    e = copy.deepcopy(ev.face_events(make_result(), CTX)[0])
    mutate(e)
    return e


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda e: e.pop("track_id"), "(root)"),
        (lambda e: e.update(extra=1), "(root)"),
        (lambda e: e["emotion"].update(label="bored"), "emotion/label"),
        (lambda e: e["emotion"]["probs"].pop("fear"), "emotion/probs"),
        (lambda e: e["emotion"]["probs"].update(happy=0.99), "emotion/probs"),
        (lambda e: e.update(timestamp="2023-11-14 22:13:20"), "timestamp"),
        (lambda e: e.update(bbox=[1, 2, 3]), "bbox"),
        (lambda e: e["landmarks"].pop(), "landmarks"),
        (lambda e: e.update(schema="other/v2"), "schema"),
        (lambda e: e.update(event_id="not-a-uuid"), "event_id"),
    ],
)
def test_validate_rejects_bad_face_event(mutate: Any, where: str) -> None:
    with pytest.raises(ValueError, match=re.escape(where)):
        ev.validate(_broken(mutate))


def test_validate_rejects_unknown_type() -> None:
    with pytest.raises(ValueError):
        ev.validate({"schema": ev.SCHEMA_ID, "type": "person"})


def test_schema_file_is_valid_2020_12() -> None:
    from jsonschema import Draft202012Validator

    schema = ev.load_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    Draft202012Validator.check_schema(schema)
    assert schema["$defs"]["probs"]["required"] == list(EMOTIONS)


def _schema_objects(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A schema object node with its ``$ref`` resolved."""
    while "$ref" in node:
        node = defs[node["$ref"].removeprefix("#/$defs/")]
    return node


def _assert_record_matches(
    record: type, node: dict[str, Any], defs: dict[str, Any], at: str
) -> None:
    """Field names, required-ness and value types of a TypedDict equal a schema object's;
    nested TypedDicts are compared with their nested objects."""
    import typing

    node = _schema_objects(node, defs)
    props = node["properties"]
    assert node.get("additionalProperties") is False, at
    assert set(record.__annotations__) == set(props), at  # type: ignore[attr-defined]
    assert record.__required_keys__ == set(node["required"]), at  # type: ignore[attr-defined]
    for name, hint in typing.get_type_hints(record).items():
        _assert_value_matches(hint, props[name], defs, f"{at}/{name}")


#: The JSON type each Python type of a record field is written as.
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _schema_types(node: dict[str, Any]) -> set[str]:
    kinds = node.get("type", [])
    return {kinds} if isinstance(kinds, str) else set(kinds)


def _assert_value_matches(hint: Any, node: dict[str, Any], defs: dict[str, Any], at: str) -> None:
    """One field's Python type against its schema node: JSON types (``float`` is ``number``,
    ``int`` is ``integer``, ``X | None`` adds ``null``), ``Literal`` against ``const``, label
    enums against EMOTIONS, list items and dict values element by element."""
    import types
    import typing

    node = _schema_objects(node, defs)
    args = typing.get_args(hint)
    if typing.is_typeddict(hint):
        _assert_record_matches(hint, node, defs, at)
    elif isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        assert type(None) in args and len(args) == 2, f"{at}: only X | None is mapped"
        (inner,) = (a for a in args if a is not type(None))
        if "anyOf" in node:  # dominant: a label or null
            branches = [_schema_objects(b, defs) for b in node["anyOf"]]
            assert [_schema_types(b) for b in branches].count({"null"}) == 1, at
            (rest,) = (b for b in branches if _schema_types(b) != {"null"})
            _assert_value_matches(inner, rest, defs, at)
        else:
            assert "null" in _schema_types(node), f"{at}: {hint} but the schema has no null"
            _assert_value_matches(
                inner, node | {"type": sorted(_schema_types(node) - {"null"})}, defs, at
            )
    elif typing.get_origin(hint) is typing.Literal:
        assert [node.get("const")] == list(args), f"{at}: {hint} vs {node}"
    elif typing.get_origin(hint) is list:
        assert _schema_types(node) == {"array"}, f"{at}: {hint} vs {node}"
        _assert_value_matches(args[0], node["items"], defs, f"{at}[]")
    elif typing.get_origin(hint) is dict:  # probs, emotion counts: one key per emotion
        assert _schema_types(node) == {"object"} and args[0] is str, f"{at}: {hint} vs {node}"
        assert node.get("additionalProperties") is False, at
        assert list(node["required"]) == list(EMOTIONS) == list(node["properties"]), at
        for key, value in node["properties"].items():
            _assert_value_matches(args[1], value, defs, f"{at}/{key}")
    elif "enum" in node:  # an emotion label
        assert hint is str and "type" not in node, f"{at}: {hint} vs {node}"
        assert list(node["enum"]) == list(EMOTIONS), at
    elif "const" in node:  # the schema id
        assert hint is str and node["const"] == ev.SCHEMA_ID, f"{at}: {hint} vs {node}"
    else:
        assert _schema_types(node) == {_JSON_TYPES[hint]}, f"{at}: {hint} vs {node}"


@pytest.mark.parametrize("kind", ev.EVENT_TYPES)
def test_event_records_match_schema(kind: str) -> None:
    defs = ev.load_schema()["$defs"]
    assert set(ev.EVENT_RECORDS) == set(ev.EVENT_TYPES)
    _assert_record_matches(ev.EVENT_RECORDS[kind], defs[kind], defs, kind)


def test_event_records_match_built_events() -> None:
    built = {
        "face": ev.face_events(make_result(), CTX)[0],
        "track_end": ev.track_end_event("cam", 1, TrackSummary(0, 2, 1.0, 2.0, 0.0, 1.0), CTX),
        "stream_end": ev.stream_end_event("cam", 10, "eof", CTX),
    }
    for kind, event in built.items():
        record = ev.EVENT_RECORDS[kind]
        assert record.__required_keys__ <= set(event) <= set(record.__annotations__), kind


def test_face_events_rounded_pixels_and_probabilities() -> None:
    events = ev.face_events(make_result(seed=3), CTX)
    text = ev.encode(events[0]).decode()
    for e in events:
        coords = [*e["bbox"], *(v for p in e["landmarks"] for v in p)]
        assert all(round(v, 1) == v for v in coords)
        assert all(round(p, 4) == p for p in e["emotion"]["probs"].values())
        assert abs(sum(e["emotion"]["probs"].values()) - 1) <= ev.PROBS_SUM_TOLERANCE
        ev.validate(e)
    # No float32 noise in the JSON: every number has at most 4 decimals (pts and latency: more).
    body = text.split('"latency_ms"')[0].split('"frame_num"')[1]
    assert not re.search(r"\d\.\d{5,}", body)
