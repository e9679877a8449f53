"""A worker's own Prometheus metrics: what only the process that runs the job can see.

The API's ``/metrics`` (``api/metrics.py``) reads the job store, so every API process agrees on
the queue. What happens inside a worker (how long a job waited for it, how long each stage took,
the GPU memory it holds) is kept here, in the worker's process, and served on
``FASTSVD_METRICS_PORT`` (``fastsvd worker``; unset: not served). Prometheus scrapes each worker
(a pod annotation in deploy/k8s) and sums or compares them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

# seconds; from a job claimed at once to one that waited through a few minutes' backlog
WAIT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# seconds; a few-step stage on a fast GPU to a 20-step one on a slow one
STAGE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 240)


def cuda_memory_bytes() -> tuple[float, float]:
    """(in use, peak) bytes the models and tensors of this process hold on its GPU; zeros
    where torch was never loaded (a stand-in runner) or there is no GPU."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0.0, 0.0
    return float(torch.cuda.memory_allocated()), float(torch.cuda.max_memory_allocated())


class WorkerMetrics:
    """The metrics of one worker process."""

    def __init__(self, memory: Callable[[], tuple[float, float]] = cuda_memory_bytes) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.submit_to_start = Histogram(
            "fastsvd_submit_to_start_seconds",
            "From a job's submit to the claim that started it (each attempt).",
            ["endpoint"],
            buckets=WAIT_BUCKETS_S,
            registry=self.registry,
        )
        self.stage = Histogram(
            "fastsvd_worker_stage_seconds",
            "Seconds of each pipeline stage of a finished job.",
            ["endpoint", "stage"],
            buckets=STAGE_BUCKETS_S,
            registry=self.registry,
        )
        self.ready = Gauge(
            "fastsvd_worker_ready",
            "1 for each endpoint this worker serves, once its models are loaded.",
            ["endpoint"],
            registry=self.registry,
        )
        in_use = Gauge(
            "fastsvd_gpu_memory_bytes",
            "GPU memory this worker's tensors hold now.",
            registry=self.registry,
        )
        peak = Gauge(
            "fastsvd_gpu_memory_peak_bytes",
            "The most GPU memory this worker's tensors have held since it started.",
            registry=self.registry,
        )
        in_use.set_function(lambda: memory()[0])
        peak.set_function(lambda: memory()[1])

    def serving(self, endpoints: Iterable[str]) -> None:
        """The worker's models are loaded: it serves these endpoints."""
        for endpoint in endpoints:
            self.ready.labels(endpoint).set(1)

    def started(self, endpoint: str, waited_s: float) -> None:
        self.submit_to_start.labels(endpoint).observe(max(0.0, waited_s))

    def finished(self, endpoint: str, stage_seconds: dict[str, float]) -> None:
        for stage, seconds in stage_seconds.items():
            self.stage.labels(endpoint, stage).observe(seconds)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``port`` from a background thread."""
        start_http_server(port, addr=host, registry=self.registry)
