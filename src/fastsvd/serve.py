"""``fastsvd serve``: the API in this process, workers as child processes, housekeeping threads.

The supervisor restarts a worker that dies (its job goes back to the queue as soon as a worker
on this host finds its process gone, or else when its lease expires) and stops everything if a
worker cannot load its models. On SIGTERM or Ctrl-C it stops taking requests, asks the workers
to finish their current job, and exits.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import uvicorn

from fastsvd import constants as c
from fastsvd.api.app import create_app
from fastsvd.endpoints import configured
from fastsvd.errors import FastSVDError, Unavailable
from fastsvd.periodic import Every
from fastsvd.retry import Outage
from fastsvd.services import Services
from fastsvd.settings import Settings
from fastsvd.store.keys import Scope

log = logging.getLogger("fastsvd.serve")

# a worker's exit codes that no restart would mend: the service stops, saying why
FATAL_EXITS = {
    c.EXIT_MODEL_NOT_AVAILABLE: "a worker could not load its models (see above)",
    c.EXIT_CANNOT_RUN_HERE: "a worker cannot run on this machine as set up (see above)",
}


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def visible_gpus() -> int:
    """How many NVIDIA GPUs this process may use, without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"],
            capture_output=True,
            text=True,
            timeout=c.NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


@dataclass
class ChildProcess:
    """One supervised process: a worker, or the webhook deliverer."""

    name: str
    command: str  # a fastsvd subcommand
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fastsvd.cli", self.command], env=self.env
        )
        self.started_at = time.monotonic()


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of a worker or deliverer: this process's, plus the settings that
    ``serve``'s flags can change, so children see what the API sees (the same data folder,
    hence the same database, and the same models)."""
    env = {
        **os.environ,
        "FASTSVD_PRESET": settings.preset,
        "FASTSVD_DATA_DIR": str(settings.data_dir.resolve()),
    }
    if settings.database_url:
        env["FASTSVD_DATABASE_URL"] = settings.database_url
    return env


class Supervisor:
    """Starts and watches the worker processes and the webhook deliverer."""

    def __init__(self, settings: Settings, count: int, gpus: int) -> None:
        self.settings = settings
        base = child_env(settings)
        self.workers = [ChildProcess("webhooks", "webhooks", dict(base))]
        for i in range(count):
            env = dict(base)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
            self.workers.append(ChildProcess(f"worker {i}", "worker", env))
        self.fatal: str | None = None
        self.stopping = threading.Event()

    def start(self) -> None:
        for worker in self.workers:
            worker.start()
        threading.Thread(target=self._watch, name="supervisor", daemon=True).start()

    def _watch(self) -> None:
        while not self.stopping.wait(c.SUPERVISOR_POLL_S):
            for worker in self.workers:
                code = worker.process.poll() if worker.process is not None else None
                if code is None:
                    continue
                if code in FATAL_EXITS:
                    self.fatal = FATAL_EXITS[code]
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                delay = min(2.0**worker.restarts, 30.0)
                why = "its GPU failed" if code == c.EXIT_GPU_FAULT else f"exited with {code}"
                log.warning("%s: %s; restarting in %.0f s", worker.name, why, delay)
                if self.stopping.wait(delay):
                    return
                worker.restarts += 1
                worker.start()

    def stop(self) -> None:
        """Ask every worker to finish its job and exit; kill the ones that take too long."""
        self.stopping.set()
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + c.DRAIN_GRACE_S
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()


def housekeeping(services: Services, stop: threading.Event) -> None:
    """End queued jobs past their start deadline every ``START_DEADLINE_SWEEP_S`` (a claim skips
    them; their callers wait for the 504); requeue jobs of dead workers and delete expired
    files every ``housekeeping_interval_s``."""
    outage = Outage(log)  # an unavailable store: one warning when it starts, one when it ends
    interval_s = services.settings.housekeeping_interval_s
    rounds = Every(interval_s)
    while not stop.wait(min(c.START_DEADLINE_SWEEP_S, interval_s)):
        try:
            services.jobs.expire_start_deadlines()
            if rounds.due():
                if services.jobs.requeue_abandoned():
                    services.waker.wake_all()  # one machine: no NOTIFY tells the idle workers
                for file_id in services.files.take_expired():
                    services.storage.delete(file_id)
        except Unavailable as exc:  # retried at the next round
            outage.failed(exc.message)
            continue
        except Exception:  # a failed round is retried at the next one
            log.exception("housekeeping failed")
        outage.answered()


FIRST_KEY_FILE = "first-key"  # in the data folder, readable by its owner only


def create_first_key(services: Services) -> None:
    """Make an admin key for a server that has none, and hand it over without logging it.

    The key goes to a file only its owner can read. It is printed too when standard output is
    a terminal (someone is watching), never when it is a log (systemd, Docker, a file).
    """
    key, _info = services.keys.create("first key", scope=Scope.admin)
    path = services.settings.data_dir.resolve() / FIRST_KEY_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    shown = f"\n\n    {key}\n\n" if sys.stdout.isatty() else " "
    print(
        f"\nCreated the first API key (admin scope):{shown}It is in {path}, readable by this "
        "user only. Send it as 'Authorization: Key <key>'; manage keys with `fastsvd keys` "
        "or /admin/keys.\n",
        flush=True,
    )


def check_tls(settings: Settings) -> bool:
    """Whether the API serves https itself; raises ``FastSVDError`` for a half or unreadable
    TLS configuration, before anything starts."""
    if settings.tls_cert is None and settings.tls_key is None:
        return False
    if settings.tls_cert is None or settings.tls_key is None:
        raise FastSVDError(
            "TLS needs both a certificate and its key: --tls-cert and --tls-key "
            "(FASTSVD_TLS_CERT and FASTSVD_TLS_KEY), or neither"
        )
    try:  # the same loading uvicorn does, so a bad file is one clear line, not a traceback
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise FastSVDError(
            f"cannot load the TLS certificate {settings.tls_cert} with key "
            f"{settings.tls_key}: {exc}"
        ) from exc
    return True


def check_weights(settings: Settings) -> None:
    """Offline (``HF_HUB_OFFLINE=1``), missing weights stop the service before any worker
    starts: one line per missing model with its download command. Online, workers download
    them as they load; the lines say what that is."""
    if settings.runner:
        return
    from fastsvd.pipeline import weights

    report = weights.check(settings, configured(settings).capabilities())
    if report.complete:
        return
    if weights.hub_offline():
        raise report.error()
    print(f"downloading as the workers load:\n{report.message()}", flush=True)


def serve(settings: Settings) -> int:
    """Run the service until stopped; returns the process exit code."""
    tls = check_tls(settings)
    configured(settings)  # an unknown FASTSVD_ENDPOINTS id stops here, not in every worker
    if not settings.auth and not is_loopback(settings.host):
        raise FastSVDError(
            f"auth can only be turned off on a loopback address, not on {settings.host}"
        )
    check_weights(settings)
    services = Services.from_settings(settings, wait=True)
    if settings.auth and services.keys.count_live() == 0:
        create_first_key(services)
    services.signing_keys.ensure()  # the webhook signing key, made on the first start
    gpus = visible_gpus()
    count = settings.workers if settings.workers is not None else max(gpus, 1)
    supervisor = Supervisor(settings, count, gpus)
    supervisor.start()
    stop = threading.Event()
    threading.Thread(target=housekeeping, args=(services, stop), daemon=True).start()
    origin = f"{'https' if tls else 'http'}://{settings.host}:{settings.port}"
    print(
        f"fastsvd on {origin} "
        f"({count} worker{'s' if count != 1 else ''}, preset {settings.preset}, "
        f"data in {settings.data_dir.resolve()})\n"
        f"playground: {origin}/",
        flush=True,
    )
    config = uvicorn.Config(
        create_app(services),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        proxy_headers=True,
        timeout_graceful_shutdown=c.HTTP_SHUTDOWN_GRACE_S,
        # uvicorn's own TLS; the scheme of the URLs in responses follows (https)
        ssl_certfile=settings.tls_cert if tls else None,
        ssl_keyfile=settings.tls_key if tls else None,
    )
    # uvicorn re-raises the signal that stopped it once it has shut down; with these no-op
    # handlers in place that returns here, so the workers are drained below instead of orphaned.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: None)
    try:
        uvicorn.Server(config).run()
    finally:
        stop.set()
        supervisor.stop()
        services.db.dispose()
    if supervisor.fatal:
        print(f"error: {supervisor.fatal}", file=sys.stderr)
        return 1
    return 0
