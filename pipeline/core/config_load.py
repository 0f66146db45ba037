"""Building ``WorkerSettings`` from its four layers, with one precedence:

    flags given on the command line  >  --config FILE  >  ES_* environment  >  defaults

Each layer is a nested dict shaped like ``WorkerSettings`` (``{"batch": {"max_batch": 8}}``);
the layers are merged key by key and validated once. The environment names every field as
``ES_<SECTION>_<FIELD>`` (``ES_BATCH_MAX_BATCH``, ``ES_KAFKA_BOOTSTRAP``, ``ES_METRICS_PORT``)
and top-level fields as ``ES_<FIELD>`` (``ES_WORKER_ID``). ``--config`` takes YAML, TOML or
JSON by its suffix. ``dump_settings`` writes the effective settings back in a form the loader
accepts, with secrets masked (a masked value read back counts as "not given").
"""

from __future__ import annotations

import io
import json
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline.core.config import EmotionSettings, WorkerSettings
from pipeline.core.errors import ConfigError
from pipeline.core.redact import REDACTED, cut, redact_text, redact_url

logger = logging.getLogger(__name__)

#: How a secret is shown by ``config show``; read back from a file it means "not given".
MASK = "**********"
ENV_PREFIX = "ES_"
CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")
DEFAULT_EMOTION_MODEL = EmotionSettings.model_fields["model"].default

Layer = dict[str, Any]


def read_config_file(path: Path) -> Layer:
    """The settings document in ``path`` (YAML, TOML or JSON by suffix), masked values dropped."""
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise ConfigError(
            f"--config {path}: unknown format {suffix or '(no suffix)'!r}: "
            f"name it *.yaml, *.toml or *.json"
        )
    try:
        text = path.read_text(encoding="utf-8")
        data = _parse(text, suffix)
    except OSError as exc:
        raise ConfigError(
            f"--config {path}: cannot read it ({exc.strerror}): fix the path"
        ) from exc
    except Exception as exc:  # each parser has its own error type
        detail = str(exc).replace("\n", " ")
        raise ConfigError(f"--config {path}: not valid {suffix[1:]} ({detail}): fix it") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the document must be a mapping of sections")
    return _drop_masked(data)


def _parse(text: str, suffix: str) -> Any:
    if suffix == ".json":
        return json.loads(text)
    if suffix == ".toml":
        return tomllib.loads(text)
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


def _drop_masked(data: dict[str, Any]) -> Layer:
    out: Layer = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out[key] = _drop_masked(value)
        elif value != MASK and not _masked_url(value):
            out[key] = value
    return out


def _masked_url(value: Any) -> bool:
    """A URL as ``config show`` prints it, user-info or secret query values masked."""
    return isinstance(value, str) and (
        f"://{REDACTED}:{REDACTED}@" in value or f"={REDACTED}" in value
    )


