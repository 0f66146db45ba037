"""Prometheus metrics of a worker.

Per-stream counters are read from ``Worker.stats()`` at scrape time (one collector, no
double bookkeeping in the hot path); group events (rebalances, rejected records, hand-over
durations) are recorded here by ``pipeline.control.group``. Stream URLs never appear in labels;
only stream ids do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.runtime.stats import StreamStats, WorkerStats

logger = logging.getLogger(__name__)

PREFIX = "emotion_stream"

#: ``StreamStats`` field (``Worker.stats().streams[id]``) -> (metric suffix, help, is_counter)
_STREAM_FIELDS: dict[str, tuple[str, str, bool]] = {
    "decoded": ("frames_decoded", "Frames decoded per stream.", True),
    "processed": ("frames_processed", "Frames run through detection and classification.", True),
    "dropped": ("frames_dropped", "Frames dropped by the source queue's drop policy.", True),
    "reconnects": ("reconnects", "Reconnects of a live source.", True),
    "decode_errors": (
        "decode_errors",
        "Undecodable packets and corrupt frames skipped per stream.",
        True,
    ),
    "faces": ("faces", "Faces classified per stream.", True),
    "tracks": ("tracks", "Tracks started per stream.", True),
    "fps": ("frames_per_second", "Processed frames per second since the stream started.", False),
    "faces_per_s": ("faces_per_second", "Faces per second since the stream started.", False),
    "detect_ms_mean": ("detect_ms_mean", "Mean detection time per processed frame (ms).", False),
    "infer_ms_mean": (
        "infer_ms_mean",
        "Mean emotion inference time per processed frame (ms).",
        False,
    ),
}


#: Stream states (``StreamRunner.state``), exported enum-style: 1 for the current one.
STREAM_STATES = ("connecting", "running", "reconnecting", "failed", "ended")


def _state_family(streams: dict[str, StreamStats]) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(
        f"{PREFIX}_stream_state",
        "Stream state: 1 for the state the stream is in (connecting, running, reconnecting,"
        " failed, ended), 0 for the others.",
        labels=["stream", "state"],
    )
    for sid, s in streams.items():
        current = s.state
        for state in STREAM_STATES:
            fam.add_metric([sid, state], 1.0 if state == current else 0.0)
    return fam


#: Worker.stats()['sinks'][name] key -> (metric suffix, help, is_counter)
_SINK_FIELDS: dict[str, tuple[str, str, bool]] = {
    "pending": (
        "pending_events",
        "Events in the event log not yet acknowledged by the sink.",
        False,
    ),
    "oldest_pending_age_s": (
        "oldest_pending_age_seconds",
        "Age of the oldest event the sink has not acknowledged.",
        False,
    ),
    "delivered": ("delivered_events", "Events the sink acknowledged.", True),
    "retried": ("retried_events", "Events whose delivery failed and was retried.", True),
    "dropped": ("dropped_events", "Undelivered events dropped by the log's full policy.", True),
    "rejected": (
        "rejected_events",
        "Events set aside for good: log rows that do not decode, frames Redis cannot apply.",
        True,
    ),
    "restarts": ("delivery_restarts", "Delivery threads restarted after a failure.", True),
}


def _sink_families(sinks: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    for key, (name, doc, is_counter) in _SINK_FIELDS.items():
        fam: CounterMetricFamily | GaugeMetricFamily
        if is_counter:
            fam = CounterMetricFamily(f"{PREFIX}_sink_{name}", doc, labels=["sink"])
        else:
            fam = GaugeMetricFamily(f"{PREFIX}_sink_{name}", doc, labels=["sink"])
        for sink, d in sinks.items():
            fam.add_metric([sink], float(d.get(key, 0)))
        yield fam


class WorkerCollector(Collector):
    """Turns a ``stats()`` snapshot into metric families at each scrape."""

    def __init__(self, stats: Callable[[], WorkerStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        try:
            st = self._stats()
        except Exception:
            logger.exception("metrics: worker stats failed")
            return
        for key, (name, doc, is_counter) in _STREAM_FIELDS.items():
            fam: CounterMetricFamily | GaugeMetricFamily
            if is_counter:
                fam = CounterMetricFamily(f"{PREFIX}_stream_{name}", doc, labels=["stream"])
            else:
                fam = GaugeMetricFamily(f"{PREFIX}_stream_{name}", doc, labels=["stream"])
            for sid, s in st.streams.items():
                fam.add_metric([sid], float(getattr(s, key)))
            yield fam
        yield _state_family(st.streams)
        g = GaugeMetricFamily(f"{PREFIX}_assigned_streams", "Streams this worker runs now.")
        g.add_metric([], float(len(st.streams)))
        yield g
        ev = CounterMetricFamily(f"{PREFIX}_events", "Events handed to the sinks.")
        ev.add_metric([], float(st.events))
        yield ev
        errs = CounterMetricFamily(
            f"{PREFIX}_sink_errors", "Sink errors (Kafka sends, Redis writes).", labels=["sink"]
        )
        for sink, n in st.sink_errors.items():
            errs.add_metric([str(sink)], float(n))
        yield errs
        lat = GaugeMetricFamily(
            f"{PREFIX}_publish_latency_ms",
            "Decode (capture) -> publish latency of recent events, by quantile (ms).",
            labels=["quantile"],
        )
        for q, v in st.latency_ms.items():
            lat.add_metric([str(q)], float(v))
        yield lat
        yield from _sink_families(st.sinks)
        batcher = {} if st.batcher is None else st.batcher.as_dict()
        for k, v in batcher.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                fam2 = GaugeMetricFamily(
                    f"{PREFIX}_batcher_{k}", f"Micro-batcher {k} (see pipeline.runtime.batcher)."
                )
                fam2.add_metric([], float(v))
                yield fam2


class Metrics:
    """The registry a worker serves on /metrics, plus the group-level instruments."""

    def __init__(self, stats: Callable[[], WorkerStats] | None = None) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        if stats is not None:
            self.registry.register(WorkerCollector(stats))
        # process_cpu_seconds_total, process_resident_memory_bytes, ... (worker CPU and RSS)
        ProcessCollector(registry=self.registry)
        self.rebalances = Counter(
            f"{PREFIX}_rebalances",
            "Partition assignments and revocations.",
            ["kind"],
            registry=self.registry,
        )
        self.rejected = Counter(
            f"{PREFIX}_control_rejected",
            "Control records refused, by reason (pipeline.control.streams.RejectReason).",
            ["reason"],
            registry=self.registry,
        )
        self.waiting = Gauge(
            f"{PREFIX}_waiting_streams",
            "Valid control records waiting for a slot (group.max_streams).",
            registry=self.registry,
        )
        self.stream_starts = Counter(
            f"{PREFIX}_stream_starts", "Streams started on this worker.", registry=self.registry
        )
        self.stream_stops = Counter(
            f"{PREFIX}_stream_stops",
            "Streams stopped on this worker.",
            ["reason"],
            registry=self.registry,
        )
        self.stop_seconds = Histogram(
            f"{PREFIX}_stream_stop_seconds",
            "Time to stop and flush a stream (hand-over share).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.partitions = Gauge(
            f"{PREFIX}_assigned_partitions",
            "Control-topic partitions this worker owns.",
            registry=self.registry,
        )
        self.stream_errors = Counter(
            f"{PREFIX}_stream_errors", "Streams that failed to start.", registry=self.registry
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
