#!/bin/sh
# One-shot (compose service kafka-init): create the events topic and the compacted control
# topic. Idempotent (--if-not-exists). Names and sizes come from the environment.
set -eu
BOOTSTRAP="${KAFKA_BOOTSTRAP:-kafka:9092}"
KT=/opt/kafka/bin/kafka-topics.sh
"$KT" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
  --topic "${ES_KAFKA_TOPIC:-emotion-events}" \
  --partitions "${EVENTS_PARTITIONS:-12}" --replication-factor "${REPLICATION:-1}"
# Stream specs keyed by stream_id: compaction keeps the latest spec per stream; a tombstone
# (null value) removes it. Partitions bound the number of workers that can share streams.
"$KT" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
  --topic "${ES_KAFKA_CONTROL_TOPIC:-emotion-streams}" \
  --partitions "${CONTROL_PARTITIONS:-12}" --replication-factor "${REPLICATION:-1}" \
  --config cleanup.policy=compact \
  --config min.cleanable.dirty.ratio=0.1 \
  --config delete.retention.ms=86400000 \
  --config segment.ms=3600000
"$KT" --bootstrap-server "$BOOTSTRAP" --describe --topic "${ES_KAFKA_CONTROL_TOPIC:-emotion-streams}"
