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

#: Longer than the clients' timeouts in ``soak`` (Kafka request/max-block 3 s: a batch fails
#: about 6 s into a broker pause; Redis socket 1 s), so each fault makes its sink fail rather
#: than merely slowing it down.
OUTAGE_S = 8.0
#: How long each sink is down at least, as the worker measures it (from its first failure
#: until it delivers again): the outage less the time its client takes to notice it.
DOWN_AT_LEAST_S = {"kafka_pause": OUTAGE_S - 7.0, "redis_pause": OUTAGE_S - 2.0}


def test_soak_short_run_loses_nothing_and_recovers(models_dir: Path, sample_clip: Path) -> None:
    cmd = [sys.executable, "-m", "pipeline", "-q", "soak", str(sample_clip)]
    cmd += ["--streams", "1", "--seconds", str(6 * OUTAGE_S), "--outage-s", str(OUTAGE_S)]
    cmd += ["--memory-broker", "--models", str(models_dir)]
    out = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=400, env=dict(os.environ)
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    print(report)
    assert report["broker_storage"] == "memory"
    assert report["events_accepted"] > 0
    assert all(n == 0 for n in report["lost"].values()), report["lost"]
    assert all(n == 0 for n in report["pending_at_end"].values()), report["pending_at_end"]
    assert all(n == 0 for n in report["dropped"].values()), report["dropped"]
    outages = {o["fault"]: o for o in report["outages"]}
    assert set(outages) == {"kafka_pause", "redis_pause", "redis_restart"}, report["outages"]
    # each fault took effect: its sink failed, retried, and was down for most of the outage
    kafka, redis = "kafka:soak-events", next(n for n in report["retried"] if n.startswith("redis"))
    assert report["retried"][kafka] > 0 and report["retried"][redis] > 0, report["retried"]
    assert len(report["sink_outages_s"][kafka]) >= 1, report["sink_outages_s"]
    assert len(report["sink_outages_s"][redis]) >= 2, report["sink_outages_s"]
    for o in report["outages"]:
        least = DOWN_AT_LEAST_S.get(o["fault"], OUTAGE_S - 2.0)
        assert o["sink_down_s"] is not None and o["sink_down_s"] >= least, o
        # ... and it recovered: no event older than 2 s pending, soon after the fault ended
        assert o["recovery_s"] is not None and o["recovery_s"] <= 15.0, o
    # the JSONL sink, never faulted, never went down
    jsonl = next(n for n in report["retried"] if n.startswith("jsonl"))
    assert report["retried"][jsonl] == 0 and report["sink_outages_s"][jsonl] == []
    # memory (sampled every 5 s): once the stream runs (the first 5 s load the models' arenas),
    # outages and their backlogs do not grow the worker's RSS by more than 40 MB
    rss = [mb for _, mb in report["rss_mb"]]
    assert len(rss) >= 9 and max(rss[1:]) - rss[1] <= 40.0, report["rss_mb"]
