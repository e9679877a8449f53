"""The ``fastsvd`` command line.

``generate`` runs the pipeline on this machine (or on a server with ``--server``); ``serve``,
``worker``, ``webhooks`` and ``keys`` run and manage a server; ``submit``, ``status``,
``result``, ``cancel`` and ``watch`` talk to one (``--url``/``FASTSVD_URL``,
``--key``/``FASTSVD_KEY``).

Errors are one line on stderr (``error: <field>: <message>``) with a non-zero exit code:
2 for bad input, 1 for anything else, 130 when interrupted. No traceback reaches the user.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import mimetypes
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar

import click
from pydantic import ValidationError

from fastsvd import __version__, cli_remote
from fastsvd import constants as c
from fastsvd.client import InProgress, Queued
from fastsvd.errors import FastSVDError, GenerationCancelled, InvalidInput, ModelNotAvailable
from fastsvd.schema import (
    VIDEO_SIZE_PRESETS,
    DeepCache,
    File,
    ImageToVideoInput,
    TextToVideoInput,
    VideoOutput,
    field_errors,
    resolve_seed,
)
from fastsvd.settings import Settings

T = TypeVar("T")
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _number(value: str) -> object:
    """A number typed on the command line as one (the schema takes JSON numbers only)."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _parse_size(value: str | None) -> object:
    """``WIDTHxHEIGHT`` becomes an object; anything else goes to the schema as a preset name."""
    if value is None:
        return None
    width, sep, height = value.lower().partition("x")
    if sep and width.strip().isdigit() and height.strip().isdigit():
        return {"width": int(width), "height": int(height)}
    return value


def _image_data_uri(path: str) -> str:
    """A local picture as a ``data:`` URI, the form the schema's ``image_url`` accepts."""
    if path.startswith("data:"):
        return path
    if "://" in path:
        raise InvalidInput(
            "image_url", "the CLI reads local files; send URLs to a server (fastsvd serve)"
        )
    file = Path(path)
    if not file.is_file():
        raise InvalidInput("image_url", f"no such file: {path}")
    content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    return f"data:{content_type};base64,{base64.b64encode(file.read_bytes()).decode()}"