def _mask_urls(node: Any) -> Any:
    """Every string of a settings document with URL user-info and secret query values masked
    (``redis://:PASSWORD@host`` shows as ``redis://***:***@host``)."""
    if isinstance(node, dict):
        return {k: _mask_urls(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask_urls(v) for v in node]
    if isinstance(node, str) and "://" in node:
        return redact_url(node)
    return node


#: Parts of a settings key whose value is a secret: never echoed in an error.
_SECRET_PARTS = ("password", "secret", "token", "credentials")


def env_var(*path: str) -> str:
    """The variable of a settings path: ``("batch", "max_batch")`` is ``ES_BATCH_MAX_BATCH``."""
    return (ENV_PREFIX + "_".join(path)).upper()


def env_names() -> dict[str, tuple[str, ...]]:
    """Every ``ES_*`` variable the settings read, with the settings path it sets."""
    names: dict[str, tuple[str, ...]] = {}
    for name, field in WorkerSettings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            for key in section.model_fields:
                names[env_var(name, key)] = (name, key)
        else:
            names[env_var(name)] = (name,)
    return names


def env_layer(environ: Mapping[str, str] | None = None) -> Layer:
    """``ES_<SECTION>_<FIELD>`` (and ``ES_<FIELD>`` for top-level fields) that are set."""
    environ = os.environ if environ is None else environ
    layer: Layer = {}
    for var, path in env_names().items():
        if (raw := environ.get(var)) is not None:
            *sections, key = path
            node = layer
            for s in sections:
                node = node.setdefault(s, {})
            node[key] = _env_value(raw)
    return layer


def _env_value(raw: str) -> Any:
    """JSON lists and objects (``[640, 640]``) are parsed; anything else stays a string that
    pydantic converts (``"8"`` to 8, ``"true"`` to True)."""
    if raw.strip().startswith(("[", "{")):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def merge(*layers: Mapping[str, Any]) -> Layer:
    """Later layers win, key by key inside sections."""
    out: Layer = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            elif isinstance(value, Mapping):
                out[key] = merge(value)
            else:
                out[key] = value
    return out


def load_settings(
    config: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> WorkerSettings:
    """Flags > ``config`` file > ``ES_*`` environment > ``base`` > defaults, validated once."""
    file_layer = read_config_file(config) if config is not None else {}
    layers = {
        "defaults": dict(base or {}),
        "environment": env_layer(environ),
        f"--config {config}": file_layer,
        "command line": dict(flags or {}),
    }
    merged = _with_default_emotion_model(merge(*layers.values()))
    try:
        return WorkerSettings.model_validate(merged)
    except ValidationError as exc:
        raise _config_error(exc, layers) from exc


def _with_default_emotion_model(merged: Layer) -> Layer:
    """The default emotion model lives in the detector's model folder unless named."""
    detector, emotion = merged.get("detector"), merged.get("emotion", {})
    if not isinstance(detector, dict) or not isinstance(emotion, dict):
        return merged  # validation names the section that is not a mapping
    model_dir = detector.get("model_dir")
    if model_dir is not None and "model" not in emotion:
        model = Path(model_dir) / DEFAULT_EMOTION_MODEL.name
        return merge(merged, {"emotion": {"model": model}})
    return merged


def _config_error(exc: ValidationError, layers: Mapping[str, Layer]) -> ConfigError:
    """One line naming the first bad key, where it came from, and the fix."""
    err = exc.errors()[0]
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc)
    origin = next(
        (name for name, layer in reversed(list(layers.items())) if _has(layer, loc)), None
    )
    where = f"{origin}: " if origin else ""
    if err["type"] == "extra_forbidden":
        return ConfigError(
            f"{where}unknown key {key!r}: remove it or fix its name "
            "(`emotion-stream config show` lists every key)"
        )
    secret = any(part in key.lower() for part in _SECRET_PARTS)
    shown = cut(redact_text(repr(err.get("input"))), 120)
    value = f" = {shown}" if origin and "input" in err and not secret else ""
    return ConfigError(f"{where}invalid setting {key}{value}: {err['msg']}")


def _has(layer: Mapping[str, Any], loc: tuple[str, ...]) -> bool:
    node: Any = layer
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def settings_document(settings: WorkerSettings) -> Layer:
    """The settings as plain JSON types in field order. A secret that is set shows as the
    mask; one that is not set is left out, so that the document read back as ``--config``
    never hides a secret given later by the environment."""
    doc: Layer = _mask_urls(settings.model_dump(mode="json"))
    for name, field in WorkerSettings.model_fields.items():
        section = field.annotation
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            continue
        for key, sub in section.model_fields.items():
            if "SecretStr" in str(sub.annotation) and doc[name].get(key) is None:
                del doc[name][key]
    return doc


def dump_settings(settings: WorkerSettings, fmt: str = "yaml") -> str:
    """YAML (default) or JSON text that ``--config`` accepts back."""
    doc = settings_document(settings)
    if fmt == "json":
        return json.dumps(doc, indent=2)
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
    buf = io.StringIO()
    yaml.dump(doc, buf)
    return buf.getvalue()
