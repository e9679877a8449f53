"""Prometheus metrics, read from the job store at scrape time (so every process agrees)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from fastsvd.services import Services
from fastsvd.store.jobs import JobState


class StoreCollector(Collector):
    """Queue depth, jobs by outcome, per-stage time, ready workers."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        s = self.services
        counts = s.jobs.counts()
        depth = GaugeMetricFamily("fastsvd_queue_depth", "Jobs waiting for a worker.")
        depth.add_metric([], sum(n for (state, _), n in counts.items() if state == JobState.queued))
        yield depth
        running = GaugeMetricFamily("fastsvd_jobs_running", "Jobs a worker is running.")
        running.add_metric(
            [], sum(n for (state, _), n in counts.items() if state == JobState.running)
        )
        yield running
        finished = CounterMetricFamily(
            "fastsvd_jobs_completed",
            "Finished jobs by outcome (ok or error_type).",
            labels=["outcome"],
        )
        for (state, outcome), n in sorted(counts.items()):
            if state == JobState.completed:
                finished.add_metric([outcome], n)
        yield finished
        stages = SummaryMetricFamily(
            "fastsvd_stage_seconds", "Time spent in each pipeline stage.", labels=["stage"]
        )
        for stage, (count, total) in sorted(s.jobs.stage_totals().items()):
            stages.add_metric([stage], count_value=count, sum_value=total)
        yield stages
        ready = GaugeMetricFamily("fastsvd_workers_ready", "Workers with their model loaded.")
        count, _serving, _serve_all = s.registry.ready_endpoints(3 * s.settings.lease_s)
        ready.add_metric([], count)
        yield ready


def render(services: Services) -> bytes:
    """The Prometheus text exposition of the store's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(services))
    return generate_latest(registry)
