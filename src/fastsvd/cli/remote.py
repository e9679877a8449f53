"""Talking to a server: ``fastsvd submit | status | result | cancel | watch``, and what
``fastsvd generate --server`` uses (submit, follow with progress bars, fetch, cancel). It speaks
to the server through ``fastsvd.client`` only.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import httpx

from fastsvd.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    T,
    endpoint_of,
    endpoints_help,
    fail,
    fields_of,
    input_options,
    main,
    server_options,
)
from fastsvd.cli.progress import StageProgress
from fastsvd.client import ClientError, Completed, InProgress, Queued, Status, SyncClient
from fastsvd.endpoints import ENDPOINTS, Endpoint
from fastsvd.errors import InvalidInput
from fastsvd.progress import parse_first_frame_line, parse_step_line
from fastsvd.schema import VideoOutput

# Request routes of any app find any request, so status, result and cancel use the first's.
ANY_ENDPOINT = ENDPOINTS.ids()[0]


@contextmanager
def connected(url: str | None, key: str | None) -> Iterator[SyncClient]:
    """A client; a refusal of the server (``ClientError``) or a network failure ends the
    command with one line."""
    client = SyncClient(url, key)
    try:
        yield client
    except ClientError as exc:
        fail(*refusal(exc))
    except httpx.HTTPError as exc:
        fail(f"cannot reach the server at {client.url}: {exc}")
    finally:
        client.close()


def refusal(exc: ClientError) -> tuple[str, int]:
    """What the command says about a refusal of the server, and its exit code: a field's error
    is invalid input, anything else a failure."""
    if exc.fields:
        field, message = exc.fields[0]
        return f"{field}: {message}", EXIT_INVALID
    if exc.status_code == 401:
        return "the server refused the key (set --key or FASTSVD_KEY)", EXIT_FAILED
    return str(exc).split(" ", 1)[-1], EXIT_FAILED  # without the status code


def image_url(client: SyncClient, image: str) -> str:
    """An ``image_url`` for ``image``: URLs and data: URIs as they are, local files uploaded."""
    if image.startswith(("http://", "https://", "data:")):
        return image
    path = Path(image)
    if not path.is_file():
        raise InvalidInput("image_url", f"no such file: {image}")
    return client.upload_file(path)


def follow(client: SyncClient, application: str, request_id: str, *, quiet: bool) -> Completed:
    """Watch a request to its end with a progress bar per stage; returns the final status."""
    with StageProgress(enabled=not quiet) as progress:
        shown = [0]  # log lines already reported

        def on_update(status: Status) -> None:  # called on each change only
            if isinstance(status, Queued):
                progress.note(f"queued: {status.position} ahead")
                for line in status.logs or []:  # why it waits; not lines of the run's log
                    progress.note(str(line.get("message", "")))
                return
            logs = status.logs if isinstance(status, InProgress | Completed) else None
            for line in (logs or [])[shown[0] :]:
                report(progress, str(line.get("message", "")))
            shown[0] = max(shown[0], len(logs or []))

        return client.wait(application, request_id, with_logs=True, on_queue_update=on_update)


def report(progress: StageProgress, message: str) -> None:
    step = parse_step_line(message)
    first_frame = parse_first_frame_line(message)
    if step is not None:
        progress.on_step(step)
    elif first_frame is not None:
        progress.note(f"first frame: {first_frame}")
    else:
        progress.note(message)


def finish(client: SyncClient, application: str, request_id: str, final: Completed) -> VideoOutput:
    """The output of a finished request; without one, the command ends saying why."""
    if final.error is not None:
        fail(f"{final.error_type or 'failed'}: {final.error}")
    return client.result(application, request_id)


def save(client: SyncClient, output: VideoOutput, path: str | None) -> Path:
    """Download the video to ``path`` (default: its file name in this folder)."""
    target = Path(path or output.video.file_name or "video.mp4").resolve()
    target.write_bytes(client.download(output.video.url))
    return target


def run_remote(
    url: str | None,
    key: str | None,
    endpoint: Endpoint,
    fields: dict[str, Any],
    *,
    prompt: str | None,
    image: str | None,
    output: str | None,
    quiet: bool,
    on_submitted: Callable[[str], None] | None = None,
) -> tuple[VideoOutput, Path]:
    """``fastsvd generate --server``: submit, follow, download."""
    with connected(url, key) as client:
        application, arguments = request_of(client, endpoint, fields, prompt=prompt, image=image)
        handle = client.submit(application, arguments)
        if on_submitted is not None:
            on_submitted(handle.request_id)
        try:
            final = follow(client, application, handle.request_id, quiet=quiet)
        except KeyboardInterrupt:
            client.cancel(application, handle.request_id)
            raise
        result = finish(client, application, handle.request_id, final)
        return result, save(client, result, output)


def request_of(
    client: SyncClient,
    endpoint: Endpoint,
    fields: dict[str, Any],
    *,
    prompt: str | None,
    image: str | None,
) -> tuple[str, dict[str, Any]]:
    """The endpoint id and the body for these CLI inputs."""
    if image is not None:
        return endpoint.id, {"image_url": image_url(client, image), **fields}
    return endpoint.id, {"prompt": prompt or "", **fields}


# --- the commands ----------------------------------------------------------------------


def remote_call(call: Callable[[], T]) -> T:
    """Run a server call (in ``connected``); its failures become one line and an exit code."""
    try:
        return call()
    except InvalidInput as exc:
        fail(exc.message, EXIT_INVALID)
    except KeyboardInterrupt:
        fail("interrupted (the request was cancelled)", EXIT_INTERRUPTED)


@main.command(epilog=endpoints_help())
@click.argument("prompt", required=False)
@input_options
@server_options
@click.option("--json", "as_json", is_flag=True, help="Print the submit answer as JSON.")
def submit(
    prompt: str | None,
    image: str | None,
    few_step: bool,
    url: str,
    key: str | None,
    as_json: bool,
    **given: str | bool | None,
) -> None:
    """Queue PROMPT (or --image) on a server; prints the request id."""
    endpoint = endpoint_of(image=image is not None, few_step=few_step)
    fields = fields_of(endpoint, **given)

    def call() -> str:
        with connected(url, key) as client:
            application, arguments = request_of(
                client, endpoint, fields, prompt=prompt, image=image
            )
            return client.submit(application, arguments).request_id

    request_id = remote_call(call)
    if as_json:
        click.echo(json.dumps({"request_id": request_id}))
    else:
        click.echo(request_id)


@main.command()
@click.argument("request_id")
@server_options
@click.option("--logs", is_flag=True, help="Print the request's log lines too.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(request_id: str, url: str, key: str | None, logs: bool, as_json: bool) -> None:
    """Where REQUEST_ID stands: queued (and its position), running, or completed."""

    def call() -> Any:
        with connected(url, key) as client:
            return client.status(ANY_ENDPOINT, request_id, with_logs=logs)

    current = remote_call(call)
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
@server_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Download the MP4 here.")
@click.option("--json", "as_json", is_flag=True, help="Print the fal output object as JSON.")
def result(request_id: str, url: str, key: str | None, output: str | None, as_json: bool) -> None:
    """The output of a finished REQUEST_ID (with -o, the video downloaded)."""

    def call() -> tuple[VideoOutput, Path | None]:
        with connected(url, key) as client:
            got = client.result(ANY_ENDPOINT, request_id)
            return got, save(client, got, output) if output else None

    show(*remote_call(call), as_json=as_json)


@main.command()
@click.argument("request_id")
@server_options
def cancel(request_id: str, url: str, key: str | None) -> None:
    """Cancel REQUEST_ID: a queued request never runs, a running one stops at its next step."""

    def call() -> str:
        with connected(url, key) as client:
            return client.cancel(ANY_ENDPOINT, request_id)

    outcome = remote_call(call)
    click.echo(outcome.lower().replace("_", " "))
    if outcome != "CANCELLATION_REQUESTED":
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("request_id")
@server_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Download the MP4 here.")
@click.option("--json", "as_json", is_flag=True, help="Print the fal output object as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def watch(
    request_id: str, url: str, key: str | None, output: str | None, as_json: bool, quiet: bool
) -> None:
    """Follow REQUEST_ID with progress bars to its end, then download it (-o) or print it."""

    def call() -> tuple[VideoOutput, Path | None]:
        with connected(url, key) as client:
            final = follow(client, ANY_ENDPOINT, request_id, quiet=quiet)
            got = finish(client, ANY_ENDPOINT, request_id, final)
            return got, save(client, got, output) if output else None

    show(*remote_call(call), as_json=as_json)


def show(got: VideoOutput, path: Path | None, *, as_json: bool) -> None:
    """A fetched output: where the video was written, or (with --json, or not downloaded) the
    fal output object."""
    if as_json or path is None:
        click.echo(got.model_dump_json())
    else:
        click.echo(f"wrote {path}  seed={got.seed}")


if __name__ == "__main__":
    main()
