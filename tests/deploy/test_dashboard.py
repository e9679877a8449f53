"""The Grafana dashboard (deploy/grafana/fastsvd.json) asks only for metrics, and labels, that
fastsvd really exposes: the API's /metrics and a worker's own, read after a real worker ran a
job that completed and one that failed.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import replace
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastsvd.api.metrics import render
from fastsvd.endpoints import ENDPOINTS
from fastsvd.services import Services
from fastsvd.settings import Settings
from fastsvd.store.jobs import JobState
from fastsvd.telemetry import WorkerMetrics
from fastsvd.worker import Worker

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "fastsvd.json"
SCRAPE_LABELS = {"le", "pod", "instance", "job", "namespace"}  # added by Prometheus, or buckets
PROMQL_WORDS = {"by", "without", "sum", "max", "min", "rate", "histogram_quantile", "avg"}


def exposed(tmp_path: Path) -> dict[str, set[str]]:
    """Every sample name the API and a worker expose, with its label names."""
    settings = Settings(data_dir=tmp_path, lease_s=5.0)
    services = Services.from_settings(settings)
    t2v = "fal-ai/fast-svd/text-to-video"
    metrics = WorkerMetrics(memory=lambda: (2.0e9, 3.0e9))  # no GPU here: a stand-in reading
    # one job done, then one failed, counted in the same metrics
    for runner in ("tests.fakes.runner:Runner", "tests.fakes.runner:Failing"):
        services.jobs.submit(key_id="k", endpoint=t2v, input={"prompt": "a rocket", "steps": 2})
        worker = Worker.build(replace(settings, runner=runner), services=services, metrics=metrics)
        thread = threading.Thread(target=worker.serve, kwargs={"burst": True})
        thread.start()
        thread.join(120)
        assert not thread.is_alive()
    outcomes = {j.error_type for j in services.jobs.recent(None, 10)}
    assert outcomes == {None, "generation_failed"}
    assert all(j.state == JobState.completed for j in services.jobs.recent(None, 10))
    services.roster.register("ready-one", endpoints=ENDPOINTS.ids())
    services.roster.beat("ready-one", ready=True)

    names: dict[str, set[str]] = {}
    for text in (render(services, ENDPOINTS).decode(), generate_latest(metrics.registry).decode()):
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                names.setdefault(sample.name, set()).update(sample.labels)
    services.close()
    return names


def test_every_query_of_the_dashboard_reads_exposed_metrics(tmp_path: Path) -> None:
    names = exposed(tmp_path)
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len(panels) >= 8
    wanted = {
        "fastsvd_queue_depth",
        "fastsvd_jobs_running",
        "fastsvd_submit_to_start_seconds_bucket",
        "fastsvd_worker_stage_seconds_bucket",
        "fastsvd_jobs_completed_total",
        "fastsvd_gpu_memory_bytes",
        "fastsvd_gpu_memory_peak_bytes",
        "fastsvd_endpoint_workers_ready",
    }
    used: set[str] = set()
    for panel in panels:
        for target in panel["targets"]:
            expr = target["expr"]
            metrics = set(re.findall(r"\bfastsvd_[a-z_]+", expr))
            assert metrics, expr
            for metric in metrics:
                assert metric in names, f"{panel['title']}: {metric} is not exposed"
            labels = set(re.findall(r"by \(([^)]*)\)", expr))
            words = {w.strip() for group in labels for w in group.split(",")}
            words |= set(re.findall(r"([a-z_]+)\s*!?=~?\s*\"", expr))
            words |= set(re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]))
            known = set().union(*(names[m] for m in metrics)) | SCRAPE_LABELS
            assert words - PROMQL_WORDS <= known, (panel["title"], words - known)
            used |= metrics
    assert wanted <= used
    # and the expositions carry what the dashboard plots
    assert {"endpoint", "priority"} <= names["fastsvd_queue_depth"]
    assert {"endpoint", "outcome"} <= names["fastsvd_jobs_completed_total"]