@contextmanager
def _cancel_on_interrupt() -> Iterator[threading.Event]:
    """The first Ctrl-C asks the pipeline to stop at its next step; a second one kills."""
    cancelled = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if cancelled.is_set():
            raise KeyboardInterrupt
        cancelled.set()
        click.echo("\ncancelling at the next step (Ctrl-C again to abort)", err=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield cancelled
    finally:
        signal.signal(signal.SIGINT, previous)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastsvd")
def main() -> None:
    """fastsvd: self-hosted, fal-compatible text-to-video (SDXL first frame + SVD-XT)."""


def _input_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The fal input fields as options, shared by ``generate`` and ``submit``."""
    options = [
        click.option("--image", help="Animate this picture (a file or URL) instead of a prompt."),
        click.option("--negative-prompt", help="What the first frame should not show."),
        click.option(
            "--motion-bucket-id",
            help=f"More motion when higher; 1-255 (default {c.DEFAULT_MOTION_BUCKET_ID}).",
        ),
        click.option(
            "--cond-aug",
            help=f"Noise added to the first frame; 0-10 (default {c.DEFAULT_COND_AUG}).",
        ),
        click.option("--seed", help="Seed for both stages (default: random, printed at the end)."),
        click.option(
            "--steps",
            help=f"Video denoising steps; 1-{c.STEPS_MAX} (default {c.DEFAULT_STEPS}).",
        ),
        click.option(
            "--deep-cache",
            help=f"Reuse deep U-Net features: {', '.join(d.value for d in DeepCache)} "
            "(default none).",
        ),
        click.option("--fps", help=f"Frames per second; 1-{c.FPS_MAX} (default {c.DEFAULT_FPS})."),
        click.option(
            "--video-size",
            help=f"WIDTHxHEIGHT (multiples of 64) or one of {', '.join(VIDEO_SIZE_PRESETS)}.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _server_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Where the server is and the key to use."""
    command = click.option(
        "--key", envvar="FASTSVD_KEY", help="API key, key_id:secret (or FASTSVD_KEY)."
    )(command)
    return click.option(
        "--url",
        envvar="FASTSVD_URL",
        default="http://127.0.0.1:8000",
        show_default=True,
        help="The server (or FASTSVD_URL).",
    )(command)


def _fields(**given: str | None) -> dict[str, Any]:
    """The input fields given on the command line, checked and typed by the schema."""
    fields: dict[str, Any] = {
        k: _parse_size(v) if k == "video_size" else _number(v)
        for k, v in given.items()
        if v is not None
    }
    try:
        checked = TextToVideoInput.model_validate({"prompt": "-", **fields})
    except ValidationError as exc:
        field, message = field_errors(exc)[0]
        _fail(f"{field}: {message}", EXIT_INVALID)
    return checked.model_dump(mode="json", include=set(fields))


@main.command()
@click.argument("prompt", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the MP4.")
@_input_options
@click.option(
    "--server",
    metavar="URL",
    help="Generate on this fastsvd server (key from --key or FASTSVD_KEY), not on this machine.",
)
@click.option("--key", envvar="FASTSVD_KEY", help="API key for --server (or FASTSVD_KEY).")
@click.option("--preset", help="Models: svd-xt-1.1 (default), svd-xt, or tiny (no weights needed).")
@click.option("--device", help="cuda, cuda:N or cpu (default: the best available).")
@click.option("--dtype", help="bf16, fp16 or fp32 (default: bf16 on CUDA, fp32 on CPU).")
@click.option("--json", "as_json", is_flag=True, help="Print the fal output object as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def generate(
    prompt: str | None,
    output: str | None,
    image: str | None,
    server: str | None,
    key: str | None,
    preset: str | None,
    device: str | None,
    dtype: str | None,
    as_json: bool,
    quiet: bool,
    **given: str | None,
) -> None:
    """Make a video from PROMPT (or from --image) on this machine, or on a server with
    --server, and write it as MP4."""
    fields = _fields(**given)
    if server is not None:
        result, path = _remote(
            lambda: cli_remote.run_remote(
                server, key, fields, prompt=prompt, image=image, output=output, quiet=quiet
            )
        )
        _print_result(result, path, as_json=as_json)
        return
    request: TextToVideoInput | ImageToVideoInput
    try:
        if image is not None:
            fields.pop("negative_prompt", None)
            request = ImageToVideoInput.model_validate(
                {"image_url": _image_data_uri(image), **fields}
            )
        else:
            request = TextToVideoInput.model_validate({"prompt": prompt or "", **fields})
    except ValidationError as exc:
        field, message = field_errors(exc)[0]
        _fail(f"{field}: {message}", EXIT_INVALID)
    except InvalidInput as exc:
        _fail(exc.message, EXIT_INVALID)

    settings = Settings.from_env().with_overrides(preset=preset, device=device, dtype=dtype)
    try:
        result, path = _run_local(request, settings, output, quiet=quiet)
    except InvalidInput as exc:
        _fail(exc.message, EXIT_INVALID)
    except GenerationCancelled:
        _fail("cancelled", EXIT_INTERRUPTED)
    except FastSVDError as exc:
        _fail(exc.message)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)

    _print_result(result, path, as_json=as_json)


def _print_result(result: VideoOutput, path: Path, *, as_json: bool) -> None:
    if as_json:
        click.echo(result.model_dump_json())
    else:
        click.echo(f"wrote {path}  seed={result.seed}")


def _remote(call: Callable[[], T]) -> T:
    """Run a server call; its failures become one line and an exit code."""
    try:
        return call()
    except cli_remote.RemoteError as exc:
        _fail(exc.message, EXIT_INVALID if exc.invalid else EXIT_FAILED)
    except InvalidInput as exc:
        _fail(exc.message, EXIT_INVALID)
    except KeyboardInterrupt:
        _fail("interrupted (the request was cancelled)", EXIT_INTERRUPTED)


def _run_local(
    request: TextToVideoInput | ImageToVideoInput,
    settings: Settings,
    output: str | None,
    *,
    quiet: bool,
) -> tuple[VideoOutput, Path]:
    # Heavy imports here, so `fastsvd --help` and input errors answer at once.
    from fastsvd.pipeline.quiet import quiet_libraries

    quiet_libraries()  # before the model libraries load, which is when they talk most

    from fastsvd import media
    from fastsvd.cli_progress import StageProgress
    from fastsvd.pipeline import compile
    from fastsvd.pipeline.core import load_pipeline
    from fastsvd.pipeline.device import choose
    from fastsvd.pipeline.hooks import Hooks
    from fastsvd.pipeline.presets import PRESETS

    if settings.preset not in PRESETS:
        raise InvalidInput("preset", f"unknown preset; use one of {', '.join(PRESETS)}")
    seed = resolve_seed(request.seed)
    placement = choose(settings.device, settings.dtype)
    with StageProgress(enabled=not quiet) as progress, _cancel_on_interrupt() as cancelled:
        progress.note(f"loading {settings.preset} on {placement}")
        pipeline = load_pipeline(
            PRESETS[settings.preset],
            placement,
            video_model=settings.video_model,
            first_frame_model=settings.first_frame_model,
            with_first_frame=isinstance(request, TextToVideoInput),
            compile=compile.parse(settings.compile, placement.device),  # on the request itself
        )
        hooks = Hooks(on_step=progress.on_step, should_cancel=cancelled.is_set)
        if isinstance(request, TextToVideoInput):
            video = pipeline.text_to_video(request, seed, hooks)
        else:
            picture = media.decode_data_uri_image(request.image_url)
            video = pipeline.image_to_video(picture, request, seed, hooks)
        data = pipeline.to_mp4(video, hooks)
    path = Path(output or f"fastsvd-{seed}.mp4").resolve()
    path.write_bytes(data)
    file = File(
        url=path.as_uri(),
        content_type=c.VIDEO_CONTENT_TYPE,
        file_name=path.name,
        file_size=len(data),
    )
    return VideoOutput(video=file, seed=seed), path


def _settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env().with_overrides(**overrides)
    except ValueError as exc:
        _fail(f"settings: {exc}", EXIT_INVALID)


@main.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port (default 8000).")
@click.option("--workers", type=int, help="Worker processes (default: one per GPU, or one).")
@click.option("--preset", help="Models: svd-xt-1.1 (default), svd-xt, or tiny.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Database and files.")
@click.option("--no-auth", is_flag=True, help="No API keys (only on a loopback address).")
def serve(
    host: str | None,
    port: int | None,
    workers: int | None,
    preset: str | None,
    data_dir: str | None,
    no_auth: bool,
) -> None:
    """Run the fal-compatible API and its workers."""
    from fastsvd.logs import configure
    from fastsvd.serve import serve as run_service

    configure()
    settings = _settings(
        host=host,
        port=port,
        workers=workers,
        preset=preset,
        data_dir=Path(data_dir) if data_dir else None,
        auth=False if no_auth else None,
    )
    try:
        code = run_service(settings)
    except FastSVDError as exc:
        _fail(exc.message)
    sys.exit(code)


@main.command()
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option("--preset", help="Models: svd-xt-1.1 (default), svd-xt, or tiny.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Database and files.")
def worker(burst: bool, preset: str | None, data_dir: str | None) -> None:
    """Run one worker: load the model, then run queued jobs one at a time."""
    from fastsvd.api.services import Services
    from fastsvd.logs import configure
    from fastsvd.runner import make_runner
    from fastsvd.serve import EXIT_MODEL_NOT_AVAILABLE
    from fastsvd.worker import Worker, WorkerServices, image_loader

    configure()
    settings = _settings(preset=preset, data_dir=Path(data_dir) if data_dir else None)
    services = Services.from_settings(settings)
    loader = image_loader(
        services.files, services.storage, allow_private=settings.allow_private_urls
    )
    runner = make_runner(settings, loader)
    worker = Worker(WorkerServices.from_services(services), runner)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # SIGTERM (and a first Ctrl-C): finish the current job, then exit. A second Ctrl-C
        # stops the job at its next step and hands it back to the queue.
        if signum == signal.SIGINT and worker.stopping.is_set():
            worker.abort.set()
        worker.stopping.set()
        worker.listener.wake()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.serve(burst=burst)
    except ModelNotAvailable as exc:
        _fail(exc.message, EXIT_MODEL_NOT_AVAILABLE)
    except FastSVDError as exc:
        _fail(exc.message)


@main.command()
def webhooks() -> None:
    """Deliver webhooks of finished requests (fastsvd serve runs this for you)."""
    import threading

    from fastsvd.api.services import Services
    from fastsvd.logs import configure
    from fastsvd.store.webhooks import WebhookOutbox
    from fastsvd.webhooks import Deliverer

    configure()
    settings = _settings()
    services = Services.from_settings(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    signal.signal(signal.SIGINT, lambda _s, _f: stop.set())
    Deliverer(WebhookOutbox(services.db), settings).serve(stop)


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


def _key_store() -> Any:
    from fastsvd.api.services import Services

    return Services.from_settings(_settings()).keys


@keys.command("create")
@click.option("--name", default="", help="A label for the key.")
@click.option("--admin", is_flag=True, help="An admin key (can manage keys).")
def keys_create(name: str, admin: bool) -> None:
    """Make a key and print it (only now: just its hash is stored)."""
    from fastsvd.store.keys import Scope

    key, _info = _key_store().create(name, Scope.admin if admin else Scope.user)
    click.echo(key)


@keys.command("list")
def keys_list() -> None:
    """Every key: id, scope, name, state (never the secret)."""
    for info in _key_store().list():
        state = "revoked" if info.revoked_at else "live"
        click.echo(f"{info.key_id}  {info.scope:5s}  {state:7s}  {info.name}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke KEY_ID at once."""
    if not _key_store().revoke(key_id):
        _fail(f"key_id: no live key {key_id}", EXIT_INVALID)
    click.echo(f"revoked {key_id}")


@keys.command("webhook-secret")
@click.argument("key_id")
def keys_webhook_secret(key_id: str) -> None:
    """The secret that signs KEY_ID's webhooks (Standard Webhooks, HMAC-SHA256)."""
    for info in _key_store().list():
        if info.key_id == key_id:
            click.echo(info.webhook_secret)
            return
    _fail(f"key_id: no key {key_id}", EXIT_INVALID)


# --- against a server ----------------------------------------------------------------------


@main.command()
@click.argument("prompt", required=False)
@_input_options
@_server_options
@click.option("--json", "as_json", is_flag=True, help="Print the submit answer as JSON.")
def submit(
    prompt: str | None,
    image: str | None,
    url: str,
    key: str | None,
    as_json: bool,
    **given: str | None,
) -> None:
    """Queue PROMPT (or --image) on a server; prints the request id."""
    fields = _fields(**given)

    def call() -> str:
        with cli_remote.connected(url, key) as client:
            application, arguments = cli_remote.request_of(
                client, fields, prompt=prompt, image=image
            )
            return client.submit(application, arguments).request_id

    request_id = _remote(call)
    if as_json:
        click.echo(json.dumps({"request_id": request_id}))
    else:
        click.echo(request_id)


@main.command()
@click.argument("request_id")
@_server_options
@click.option("--logs", is_flag=True, help="Print the request's log lines too.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(request_id: str, url: str, key: str | None, logs: bool, as_json: bool) -> None:
    """Where REQUEST_ID stands: queued (and its position), running, or completed."""

    def call() -> Any:
        with cli_remote.connected(url, key) as client:
            return client.status(cli_remote.T2V, request_id, with_logs=logs)

    current = _remote(call)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(current) | {"status": type(current).__name__}))
        return
    if isinstance(current, Queued):
        click.echo(f"queued: {current.position} ahead")
    elif isinstance(current, InProgress):
        click.echo("in progress")
    elif current.error is not None:
        click.echo(f"completed with {current.error_type}: {current.error}")
    else:
        click.echo(f"completed in {current.metrics.get('inference_time', 0):.1f} s")
    for line in getattr(current, "logs", None) or []:
        click.echo(f"  {line.get('message')}")


@main.command()
@click.argument("request_id")
@_server_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Download the MP4 here.")
@click.option("--json", "as_json", is_flag=True, help="Print the fal output object as JSON.")
def result(request_id: str, url: str, key: str | None, output: str | None, as_json: bool) -> None:
    """The output of a finished REQUEST_ID (with -o, the video downloaded)."""

    def call() -> tuple[VideoOutput, Path | None]:
        with cli_remote.connected(url, key) as client:
            got = client.result(cli_remote.T2V, request_id)
            return got, cli_remote.save(client, got, output) if output else None

    got, path = _remote(call)
    if as_json or path is None:
        click.echo(got.model_dump_json())
    else:
        click.echo(f"wrote {path}  seed={got.seed}")


@main.command()
@click.argument("request_id")
@_server_options
def cancel(request_id: str, url: str, key: str | None) -> None:
    """Cancel REQUEST_ID: a queued request never runs, a running one stops at its next step."""

    def call() -> str:
        with cli_remote.connected(url, key) as client:
            return client.cancel(cli_remote.T2V, request_id)

    outcome = _remote(call)
    click.echo(outcome.lower().replace("_", " "))
    if outcome != "CANCELLATION_REQUESTED":
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("request_id")
@_server_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Download the MP4 here.")
@click.option("--json", "as_json", is_flag=True, help="Print the fal output object as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def watch(
    request_id: str, url: str, key: str | None, output: str | None, as_json: bool, quiet: bool
) -> None:
    """Follow REQUEST_ID with progress bars to its end, then download it (-o) or print it."""

    def call() -> tuple[VideoOutput, Path | None]:
        with cli_remote.connected(url, key) as client:
            final = cli_remote.follow(client, cli_remote.T2V, request_id, quiet=quiet)
            got = cli_remote.finish(client, cli_remote.T2V, request_id, final)
            return got, cli_remote.save(client, got, output) if output else None

    got, path = _remote(call)
    if as_json or path is None:
        click.echo(got.model_dump_json())
    else:
        click.echo(f"wrote {path}  seed={got.seed}")


if __name__ == "__main__":
    main()
