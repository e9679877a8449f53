"""Prometheus metrics, read from the job store at scrape time (so every process agrees)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fastsvd.endpoints import Registry
from fastsvd.services import Services
from fastsvd.store.jobs import JobState

PRIORITIES = (0, 1)  # normal, low (fal's X-Fal-Queue-Priority)


class StoreCollector(Collector):
    """Queue depth and running jobs per endpoint and priority, finished jobs by outcome, ready
    workers (in all, and per endpoint). Per-stage time is each worker's (``fastsvd.telemetry``)."""

    def __init__(self, services: Services, endpoints: Registry) -> None:
        self.services = services
        self.endpoints = endpoints

    def collect(self) -> Iterator[Metric]:
        counts = self.services.jobs.counts()
        labels = ["endpoint", "priority"]
        depth = GaugeMetricFamily(
            "fastsvd_queue_depth", "Jobs waiting for a worker.", labels=labels
        )
        running = GaugeMetricFamily(
            "fastsvd_jobs_running", "Jobs a worker is running.", labels=labels
        )
        for gauge, state in ((depth, JobState.queued), (running, JobState.running)):
            # every endpoint and priority, zeros included: a queue that empties reads 0
            by_queue = {(e, p): 0 for e in self.endpoints.ids() for p in PRIORITIES}
            for (st, endpoint, priority, _), n in counts.items():
                if st == state:
                    by_queue[(endpoint, priority)] = by_queue.get((endpoint, priority), 0) + n
            for (endpoint, priority), n in sorted(by_queue.items()):
                gauge.add_metric([endpoint, str(priority)], n)
            yield gauge
        finished = CounterMetricFamily(
            "fastsvd_jobs_completed",
            "Finished jobs by endpoint and outcome (ok, or the failure's error_type).",
            labels=["endpoint", "outcome"],
        )
        by_outcome: dict[tuple[str, str], int] = {}
        for (st, endpoint, _, outcome), n in counts.items():
            if st == JobState.completed:
                by_outcome[(endpoint, outcome)] = by_outcome.get((endpoint, outcome), 0) + n
        for (endpoint, outcome), n in sorted(by_outcome.items()):
            finished.add_metric([endpoint, outcome], n)
        yield finished
        ready = GaugeMetricFamily("fastsvd_workers_ready", "Workers with their model loaded.")
        roster, settings = self.services.roster, self.services.settings
        count, serving, serve_all = roster.ready_endpoints(settings.serving_window_s)
        ready.add_metric([], count)
        yield ready
        per_endpoint = GaugeMetricFamily(
            "fastsvd_endpoint_workers_ready",
            "Workers with their models loaded that serve the endpoint.",
            labels=["endpoint"],
        )
        for endpoint in self.endpoints.ids():
            per_endpoint.add_metric([endpoint], serve_all + serving[endpoint])
        yield per_endpoint


def render(services: Services, endpoints: Registry) -> bytes:
    """The Prometheus text exposition of the store's metrics, for ``endpoints``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(services, endpoints))
    return generate_latest(registry)
