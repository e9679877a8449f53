"""What every ``fastsvd`` command shares: the group, one-line errors and exit codes, the fal
input fields as options, and the job store's options with their environment fallbacks.

Errors are one line on stderr (``error: <field>: <message>``) with a non-zero exit code:
2 for bad input, 1 for anything else, 130 when interrupted. No traceback reaches the user.
"""

from __future__ import annotations

import functools
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from pydantic import ValidationError

from fastsvd import __version__
from fastsvd import constants as c
from fastsvd.endpoints import ENDPOINTS, Endpoint
from fastsvd.errors import FastSVDError
from fastsvd.pipeline.presets import FEW_STEP, STANDARD, Capability
from fastsvd.schema import VIDEO_SIZE_PRESETS, DeepCache, field_errors
from fastsvd.settings import Settings

if TYPE_CHECKING:
    from fastsvd.services import Services

T = TypeVar("T")
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _number(value: str | bool) -> object:
    """A number typed on the command line as one (the schema takes JSON numbers only); a
    flag's value as it is."""
    if isinstance(value, bool):
        return value
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastsvd")
def main() -> None:
    """fastsvd: self-hosted, fal-compatible text-to-video (SDXL first frame + SVD-XT)."""


def endpoint_of(*, image: bool, few_step: bool) -> Endpoint:
    """The endpoint the CLI's inputs ask for: a prompt or ``--image``, with ``--few-step``."""
    capability = Capability(FEW_STEP if few_step else STANDARD, text=not image)
    return next(e for e in ENDPOINTS if e.capability == capability)


def endpoints_help() -> str:
    """Each endpoint's fields and defaults, from the registry (``--help``'s epilog)."""
    lines = ["\b", "Endpoints (the options each takes; defaults after '='):"]
    for endpoint in ENDPOINTS:
        few_step = getattr(endpoint.capability, "family", None) == FEW_STEP
        chosen = "--few-step " if few_step else ""
        chosen += "--image" if endpoint.image_field else "PROMPT"
        fields = []
        for name, field in endpoint.input.model_fields.items():
            if field.is_required():
                continue
            default = field.get_default(call_default_factory=True)
            default = getattr(default, "value", default)
            bounds = [
                f"{getattr(m, attr)}"
                for m in field.metadata
                for attr in ("ge", "le")
                if getattr(m, attr, None) is not None
            ]
            shown = f"={default}" if default is not None else ""
            if name == "video_size" and default is not None:
                shown = f"={c.DEFAULT_VIDEO_SIZE}"
            elif isinstance(default, str) and len(default) > 20:
                shown = f"='{default[:17]}...'"
            if len(bounds) == 2 and name != "seed":
                shown += f" ({'-'.join(bounds)})"
            fields.append(f"{name}{shown}")
        lines.append(f"  {endpoint.id} ({chosen}):")
        lines += textwrap.wrap(
            ", ".join(fields), 76, initial_indent="    ", subsequent_indent="    "
        )
    return "\n".join(lines)


def input_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The fal input fields as options, shared by ``generate`` and ``submit``."""
    options = [
        click.option("--image", help="Animate this picture (a file or URL) instead of a prompt."),
        click.option(
            "--few-step",
            is_flag=True,
            help="The few-step family (fal-ai/fast-svd-lcm): 4 steps, no negative prompt, "
            "no DeepCache.",
        ),
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
            help=f"Video denoising steps; 1-{c.STEPS_MAX} (default {c.DEFAULT_STEPS}); "
            f"with --few-step 1-{c.FEW_STEP_STEPS_MAX} (default {c.DEFAULT_FEW_STEP_STEPS}).",
        ),
        click.option(
            "--deep-cache",
            help=f"Reuse deep U-Net features: {', '.join(d.value for d in DeepCache)} "
            "(default none).",
        ),
        click.option("--fps", help=f"Frames per second; 1-{c.FPS_MAX} (default {c.DEFAULT_FPS})."),
        click.option(
            "--num-frames",
            help=f"Frames of the video; {c.NUM_FRAMES_MIN}-{c.NUM_FRAMES_MAX} (default "
            f"{c.NUM_FRAMES}). Longer videos are chained segments of {c.NUM_FRAMES} frames "
            "(fastsvd's extension).",
        ),
        click.option(
            "--color-match/--no-color-match",
            default=None,
            help="Match each chained segment's colours to the first one's (default: on).",
        ),
        click.option(
            "--video-size",
            help=f"WIDTHxHEIGHT (multiples of 64) or one of {', '.join(VIDEO_SIZE_PRESETS)}.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def server_options(command: Callable[..., Any]) -> Callable[..., Any]:
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


def fields_of(endpoint: Endpoint, **given: str | bool | None) -> dict[str, Any]:
    """The input fields given on the command line, checked and typed by ``endpoint``'s schema;
    an option the endpoint has no field for is refused (the API would ignore it)."""
    fields: dict[str, Any] = {
        k: _parse_size(v) if k == "video_size" and isinstance(v, str) else _number(v)
        for k, v in given.items()
        if v is not None
    }
    for name in fields:
        if name not in endpoint.input.model_fields:
            fail(f"--{name.replace('_', '-')}: {endpoint.id} has no {name}", EXIT_INVALID)
    required = {"image_url": "data:,"} if endpoint.image_field else {"prompt": "-"}
    try:
        checked = endpoint.input.model_validate({**required, **fields})
    except ValidationError as exc:
        field, message = field_errors(exc)[0]
        fail(f"{field}: {message}", EXIT_INVALID)
    return checked.model_dump(mode="json", include=set(fields))


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env().with_overrides(**overrides)
    except ValueError as exc:
        fail(f"settings: {exc}", EXIT_INVALID)


def open_services(settings: Settings, *, wait: bool = False) -> Services:
    """The stores ``settings`` name; a store that is misconfigured, or down (unless ``wait``, for
    a long-running process), ends the command with the reason and no traceback."""
    from fastsvd.services import Services

    try:
        return Services.from_settings(settings, wait=wait)
    except FastSVDError as exc:
        fail(exc.message)


def store_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Where the job store is: the same two options on every command that opens it.

    The command gets one ``store`` argument, the settings they override; unset options fall
    back to ``FASTSVD_DATA_DIR`` and ``FASTSVD_DATABASE_URL`` (read by ``Settings.from_env``).
    """

    @functools.wraps(command)
    def with_store(*args: Any, data_dir: str | None, database_url: str | None, **kw: Any) -> Any:
        store = {"data_dir": Path(data_dir) if data_dir else None, "database_url": database_url}
        return command(*args, store=store, **kw)

    with_store = click.option(
        "--database-url",
        metavar="URL",
        help="The job store: postgresql://user:pass@host/db or sqlite:///path "
        "(or FASTSVD_DATABASE_URL; default: SQLite in the data folder).",
    )(with_store)
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        help="Database and files (or FASTSVD_DATA_DIR; default ./data).",
    )(with_store)


def store_name(settings: Settings) -> str:
    """The job store's database as a user can recognise it, without its password."""
    from sqlalchemy.engine import make_url

    return make_url(settings.db_url).render_as_string(hide_password=True)
