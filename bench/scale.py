"""The job store at scale: 64 workers on PostgreSQL (and on SQLite, for comparison, in the
same run), and status reads through two API processes.

    .venv/bin/python bench/scale.py [--workers 64] [--processes 8] [--jobs 1280] [--rate 100]
        [--seconds 10] [--backend sqlite|postgresql] [--claims-only]

Workers are real ``fastsvd.worker.Worker``s (claims, leases, heartbeats, logs, outputs stored,
results written), ``--workers`` of them in ``--processes`` processes, running a stand-in model
that sleeps 50 ms per job (the GPU's time, which costs the host nothing) in 4 steps, calling
the pipeline's hooks at each (a cancel check, a progress line), and returns a fixed MP4.

Measured for each backend:

- claims per second: ``--jobs`` requests queued at once (one transaction, one wake-up), then
  drained by the workers; jobs finished divided by the time from the first start to the last
  finish;
- the control plane's cost per job over that drain: the workers' database transactions and rows
  written (counted in each worker process by SQLAlchemy events), and host CPU per job: the
  process CPU time (user + system, from ``/proc``) of the worker processes, the API processes
  and the whole PostgreSQL server (every process of it, backends that exited meanwhile included;
  SQLite runs inside the workers), divided by the jobs;
- submit to start: requests submitted through the API at ``--rate`` per second for
  ``--seconds``; the delay is the job's ``started_at`` minus its ``created_at`` (both written by
  this machine's clock), p50 and p99; and host CPU per job end to end (the submit through the
  API, the job, the result, and the cluster's idle work over those seconds), as above;
- status reads per second: 100 clients polling (0.1 s between answers, as fal-client does)
  through two API processes (PostgreSQL) or one (SQLite, the single-machine layout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.service import percentile, poll, submit_at  # noqa: E402
from tests.databases import postgres_database  # noqa: E402
from tests.support.bodies import T2V_PATH  # noqa: E402
from tests.support.servers import PYTHONPATH, start_server, stop_server  # noqa: E402

JOB_S = 0.05
STEPS = 4  # a few-step request's denoising steps: a progress line each


def worker_process(count: int) -> None:
    """``count`` workers in threads of this process, until SIGTERM."""
    import numpy as np

    from fastsvd.endpoints import ENDPOINTS, IMAGE_TO_VIDEO, TEXT_TO_VIDEO
    from fastsvd.hooks import Hooks, Stage, StepEvent
    from fastsvd.pipeline.encode import encode_mp4
    from fastsvd.services import Services
    from fastsvd.settings import Settings
    from fastsvd.worker import Worker, worker_name

    mp4 = encode_mp4(np.zeros((25, 64, 64, 3), dtype=np.uint8), 10)

    class SleepRunner:
        capabilities = frozenset({TEXT_TO_VIDEO, IMAGE_TO_VIDEO})

        def load(self) -> None:
            return None

        def idle(self) -> bool:
            return False

        def run(self, capability: str, request: object, seed: int, hooks: Hooks) -> bytes:
            # as the pipeline does: a cancel check and a progress line per step
            for step in range(1, STEPS + 1):
                hooks.check_cancel(Stage.video, step)
                time.sleep(JOB_S / STEPS)
                hooks.on_step(StepEvent(Stage.video, step, STEPS))
            return mp4

    count_database_work(Path(os.environ["FASTSVD_BENCH_TALLY_DIR"]) / f"{os.getpid()}.json")
    settings = Settings.from_env()
    shared = Services.from_settings(settings)
    workers = [
        Worker.build(
            settings,
            services=shared,
            runner=SleepRunner(),  # type: ignore[arg-type]
            endpoints=ENDPOINTS,
            name=f"{worker_name()}-{i}",
        )
        for i in range(count)
    ]
    threads = [threading.Thread(target=w.serve, daemon=True) for w in workers]
    for t in threads:
        t.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    stop.wait()
    for w in workers:
        w.stopping.set()
        w.listener.wake()
    for t in threads:
        t.join(10)


WRITES = ("INSERT", "UPDATE", "DELETE")


def count_database_work(path: Path) -> None:
    """Count this process's transactions, those that wrote, and rows written; write the tally
    to ``path`` on SIGUSR1."""
    from sqlalchemy import event
    from sqlalchemy.engine import Connection, Engine

    tally = {"transactions": 0, "write_transactions": 0, "rows_written": 0}
    lock = threading.Lock()

    @event.listens_for(Engine, "begin")
    def on_begin(conn: Connection) -> None:
        conn.info["bench_wrote"] = False
        with lock:
            tally["transactions"] += 1

    @event.listens_for(Engine, "commit")
    def on_commit(conn: Connection) -> None:
        if conn.info.get("bench_wrote"):
            with lock:
                tally["write_transactions"] += 1

    @event.listens_for(Engine, "after_cursor_execute")
    def on_execute(conn: Connection, cursor, statement, params, context, many) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip()[:6].upper() in WRITES and cursor.rowcount > 0:
            conn.info["bench_wrote"] = True
            with lock:
                tally["rows_written"] += cursor.rowcount

    def report(_signum: int, _frame: object) -> None:
        with lock:
            path.write_text(json.dumps(tally))

    signal.signal(signal.SIGUSR1, report)
    report(0, None)  # the file's presence says the handler is in place


def database_tally(processes: list[subprocess.Popen[bytes]], folder: Path) -> dict[str, int]:
    """The workers' summed tallies (``count_database_work``), asked for now."""
    for p in processes:  # a process without a handler would die of the signal: wait for it
        path = folder / f"{p.pid}.json"
        deadline = time.monotonic() + 120
        while not path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker process {p.pid} did not start")
            time.sleep(0.05)
    for p in processes:
        (folder / f"{p.pid}.json").unlink()
        p.send_signal(signal.SIGUSR1)
    total: dict[str, int] = {}
    for p in processes:
        path = folder / f"{p.pid}.json"
        deadline = time.monotonic() + 10
        while not path.exists() or not path.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker process {p.pid} did not report its tally")
            time.sleep(0.01)
        for k, v in json.loads(path.read_text()).items():
            total[k] = total.get(k, 0) + v
    return total


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` and their descendants: the live ones, and those
    that exited and were waited for (the ``cutime``/``cstime`` of their parents)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu seconds)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        own = int(fields[11]) + int(fields[12])
        reaped = int(fields[13]) + int(fields[14])
        stats[int(entry.name)] = (int(fields[1]), (own + reaped) / tick)
    wanted, total, frontier = set(), 0.0, list(pids)
    while frontier:
        pid = frontier.pop()
        if pid in wanted or pid not in stats:
            continue
        wanted.add(pid)
        total += stats[pid][1]
        frontier.extend(child for child, (parent, _) in stats.items() if parent == pid)
    return total


def database_server(database_url: str) -> list[int]:
    """The PostgreSQL server's postmaster (none for SQLite): with its descendants, every
    process of the server, the backends of connections opened and closed meanwhile included
    (their CPU is the postmaster's ``cutime`` once they exit). The machine's server runs only
    this benchmark's database while it runs."""
    from sqlalchemy import text

    from fastsvd.store.db import Database

    if not database_url.startswith("postgresql"):
        return []
    db = Database(database_url)
    try:
        with db.read() as conn:  # its parent, read while the backend is there
            backend = int(conn.scalar(text("SELECT pg_backend_pid()")))
            stat = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
    finally:
        db.dispose()
    return [int(stat[1])]


def start_workers(
    env: dict[str, str], total: int, processes: int, pool_size: int | None
) -> list[subprocess.Popen[bytes]]:
    per = [total // processes + (1 if i < total % processes else 0) for i in range(processes)]
    return [
        subprocess.Popen(
            [sys.executable, __file__, "--worker-process", str(n)],
            # by default a process's workers share a pool of one connection each (their
            # heartbeats wait for a free one): 64 workers, a LISTEN per process and the APIs
            # stay within PostgreSQL's default 100 connections up to 16 processes
            env={
                **os.environ,
                **env,
                "FASTSVD_DB_POOL_SIZE": str(pool_size or n),
                "PYTHONPATH": PYTHONPATH,
            },
        )
        for n in per
        if n
    ]


def stop_workers(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        p.terminate()
    for p in processes:
        p.wait(30)


def job_times(database_url: str) -> list[tuple[float, float | None, float | None]]:
    from sqlalchemy import select

    from fastsvd.store.db import Database
    from fastsvd.store.tables import jobs

    db = Database(database_url)
    try:
        with db.read() as conn:
            rows = conn.execute(
                select(jobs.c.created_at, jobs.c.started_at, jobs.c.finished_at)
            ).all()
    finally:
        db.dispose()
    return [(r[0], r[1], r[2]) for r in rows]


def clear_jobs(database_url: str) -> None:
    from sqlalchemy import delete

    from fastsvd.store.db import Database
    from fastsvd.store.tables import files, job_logs, jobs

    db = Database(database_url)
    try:
        with db.write() as conn:
            for table in (job_logs, files, jobs):
                conn.execute(delete(table))
    finally:
        db.dispose()


def queue_jobs(database_url: str, count: int) -> None:
    """``count`` jobs in one transaction: the workers find a full queue, not a trickle."""
    import json
    import uuid

    from sqlalchemy import insert

    from fastsvd.store.db import WAKE_CHANNEL, Database
    from fastsvd.store.tables import jobs

    body = json.dumps({"prompt": "bench", "steps": 1})
    now = time.time()
    rows = [
        {
            "id": str(uuid.uuid4()),
            "key_id": "bench",
            "endpoint": "fal-ai/fast-svd/text-to-video",
            "input": body,
            "state": "queued",
            "priority": 0,
            "created_at": now,
        }
        for _ in range(count)
    ]
    db = Database(database_url)
    try:
        with db.write() as conn:
            conn.execute(insert(jobs), rows)
            db.notify(conn, WAKE_CHANNEL)
    finally:
        db.dispose()
    if not db.is_postgres:
        from fastsvd.wakeup import Waker

        waker = Waker(Path(os.environ["FASTSVD_BENCH_WAKE_DIR"]))
        waker.wake_all()
        waker.close()


def wait_all_finished(database_url: str, count: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        times = job_times(database_url)
        if len(times) >= count and all(f is not None for _c, _s, f in times):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("jobs did not finish")
        time.sleep(0.5)


def measure(
    name: str, env: dict[str, str], args: argparse.Namespace, folder: Path
) -> dict[str, float]:
    url = env["FASTSVD_DATABASE_URL"]
    apis = [start_server(folder / "api-a", **env, FASTSVD_WORKERS="0")]
    if name == "postgresql":
        apis.append(start_server(folder / "api-b", **env, FASTSVD_WORKERS="0"))
    workers = start_workers(env, args.workers, args.processes, args.pool_size)
    out: dict[str, float] = {}
    try:
        # Let every worker register and start listening.
        time.sleep(5)

        # 1. claims per second, draining a full queue, and what each job cost the host
        clear_jobs(url)
        os.environ["FASTSVD_BENCH_WAKE_DIR"] = str(Path(env.get("FASTSVD_DATA_DIR", "")) / "wake")
        tally_dir = Path(env["FASTSVD_BENCH_TALLY_DIR"])
        parts = {  # whose CPU: the workers, the API processes, the database server
            "workers": [p.pid for p in workers],
            "api": [api.process.pid for api in apis],
            "database": database_server(url),
        }
        tally_before = database_tally(workers, tally_dir)
        cpu_before = {part: cpu_s(pids) for part, pids in parts.items()}
        queue_jobs(url, args.jobs)
        wait_all_finished(url, args.jobs)
        cpu_after = {part: cpu_s(pids) for part, pids in parts.items()}
        tally_after = database_tally(workers, tally_dir)
        times = job_times(url)
        first = min(s for _c, s, _f in times if s is not None)
        last = max(f for _c, _s, f in times if f is not None)
        out["claims_per_s"] = len(times) / (last - first)
        for k, v in tally_after.items():
            out[f"{k}_per_job"] = (v - tally_before.get(k, 0)) / len(times)
        for part in parts:
            out[f"{part}_cpu_ms_per_job"] = (cpu_after[part] - cpu_before[part]) * 1000 / len(times)
        out["cpu_ms_per_job"] = sum(out[f"{part}_cpu_ms_per_job"] for part in parts)

        if args.claims_only:
            return out

        # 2. submit to start, at a steady rate through the APIs
        clear_jobs(url)
        tally_before = database_tally(workers, tally_dir)
        cpu_before = {part: cpu_s(pids) for part, pids in parts.items()}
        began = time.monotonic()
        sent = asyncio.run(
            submit_at(
                [f"{api.url}{T2V_PATH}" for api in apis],
                {"Authorization": f"Key {apis[0].key}"},
                json.dumps({"prompt": "bench", "steps": 1}).encode(),
                args.rate,
                args.seconds,
            )
        )
        submitting_s = time.monotonic() - began
        wait_all_finished(url, sent)
        cpu_after = {part: cpu_s(pids) for part, pids in parts.items()}
        # end to end: the submit through the API, the claim, the job, the result; and the
        # idle cluster's own work (heartbeats, reaping) over those seconds
        for part in parts:
            out[f"e2e_{part}_cpu_ms_per_job"] = (cpu_after[part] - cpu_before[part]) * 1000 / sent
        out["e2e_cpu_ms_per_job"] = sum(out[f"e2e_{part}_cpu_ms_per_job"] for part in parts)
        tally_after = database_tally(workers, tally_dir)
        out["e2e_worker_transactions_per_job"] = (
            tally_after["transactions"] - tally_before.get("transactions", 0)
        ) / sent
        delays = [(s - c) * 1000 for c, s, _f in job_times(url) if s is not None]
        out["submit_rate"] = sent / submitting_s
        out["start_p50_ms"] = percentile(delays, 50)
        out["start_p99_ms"] = percentile(delays, 99)

        # 3. status reads per second, spread over the APIs
        stop_workers(workers)
        workers = []
        # the probe job stays queued (no workers now), so each read also counts its position
        clear_jobs(url)
        with httpx.Client(headers={"Authorization": f"Key {apis[0].key}"}) as client:
            status_urls = [
                client.post(f"{api.url}{T2V_PATH}", json={"prompt": "bench"}).json()["status_url"]
                for api in apis
            ]

        async def everyone() -> list[float]:
            headers = {"Authorization": f"Key {apis[0].key}"}
            share = args.pollers // len(status_urls)
            parts = await asyncio.gather(
                *(poll(u, headers, share, args.seconds) for u in status_urls)
            )
            return [x for part in parts for x in part]

        database_before = cpu_s(parts["database"])
        latencies = asyncio.run(everyone())
        database_after = cpu_s(parts["database"])
        out["status_per_s"] = len(latencies) / args.seconds
        out["status_p50_ms"] = percentile(latencies, 50) * 1000
        out["status_db_cpu_ms"] = (database_after - database_before) * 1000 / len(latencies)
    finally:
        stop_workers(workers)
        for api in apis:
            stop_server(api)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument(
        "--processes", type=int, default=8, help="Worker processes the workers are spread over."
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        help="FASTSVD_DB_POOL_SIZE of each worker process (default: its number of workers).",
    )
    parser.add_argument("--jobs", type=int, default=1280)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument(
        "--claims-only", action="store_true", help="Measure the drain (claims/s, cost) only."
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql"),
        action="append",
        help="Measure this database only (repeatable; default: both).",
    )
    parser.add_argument("--worker-process", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_process:
        worker_process(args.worker_process)
        return

    common = {
        "FASTSVD_IDLE_POLL_S": "5",
        "FASTSVD_LOG_LEVEL": "WARNING",
        # the caps stay on (their counts are part of a submit's cost), out of reach
        "FASTSVD_MAX_QUEUED": "1000000",
        "FASTSVD_MAX_ACTIVE_PER_KEY": "1000000",
    }
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        common["FASTSVD_BENCH_TALLY_DIR"] = str(folder)
        sqlite_env = {
            **common,
            "FASTSVD_DATABASE_URL": f"sqlite:///{folder / 'fastsvd.db'}",
            "FASTSVD_DATA_DIR": str(folder / "shared"),
        }
        backends = args.backend or ["sqlite", "postgresql"]
        if "sqlite" in backends:
            results["sqlite"] = measure("sqlite", sqlite_env, args, folder / "sqlite")
        if "postgresql" in backends:
            with postgres_database() as url:
                pg_env = {
                    **common,
                    "FASTSVD_DATABASE_URL": url,
                    "FASTSVD_DATA_DIR": str(folder / "pg-files"),
                }
                results["postgresql"] = measure("postgresql", pg_env, args, folder / "pg")

    print(f"\n{args.workers} workers, jobs of {JOB_S * 1000:.0f} ms, {os.cpu_count()} CPUs")
    names = list(results)
    both = len(names) == 2
    print(f"{'':28}" + "".join(f"{n:>12}" for n in names) + (f"{'pg/sqlite':>11}" if both else ""))
    rows = [
        ("claims/s", "claims_per_s", "{:.0f}"),
        ("host CPU ms/job", "cpu_ms_per_job", "{:.2f}"),
        ("  workers", "workers_cpu_ms_per_job", "{:.2f}"),
        ("  API processes", "api_cpu_ms_per_job", "{:.2f}"),
        ("  database server", "database_cpu_ms_per_job", "{:.2f}"),
        ("transactions/job", "transactions_per_job", "{:.2f}"),
        ("write transactions/job", "write_transactions_per_job", "{:.2f}"),
        ("rows written/job", "rows_written_per_job", "{:.2f}"),
        ("submits/s reached", "submit_rate", "{:.0f}"),
        ("  host CPU ms/job", "e2e_cpu_ms_per_job", "{:.2f}"),
        ("    workers", "e2e_workers_cpu_ms_per_job", "{:.2f}"),
        ("    API processes", "e2e_api_cpu_ms_per_job", "{:.2f}"),
        ("    database server", "e2e_database_cpu_ms_per_job", "{:.2f}"),
        ("  workers' transactions/job", "e2e_worker_transactions_per_job", "{:.2f}"),
        ("submit->start p50 ms", "start_p50_ms", "{:.1f}"),
        ("submit->start p99 ms", "start_p99_ms", "{:.1f}"),
        ("status reads/s", "status_per_s", "{:.0f}"),
        ("status p50 ms", "status_p50_ms", "{:.1f}"),
        ("  database CPU ms/read", "status_db_cpu_ms", "{:.2f}"),
    ]
    for label, key, fmt in rows:
        if key not in results[names[0]]:
            continue
        values = [results[n][key] for n in names]
        line = f"{label:28}" + "".join(f"{fmt.format(v):>12}" for v in values)
        if both:
            line += f"{values[1] / values[0]:>10.2f}x" if values[0] else f"{'':>11}"
        print(line)


if __name__ == "__main__":
    main()
