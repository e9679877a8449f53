"""How long a database cut holds a worker, and how fast the API answers while cut off.

A real API process and a real worker process, each reaching PostgreSQL through a port of its own
in a network namespace made for the run (``tests.netfault``). The worker runs a long job; its
link is cut (packets dropped silently, both ways) for ``--cut-s`` seconds, longer than its lease.
The figure: when the worker's job thread let go of the job ("lease lost; stopped without
writing"), counted from the cut and from the link's return. Before that, the API's link is cut
for a few seconds and each status call's time to its 503 is measured.

    sudo .venv/bin/python bench/outage.py [--cut-s 60] [--lease-s 30]

Needs root, ``ip``, ``nft`` and the PostgreSQL the tests use (``FASTSVD_TEST_POSTGRES``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.databases import database_url  # noqa: E402
from tests.netfault import Namespace, Relay, relayed_url, unavailable  # noqa: E402
from tests.service.test_topology import start_worker  # noqa: E402
from tests.support.bodies import T2V_PATH  # noqa: E402
from tests.support.servers import start_server, stop_server, wait_for  # noqa: E402


def logged_at(path: Path, containing: str) -> float | None:
    """The UNIX time of the first JSON log line of ``path`` whose message has ``containing``."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if containing in entry["msg"]:
                return datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cut-s", type=float, default=60.0, help="how long the worker is cut off")
    parser.add_argument("--lease-s", type=float, default=30.0, help="FASTSVD_LEASE_S")
    args = parser.parse_args()
    if reason := unavailable():
        raise SystemExit(f"cannot run: {reason}")
    tmp = Path(tempfile.mkdtemp(prefix="fastsvd-outage-"))
    namespace = Namespace()
    try:
        with database_url("postgresql", tmp) as url:
            port = int(url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            api_relay = Relay(namespace, ("127.0.0.1", port))
            worker_relay = Relay(namespace, ("127.0.0.1", port))
            shared = {
                "FASTSVD_STORAGE_URL": f"file://{tmp / 'files'}",
                "FASTSVD_LEASE_S": str(args.lease_s),
            }
            folder = tmp / "worker"
            with namespace.inside():
                server = start_server(
                    tmp / "api",
                    FASTSVD_DATABASE_URL=relayed_url(url, api_relay.port),
                    FASTSVD_WORKERS="0",
                    FASTSVD_LOG_FORMAT="json",
                    **shared,
                )
                worker = start_worker(
                    folder,
                    {
                        "FASTSVD_DATABASE_URL": relayed_url(url, worker_relay.port),
                        "FAKE_STEP_S": "2",  # 50 steps: 100 s, longer than any cut here
                        **shared,
                    },
                )
                client = server.client()
            try:
                with namespace.inside():
                    sub = client.post(T2V_PATH, json={"prompt": "a long one", "steps": 50}).json()
                    namespace.cut(api_relay.port)
                    answers = []
                    for _ in range(5):
                        started = time.monotonic()
                        try:
                            status = str(client.get(sub["status_url"]).status_code)
                        except httpx.TimeoutException:
                            status = "no answer"
                        answers.append((status, time.monotonic() - started))
                    namespace.mend(api_relay.port)
                    wait_for(
                        lambda: client.get(sub["status_url"]).json()["status"] == "IN_PROGRESS",
                        "the job running",
                    )
                print("API cut off: " + ", ".join(f"{s} in {t:.2f} s" for s, t in answers))
                cut_at = time.time()
                namespace.cut(worker_relay.port)
                time.sleep(args.cut_s)
                namespace.mend(worker_relay.port)
                mended_at = time.time()
                log = folder / "worker.log"
                wait_for(
                    lambda: "lease lost; stopped" in log.read_text(),
                    "the job thread freed",
                    timeout_s=args.cut_s * 2 + args.lease_s,
                )
                freed_at = logged_at(log, "lease lost; stopped")
                assert freed_at is not None
                print(
                    f"worker cut off for {args.cut_s:.0f} s with a {args.lease_s:.0f} s lease: "
                    f"its job thread was freed {freed_at - cut_at:.1f} s after the cut, "
                    f"{freed_at - mended_at:+.1f} s from the link's return"
                )
            finally:
                with namespace.inside():
                    client.close()
                stop_server(server)
                worker.terminate()
                worker.wait(30)
                api_relay.close()
                worker_relay.close()
    finally:
        namespace.close()


if __name__ == "__main__":
    main()
