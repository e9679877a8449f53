"""``fastsvd generate``: one video on this machine (or on a server with ``--server``)."""

from __future__ import annotations

import base64
import mimetypes
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import click
from pydantic import BaseModel, ValidationError

from fastsvd import constants as c
from fastsvd.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    endpoint_of,
    endpoints_help,
    fail,
    fields_of,
    input_options,
    main,
)
from fastsvd.cli.remote import remote_call, run_remote
from fastsvd.endpoints import Endpoint
from fastsvd.errors import FastSVDError, GenerationCancelled, InvalidInput
from fastsvd.schema import File, VideoOutput, field_errors, resolve_seed
from fastsvd.settings import Settings


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


@main.command(epilog=endpoints_help())
@click.argument("prompt", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the MP4.")
@input_options
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
    few_step: bool,
    server: str | None,
    key: str | None,
    preset: str | None,
    device: str | None,
    dtype: str | None,
    as_json: bool,
    quiet: bool,
    **given: str | bool | None,
) -> None:
    """Make a video from PROMPT (or from --image) on this machine, or on a server with
    --server, and write it as MP4."""
    endpoint = endpoint_of(image=image is not None, few_step=few_step)
    fields = fields_of(endpoint, **given)
    if server is not None:
        result, path = remote_call(
            lambda: run_remote(
                server,
                key,
                endpoint,
                fields,
                prompt=prompt,
                image=image,
                output=output,
                quiet=quiet,
            )
        )
        _print_result(result, path, as_json=as_json)
        return
    try:
        required = (
            {"image_url": _image_data_uri(image)} if image is not None else {"prompt": prompt or ""}
        )
        request = endpoint.input.model_validate({**required, **fields})
    except ValidationError as exc:
        field, message = field_errors(exc)[0]
        fail(f"{field}: {message}", EXIT_INVALID)
    except InvalidInput as exc:
        fail(exc.message, EXIT_INVALID)

    settings = Settings.from_env().with_overrides(preset=preset, device=device, dtype=dtype)
    try:
        result, path = _run_local(endpoint, request, settings, output, quiet=quiet)
    except InvalidInput as exc:
        fail(exc.message, EXIT_INVALID)
    except GenerationCancelled:
        fail("cancelled", EXIT_INTERRUPTED)
    except FastSVDError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)

    _print_result(result, path, as_json=as_json)


def _print_result(result: VideoOutput, path: Path, *, as_json: bool) -> None:
    if as_json:
        click.echo(result.model_dump_json())
    else:
        click.echo(f"wrote {path}  seed={result.seed}")


def _run_local(
    endpoint: Endpoint,
    request: BaseModel,
    settings: Settings,
    output: str | None,
    *,
    quiet: bool,
) -> tuple[VideoOutput, Path]:
    # Heavy imports here, so `fastsvd --help` and input errors answer at once.
    from fastsvd.pipeline.quiet import quiet_libraries

    quiet_libraries()  # before the model libraries load, which is when they talk most

    from fastsvd.cli.progress import StageProgress
    from fastsvd.hooks import Hooks
    from fastsvd.runner import ModelRunner, data_uri_only

    seed = resolve_seed(getattr(request, "seed", None))
    capability = endpoint.capability
    # the worker's runner, for this one request: the same models, optimizations and encoding
    # (compiled only with FASTSVD_COMPILE=1, on the request itself: no separate warm-up)
    runner = ModelRunner(
        settings, data_uri_only, {endpoint.id: capability}, explicit=True, serving=False
    )
    with StageProgress(enabled=not quiet) as progress, _cancel_on_interrupt() as cancelled:
        progress.note(f"loading {settings.preset} on {runner.placement}")
        runner.load()
        hooks = Hooks(on_step=progress.on_step, should_cancel=cancelled.is_set)
        data = runner.run(capability, request, seed, hooks)
    path = Path(output or f"fastsvd-{seed}.mp4").resolve()
    path.write_bytes(data)
    file = File(
        url=path.as_uri(),
        content_type=c.VIDEO_CONTENT_TYPE,
        file_name=path.name,
        file_size=len(data),
    )
    return VideoOutput(video=file, seed=seed), path
