"""The service on this machine: status polling against a bare uvicorn endpoint, and how long an
answered submit waits before a worker starts it. One run measures both sides.

    .venv/bin/python bench/service.py [--pollers 100] [--seconds 10] [--jobs 50]

Polling: ``--pollers`` clients each ask for a queued request's status, wait 0.1 s after each
answer, and ask again (fal-client's pace), for ``--seconds``; then the same load against a bare
uvicorn app answering a constant JSON body. Reported: requests per second, p50/p99 latency, and
fastsvd's throughput as a ratio of the bare endpoint's (target >= 0.5).

Submit-to-start: with one idle worker, ``--jobs`` requests one after another; the delay is the
job's ``started_at`` (written by the worker when it claims the job) minus the moment the client
had the submit answer (target p50 <= 20 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.servers import start_server, stop_server  # noqa: E402

BARE_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def status(request):
    return JSONResponse({"status": "IN_QUEUE", "queue_position": 0, "request_id": "x"})

app = Starlette(routes=[Route("/status", status)])
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def answer(reader: asyncio.StreamReader, url: str) -> bytes:
    """One HTTP/1.1 answer's body (sized by its content-length); raises on a status >= 300."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    if status >= 300:
        raise RuntimeError(f"HTTP {status} from {url}: {body[:200]!r}")
    return body


async def poll(url: str, headers: dict[str, str], pollers: int, seconds: float) -> list[float]:
    """``pollers`` keep-alive connections, each: GET, wait for the answer, sleep 0.1 s, again.

    A minimal HTTP/1.1 client on asyncio streams: httpx's async pool, not the servers, becomes
    the bottleneck at this concurrency, which would measure the load generator instead.
    """
    parts = urllib.parse.urlsplit(url)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n{extra}\r\n"
    ).encode()
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def one() -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                writer.write(request)
                await answer(reader, url)
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.1)
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(pollers)))
    return latencies


async def submit_at(
    urls: list[str], headers: dict[str, str], body: bytes, rate: float, seconds: float
) -> int:
    """POST ``body`` at ``rate`` per second for ``seconds``, taking the ``urls`` in turn, over
    keep-alive connections (the minimal client of ``poll``, as many connections as a second's
    requests, at most 64). Returns how many were answered; raises on any answer >= 300."""
    total = int(rate * seconds)
    connections = max(1, min(64, int(rate)))
    started = time.monotonic()
    next_index = 0
    answered = 0

    async def one(lane: int) -> None:
        nonlocal next_index, answered
        url = urllib.parse.urlsplit(urls[lane % len(urls)])
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (
            f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n{extra}"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode() + body
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        try:
            while next_index < total:
                index, next_index = next_index, next_index + 1
                await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
                writer.write(request)
                await answer(reader, url.geturl())
                answered += 1
        finally:
            writer.close()

    await asyncio.gather(*(one(lane) for lane in range(connections)))
    return answered


def report(name: str, latencies: list[float], seconds: float) -> float:
    rate = len(latencies) / seconds
    print(
        f"  {name:8s} {rate:7.0f} req/s  p50 {percentile(latencies, 50) * 1000:6.1f} ms  "
        f"p99 {percentile(latencies, 99) * 1000:6.1f} ms  ({len(latencies)} requests)"
    )
    return rate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bare_server(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    (folder / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=folder,
    )
    url = f"http://127.0.0.1:{port}/status"
    for _ in range(100):
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    return process, url


def submit_to_start(
    server_url: str, key: str, data_dir: Path, jobs: int
) -> tuple[list[float], list[float]]:
    from fastsvd.settings import Settings
    from fastsvd.store.db import Database
    from fastsvd.store.jobs import JobStore

    store = JobStore(Database(Settings(data_dir=data_dir).db_url))
    delays, from_sent = [], []
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Key {key}"}) as client:
        for _ in range(jobs):
            body = {"prompt": "bench", "steps": 1, "video_size": {"width": 64, "height": 64}}
            sent = time.time()
            sub = client.post("/fal-ai/fast-svd/text-to-video", json=body)
            answered = time.time()
            rid = sub.json()["request_id"]
            while (job := store.get(rid)) is None or job.started_at is None:
                time.sleep(0.002)
            delays.append(job.started_at - answered)
            from_sent.append(job.started_at - sent)
            while store.get(rid).state != "completed":  # type: ignore[union-attr]
                time.sleep(0.005)
            time.sleep(0.05)  # the worker is idle again, waiting on its socket
    return delays, from_sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--jobs", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("FAKE_STEP_S", "0.01")

    with tempfile.TemporaryDirectory(prefix="fastsvd-bench-") as tmp:
        folder = Path(tmp)
        server = start_server(folder / "fastsvd", FASTSVD_IDLE_POLL_S="60")
        bare, bare_url = bare_server(folder)
        try:
            headers = {"Authorization": f"Key {server.key}"}
            with httpx.Client(base_url=server.url, headers=headers) as client:
                # a request that stays queued: one slow job holds the only worker
                client.post("/fal-ai/fast-svd/text-to-video", json={"prompt": "slow", "steps": 50})
                time.sleep(0.5)
                queued = client.post("/fal-ai/fast-svd/text-to-video", json={"prompt": "x"}).json()
            status_url = queued["status_url"]
            print(f"status polling: {args.pollers} pollers, 0.1 s apart, {args.seconds:.0f} s each")
            ours = asyncio.run(poll(status_url, headers, args.pollers, args.seconds))
            base = asyncio.run(poll(bare_url, {}, args.pollers, args.seconds))
            rate = report("fastsvd", ours, args.seconds)
            bare_rate = report("bare", base, args.seconds)
            print(f"  fastsvd / bare throughput = {rate / bare_rate:.2f} (target >= 0.5)")
            with httpx.Client(base_url=server.url, headers=headers) as client:
                client.put(queued["cancel_url"])
        finally:
            stop_server(server)
            bare.terminate()
            bare.wait()

        fresh = start_server(folder / "fastsvd-2", FASTSVD_IDLE_POLL_S="60")
        try:
            delays, from_sent = submit_to_start(fresh.url, fresh.key, fresh.data_dir, args.jobs)
        finally:
            stop_server(fresh)
        print(f"submit -> worker started ({args.jobs} jobs, one idle worker):")
        for name, values in (("from answer", delays), ("from send", from_sent)):
            ms = [d * 1000 for d in values]
            p50, p99 = statistics.median(ms), percentile(ms, 99)
            print(f"  {name:11s} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  max {max(ms):6.1f} ms")
        print(
            "  (negative: the worker had started before the client read the answer; "
            "target p50 <= 20 ms)"
        )


if __name__ == "__main__":
    main()
