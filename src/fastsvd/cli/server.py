"""Running and managing a server: ``serve``, ``worker``, ``webhooks`` and ``keys``; each opens
the job store named by the same options (``common.store_options``)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import click

from fastsvd import constants as c
from fastsvd.cli.common import (
    EXIT_INVALID,
    fail,
    load_settings,
    main,
    open_services,
    store_name,
    store_options,
)
from fastsvd.errors import CannotRunHere, FastSVDError, GpuFault, ModelNotAvailable


@main.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port (default 8000).")
@click.option("--workers", type=int, help="Worker processes (default: one per GPU, or one).")
@click.option("--preset", help="Models: svd-xt-1.1 (default), svd-xt, or tiny.")
@store_options
@click.option("--no-auth", is_flag=True, help="No API keys (only on a loopback address).")
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False),
    help="PEM certificate (chain): serve https (with --tls-key; or FASTSVD_TLS_CERT).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False),
    help="PEM private key of --tls-cert (or FASTSVD_TLS_KEY).",
)
def serve(
    host: str | None,
    port: int | None,
    workers: int | None,
    preset: str | None,
    store: dict[str, Any],
    no_auth: bool,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Run the fal-compatible API and its workers."""
    from fastsvd.logs import configure
    from fastsvd.serve import serve as run_service

    configure()
    settings = load_settings(
        host=host,
        port=port,
        workers=workers,
        preset=preset,
        auth=False if no_auth else None,
        tls_cert=Path(tls_cert) if tls_cert else None,
        tls_key=Path(tls_key) if tls_key else None,
        **store,
    )
    try:
        code = run_service(settings)
    except FastSVDError as exc:
        fail(exc.message)
    sys.exit(code)


@main.command()
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option("--preset", help="Models: svd-xt-1.1 (default), svd-xt, or tiny.")
@store_options
def worker(burst: bool, preset: str | None, store: dict[str, Any]) -> None:
    """Run one worker: load the model, then run queued jobs one at a time."""
    from fastsvd.logs import configure
    from fastsvd.worker import Worker

    configure()
    settings = load_settings(preset=preset, **store)
    services = open_services(settings, wait=True)
    try:
        worker = Worker.build(settings, services=services)
    except CannotRunHere as exc:  # no usable GPU; the endpoints named do not fit it
        fail(exc.message, c.EXIT_CANNOT_RUN_HERE)
    except FastSVDError as exc:  # FASTSVD_ENDPOINTS names nothing this runner can run; no GPU
        fail(exc.message, EXIT_INVALID)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # SIGTERM (and a first Ctrl-C): finish the current job (within FASTSVD_DRAIN_S, else
        # hand it back), then exit. A second Ctrl-C hands the job back at its next step.
        if signum == signal.SIGINT and worker.stopping.is_set():
            worker.abort.set()
        elif not worker.stopping.is_set():
            worker.drain(settings.drain_s)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if settings.metrics_port is not None:
        worker.metrics.serve(settings.metrics_port)
    try:
        worker.serve(burst=burst)
    except ModelNotAvailable as exc:
        fail(exc.message, c.EXIT_MODEL_NOT_AVAILABLE)
    except CannotRunHere as exc:  # out of memory at load or warm-up
        fail(exc.message, c.EXIT_CANNOT_RUN_HERE)
    except GpuFault as exc:  # between jobs (compiling)
        worker.gpu_fault = exc
    except FastSVDError as exc:
        fail(exc.message)
    if worker.gpu_fault is not None:
        # no interpreter teardown: it would call into the broken CUDA context
        click.echo(f"error: {worker.gpu_fault.message}; exiting to be restarted", err=True)
        sys.stderr.flush()
        os._exit(c.EXIT_GPU_FAULT)


@main.command()
@store_options
def webhooks(store: dict[str, Any]) -> None:
    """Deliver webhooks of finished requests (fastsvd serve runs this for you)."""
    import threading

    from fastsvd.logs import configure
    from fastsvd.store.webhooks import WebhookOutbox
    from fastsvd.webhooks import Deliverer

    configure()
    settings = load_settings(**store)
    services = open_services(settings, wait=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    signal.signal(signal.SIGINT, lambda _s, _f: stop.set())
    Deliverer(WebhookOutbox(services.db), settings, services.signing_keys).serve(stop)


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


def _key_store(store: dict[str, Any]) -> tuple[Any, str]:
    """The key store the options name, and its database's name for messages."""

    settings = load_settings(**store)
    return open_services(settings).keys, store_name(settings)


@keys.command("create")
@click.option("--name", default="", help="A label for the key.")
@click.option("--admin", is_flag=True, help="An admin key (can manage keys).")
@store_options
def keys_create(name: str, admin: bool, store: dict[str, Any]) -> None:
    """Make a key and print it (only now: just its hash is stored)."""
    from fastsvd.store.keys import Scope

    keys, where = _key_store(store)
    key, info = keys.create(name, Scope.admin if admin else Scope.user)
    click.echo(key)
    # stderr, so that `KEY=$(fastsvd keys create)` still captures the key alone
    click.echo(f"created {info.scope} key {info.key_id} in {where}", err=True)


@keys.command("list")
@store_options
def keys_list(store: dict[str, Any]) -> None:
    """Every key: id, scope, name, state (never the secret)."""
    keys, _where = _key_store(store)
    for info in keys.list():
        state = "revoked" if info.revoked_at else "live"
        click.echo(f"{info.key_id}  {info.scope:5s}  {state:7s}  {info.name}")


@keys.command("revoke")
@click.argument("key_id")
@store_options
def keys_revoke(key_id: str, store: dict[str, Any]) -> None:
    """Revoke KEY_ID at once."""
    keys, where = _key_store(store)
    if not keys.revoke(key_id):
        fail(f"key_id: no live key {key_id} in {where}", EXIT_INVALID)
    click.echo(f"revoked {key_id} in {where}")


@keys.command("webhook-secret")
@click.argument("key_id")
@store_options
def keys_webhook_secret(key_id: str, store: dict[str, Any]) -> None:
    """The secret that signs KEY_ID's webhooks (Standard Webhooks, HMAC-SHA256)."""
    keys, where = _key_store(store)
    for info in keys.list():
        if info.key_id == key_id:
            click.echo(info.webhook_secret)
            return
    fail(f"key_id: no key {key_id} in {where}", EXIT_INVALID)


@keys.command("rotate-webhook-signing-key")
@click.option(
    "--overlap-s",
    type=click.FloatRange(min=0),
    default=c.SIGNING_KEY_OVERLAP_S,
    show_default=True,
    help="How long the old key stays published in /.well-known/jwks.json.",
)
@store_options
def keys_rotate_signing_key(overlap_s: float, store: dict[str, Any]) -> None:
    """Sign fal-style webhooks with a new Ed25519 key from now on; the old one stays published
    for OVERLAP_S seconds, so webhooks it signed still verify."""

    settings = load_settings(**store)
    services = open_services(settings)
    try:
        services.signing_keys.ensure()  # a deployment that never started has one to retire
        key = services.signing_keys.rotate(overlap_s)
    finally:
        services.close()
    click.echo(
        f"signing with key {key.kid} in {store_name(settings)}; the old one stays "
        f"published for {overlap_s:.0f} s"
    )
