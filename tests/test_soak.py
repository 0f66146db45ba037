"""``emotion-stream soak`` end to end, short: a real tansu broker (memory storage; its restart
with S3 storage is covered by tests/test_faults_delivery.py) and redis-server on loopback,
each fault injected once; nothing accepted may be lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_soak_short_run_loses_nothing_and_recovers(models_dir: Path, sample_clip: Path) -> None:
    cmd = [sys.executable, "-m", "pipeline", "-q", "soak", str(sample_clip)]
    cmd += ["--streams", "1", "--seconds", "30", "--outage-s", "3", "--memory-broker"]
    cmd += ["--models", str(models_dir)]
    out = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=400, env=dict(os.environ)
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["events_accepted"] > 0
    assert all(n == 0 for n in report["lost"].values()), report["lost"]
    faults = {o["fault"] for o in report["outages"]}
    assert faults == {"kafka_pause", "redis_pause", "redis_restart"}, report["outages"]
    assert report["broker_storage"] == "memory"
    assert all(o["recovery_s"] is not None for o in report["outages"]), report["outages"]
    assert len(report["rss_mb_start_end"]) == 2
