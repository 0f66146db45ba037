"""One settings tree, one precedence: flags given > --config file > ES_* environment > defaults.

Unit tests, no servers: settings are built the way the CLI builds them (``build_parser`` and
``settings_from_args``) and shown with ``emotion-stream config show``.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import options as opts
from pipeline.cli.main import build_parser, main
from pipeline.cli.options import flag_layer, settings_from_args
from pipeline.cli.run import sink_specs
from pipeline.core.config import WorkerSettings
from pipeline.core.config_load import MASK, load_settings
from pipeline.core.errors import ConfigError
from pipeline.runtime.worker import with_models_dir


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ES_* variable of the machine running the tests leaks into these."""
    for name in list(os.environ):
        if name.startswith("ES_"):
            monkeypatch.delenv(name)


def _args(*argv: str) -> Any:
    return build_parser().parse_args(list(argv))


def _get(settings: WorkerSettings, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _nested(path: str, value: Any) -> dict[str, Any]:
    *sections, key = path.split(".")
    out: dict[str, Any] = {key: value}
    for s in reversed(sections):
        out = {s: out}
    return out


# (settings path, ES_* variable, flag, env value, file value, flag value) per section.
MATRIX = [
    ("batch.max_batch", "ES_BATCH_MAX_BATCH", "--max-batch", "4", 8, "16"),
    ("source.every", "ES_SOURCE_EVERY", "--every", "2", 5, "7"),
    ("emotion.backend", "ES_EMOTION_BACKEND", "--backend", "torch", "onnxruntime", "tensorrt"),
    ("kafka.topic", "ES_KAFKA_TOPIC", "--topic", "env-topic", "file-topic", "flag-topic"),
    ("redis.url", "ES_REDIS_URL", "--redis", "redis://e:1/0", "redis://f:1/0", "redis://g:1/0"),
    ("metrics.port", "ES_METRICS_PORT", "--metrics-port", "9200", 9300, "9400"),
    # two values only: env and flag share one, so the flag-over-env step below sets the env
    # to the file's value (default cooperative -> env eager -> file cooperative -> flag eager)
    ("group.assignor", "ES_GROUP_ASSIGNOR", "--assignor", "eager", "cooperative", "eager"),
    ("session_id", "ES_SESSION_ID", "--session", "env-s", "file-s", "flag-s"),
]


@pytest.mark.parametrize(("path", "env", "flag", "env_v", "file_v", "flag_v"), MATRIX)
def test_settings_precedence_flag_over_file_over_env_over_default(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    env: str,
    flag: str,
    env_v: str,
    file_v: Any,
    flag_v: str,
) -> None:
    cfg = tmp_path / "w.json"
    cfg.write_text(json.dumps(_nested(path, file_v)))
    field_type = type(_get(WorkerSettings(), path)) if path != "redis.url" else str
    default = _get(WorkerSettings(), path)

    def effective(*argv: str) -> str:
        return str(_get(settings_from_args(_args("config", "show", *argv)), path))

    steps = [str(default), *(str(field_type(v)) for v in (env_v, file_v, flag_v))]
    assert all(a != b for a, b in itertools.pairwise(steps)), f"{path}: a step cannot fail"

    assert effective() == str(default)
    monkeypatch.setenv(env, env_v)
    assert effective() == str(field_type(env_v))
    assert effective("--config", str(cfg)) == str(field_type(file_v))
    assert effective("--config", str(cfg), flag, flag_v) == str(field_type(flag_v))
    # flag over env alone: the env holds the file's value, which every row sets unlike the
    # flag's, so this step fails if the flag is ignored (env_v may equal flag_v: assignor)
    monkeypatch.setenv(env, str(file_v))
    assert str(field_type(file_v)) != str(field_type(flag_v))
    assert effective(flag, flag_v) == str(field_type(flag_v))


def test_run_config_file_not_overridden_by_flag_defaults(tmp_path: Path) -> None:
    """The reported defect: every: 5, max_batch: 8, backend, model_file came back as defaults."""
    cfg = tmp_path / "w.json"
    det = tmp_path / "det_mine.onnx"
    doc = {
        "source": {"every": 5},
        "batch": {"max_batch": 8},
        "emotion": {"backend": "onnxruntime"},
        "detector": {"model_file": str(det), "model_dir": str(tmp_path / "m")},
    }
    cfg.write_text(json.dumps(doc))
    for argv in (["run", "clip.mp4"], ["bench", "clip.mp4"], ["worker"]):
        s = settings_from_args(_args(*argv, "--config", str(cfg)))
        assert (s.source.every, s.batch.max_batch, s.emotion.backend) == (5, 8, "onnxruntime")
        assert s.detector.model_file == det and s.detector.model_dir == tmp_path / "m"
        assert s.emotion.model == tmp_path / "m" / "emotion_mini_xception.onnx"
        assert with_models_dir(s, s.detector.model_dir) == s


def test_with_models_dir_keeps_named_emotion_model(tmp_path: Path) -> None:
    s = load_settings(flags={"emotion": {"model": "models/mine.onnx"}})
    moved = with_models_dir(s, tmp_path)
    assert moved.detector.model_dir == tmp_path
    assert moved.emotion.model == Path("models/mine.onnx")
    assert with_models_dir(WorkerSettings(), tmp_path).emotion.model == (
        tmp_path / "emotion_mini_xception.onnx"
    )


def test_options_absent_flags_are_not_given() -> None:
    assert flag_layer(_args("run", "clip.mp4")) == {}
    assert flag_layer(_args("run", "a.mp4", "--no-batching", "--sink", "stdout", "--loop")) == {
        "batch": {"enabled": False},
        "sinks": {"specs": ("stdout",)},
        "source": {"loop": True},
    }


def test_options_every_flag_names_a_settings_field() -> None:
    fields = WorkerSettings.model_fields
    for opt in opts.ALL:
        assert opt.field is not None
        section, _, key = opt.field.partition(".")
        assert section in fields, opt.flag
        if key:
            sub = fields[section].annotation
            assert sub is not None and key in sub.model_fields, opt.flag  # type: ignore[union-attr]


DOC_YAML = "batch:\n  max_batch: 8\nkafka:\n  topic: t1\ndetector:\n  input_size: [320, 256]\n"
DOC_TOML = '[batch]\nmax_batch = 8\n[kafka]\ntopic = "t1"\n[detector]\ninput_size = [320, 256]\n'
DOC_JSON = (
    '{"batch": {"max_batch": 8}, "kafka": {"topic": "t1"}, "detector": {"input_size": [320, 256]}}'
)


@pytest.mark.parametrize(
    ("name", "text"),
    [("w.yaml", DOC_YAML), ("w.yml", DOC_YAML), ("w.toml", DOC_TOML), ("w.json", DOC_JSON)],
)
def test_read_config_file_yaml_toml_json_agree(tmp_path: Path, name: str, text: str) -> None:
    cfg = tmp_path / name
    cfg.write_text(text)
    s = load_settings(cfg)
    assert (s.batch.max_batch, s.kafka.topic, s.detector.input_size) == (8, "t1", (320, 256))


@pytest.mark.parametrize(
    ("name", "text"),
    [("w.yaml", "batch:\n  max_bach: 8\n"), ("w.toml", "[batch]\nmax_bach = 8\n")],
)
def test_config_unknown_key_is_one_error_line_naming_key_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str
) -> None:
    cfg = tmp_path / name
    cfg.write_text(text)
    assert main(["config", "show", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ")
    assert "batch.max_bach" in err and str(cfg) in err


def test_config_bad_value_names_where_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ES_BATCH_MAX_BATCH", "0")
    with pytest.raises(ConfigError, match=r"environment: invalid setting batch\.max_batch = '0'"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("w.ini", "x=1", "name it"),
        ("w.yaml", "batch: [1, 2\n", "not valid yaml"),
        ("w.json", "[1, 2]", "mapping"),
        ("w.toml", 'detector = "x"', "invalid setting detector"),
        ("missing.json", None, "cannot read"),
    ],
)
def test_load_settings_bad_file_is_config_error(
    tmp_path: Path, name: str, text: str | None, match: str
) -> None:
    cfg = tmp_path / name
    if text is not None:
        cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_settings(cfg)


def test_env_layer_parses_json_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ES_DETECTOR_INPUT_SIZE", "[320, 320]")
    monkeypatch.setenv("ES_WORKER_ID", "w-env")
    s = load_settings()
    assert s.detector.input_size == (320, 320) and s.worker_id == "w-env"


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_config_show_round_trip_masks_secrets(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
) -> None:
    monkeypatch.setenv("ES_KAFKA_SASL_PASSWORD", "s3cret-kafka")
    monkeypatch.setenv("ES_KAFKA_BOOTSTRAP", "k:9092")
    flags = ["--max-batch", "8", "--every", "3", "--redis", "redis://r:6379/0", "--loop"]
    json_flag = ["--json"] if fmt == "json" else []
    assert main(["config", "show", *json_flag, *flags]) == 0
    shown = capsys.readouterr().out
    assert "s3cret-kafka" not in shown and MASK in shown
    cfg = tmp_path / f"shown.{fmt}"
    cfg.write_text(shown)
    assert main(["config", "show", *json_flag, "--config", str(cfg)]) == 0
    assert capsys.readouterr().out == shown
    back = load_settings(cfg)  # the mask reads back as "not given": the env secret stays
    assert back.kafka.password() == "s3cret-kafka"
    assert (back.batch.max_batch, back.source.every, back.source.loop) == (8, 3, True)
    assert back == settings_from_args(_args("config", "show", *flags))


def test_config_show_leaves_unset_secrets_out(capsys: pytest.CaptureFixture[str]) -> None:
    """A shown file must not pin a secret to null over an ES_* secret given later."""
    assert main(["config", "show", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "password" not in doc["redis"] and "sasl_password" not in doc["kafka"]


def test_sink_specs_from_settings() -> None:
    assert sink_specs(load_settings()) == ["jsonl:out/events.jsonl"]
    s = load_settings(flags={"kafka": {"bootstrap": "k:1"}, "sinks": {"specs": ("stdout",)}})
    assert sink_specs(s) == ["stdout", "kafka"]
    with pytest.raises(ConfigError, match="no Redis"):
        sink_specs(load_settings(flags={"sinks": {"specs": ("redis",)}}))


def test_models_list_json_paths_open_from_cwd(
    models_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "mods").symlink_to(models_dir.resolve(), target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert main(["models", "list", "--dir", "mods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(Path(r["path"]).is_file() for r in rows)
    assert {Path(r["path"]).parent for r in rows} == {Path("mods")}
