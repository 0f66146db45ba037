"""Event sinks and ``build_sink(spec, kafka, redis)``.

Specs: ``jsonl:PATH`` (JSON lines file, truncated per run), ``stdout``, ``kafka`` (needs
``KafkaSettings.bootstrap``), ``redis`` (needs ``RedisSettings.url``). Network sinks connect
when built, so an unreachable server fails before anything else starts.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.config import KafkaSettings, RedisSettings
from pipeline.core.errors import ConfigError
from pipeline.sinks.base import Sink

SINK_FORMS = ("jsonl:PATH", "stdout", "kafka", "redis")


def sink_name(spec: str) -> str:
    """The name (and event-log cursor) a file sink spec gets, without opening it."""
    kind, sep, arg = spec.partition(":")
    return f"jsonl:{Path(arg)}" if kind == "jsonl" and sep and arg else spec


__all__ = ["SINK_FORMS", "Sink", "build_sink", "sink_name"]


def build_sink(spec: str, kafka: KafkaSettings, redis: RedisSettings, append: bool = False) -> Sink:
    """The sink a ``--sink`` value names (ConfigError listing the valid forms otherwise).
    ``append``: a file sink continues its file instead of truncating it."""
    kind, sep, arg = spec.partition(":")
    if kind == "jsonl" and sep and arg:
        from pipeline.sinks.jsonl import JsonlSink

        return JsonlSink(arg, append=append)
    if spec == "stdout":
        from pipeline.sinks.stdout import StdoutSink

        return StdoutSink()
    if spec == "kafka":
        if not kafka.bootstrap:
            raise ConfigError("--sink kafka needs --kafka HOST:PORT (or ES_KAFKA_BOOTSTRAP)")
        from pipeline.sinks.kafka import KafkaSink

        return KafkaSink(kafka)
    if spec == "redis":
        if not redis.url:
            raise ConfigError("--sink redis needs --redis URL (or ES_REDIS_URL)")
        from pipeline.sinks.redis_agg import RedisAggregateSink

        return RedisAggregateSink(redis)
    raise ConfigError(f"unknown sink {spec!r}: use one of {', '.join(SINK_FORMS)}")
