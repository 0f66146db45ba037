#!/bin/sh
# One-shot (compose service streams-init): register the simulator's cameras on the control
# topic. Re-running it rewrites the same specs (compaction keeps the latest per stream id).
set -eu
KAFKA="${ES_KAFKA_BOOTSTRAP:-kafka:9092}"
RTSP="${RTSP_BASE:-rtsp://rtsp:8554}"
for cam in ${DEMO_CAMERAS:-cam1 cam2}; do
  emotion-stream streams add "$cam" "$RTSP/$cam" --session demo --kafka "$KAFKA"
done
emotion-stream streams add clip1 file:///media/sample.mp4 --loop --realtime --session demo --kafka "$KAFKA"
emotion-stream streams list --kafka "$KAFKA"
