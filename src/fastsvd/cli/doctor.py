"""``fastsvd doctor``: what an operator runs first. No GPU, no weights and no network needed
(``--online`` asks the hub about the missing models' repos)."""

from __future__ import annotations

from pathlib import Path

import click

from fastsvd.cli.common import EXIT_FAILED, main
from fastsvd.endpoints import configured
from fastsvd.errors import CannotRunHere, FastSVDError
from fastsvd.settings import Settings


@main.command()
@click.option("--preset", help="Models: svd-xt-1.1 (default), svd-xt, or tiny.")
@click.option("--online", is_flag=True, help="Also ask the Hugging Face hub about missing repos.")
def doctor(preset: str | None, online: bool) -> None:
    """Check this machine for serving: the GPU and driver, torch and CUDA, each endpoint's
    weights (and how to download the missing ones), HF_TOKEN, the memory plan, the compile cache.
    Exits 0 when everything needed is there, 1 otherwise."""
    from fastsvd.pipeline.quiet import quiet_libraries

    quiet_libraries()
    from fastsvd.pipeline import weights
    from fastsvd.pipeline.device import Placement, choose, probe
    from fastsvd.pipeline.presets import PRESETS, models_of
    from fastsvd.runner import memory_plan

    try:
        settings = Settings.from_env().with_overrides(preset=preset)
        registry = configured(settings)
    except (ValueError, FastSVDError) as exc:
        raise click.ClickException(str(getattr(exc, "message", exc))) from exc
    if settings.preset not in PRESETS:
        raise click.ClickException(f"preset: unknown preset; use one of {', '.join(PRESETS)}")
    ok = True
    real = PRESETS[settings.preset].real

    # 1. the platform
    platform = probe()
    click.echo(f"platform: {platform.describe()}")
    if not platform.cuda_usable:
        click.echo(f"  cause: {platform.why_no_cuda()}")
    try:
        placement = choose(settings.device, settings.dtype, real=real, platform=platform)
        click.echo(f"  runs on: {placement}")
    except CannotRunHere as exc:
        click.echo(f"  cannot serve preset {settings.preset}: {exc.message}")
        placement, ok = None, False

    # 2. the weights, per endpoint
    report = weights.check(settings, registry.capabilities())
    click.echo(f"weights (preset {settings.preset}):")
    for endpoint in registry:
        needed = weights.check(settings, [endpoint.capability])
        state = "ready" if needed.complete else f"{len(needed.missing)} missing"
        click.echo(f"  {endpoint.id}: {state}")
    for presence in report.present:
        click.echo(f"  present: {presence.line()}")
    for presence in report.missing:
        click.echo(f"  missing: {presence.line()}")
    ok = ok and report.complete
    token = "set" if weights.token_set() else "not set"
    click.echo(f"HF_TOKEN: {token}")
    for model in weights.manifest(PRESETS[settings.preset]).values():
        if model.gated:
            click.echo(f"  {model.repo} is gated: accept its licence at {model.page}")
    if online:
        for presence in report.missing:
            click.echo(f"  hub: {_ask_hub(presence.requirement.model.repo)}")

    # 3. the memory plan, for this GPU (or FASTSVD_GPU_MEMORY_GB's)
    import torch

    endpoints = {e.id: models_of([e.capability]) for e in registry}
    if placement is None and settings.gpu_memory_gb is not None:
        placement = Placement(torch.device("cuda"), torch.bfloat16)  # the plan of such a card
    if placement is not None:
        try:
            plan = memory_plan(
                settings, placement, platform.total_bytes, endpoints,
                explicit=bool(settings.endpoints),
            )  # fmt: skip
            click.echo(f"memory plan: {plan.describe()}")
        except FastSVDError as exc:
            click.echo(f"memory plan: {exc.message}")
            ok = False
    else:
        click.echo("memory plan: none without a GPU (FASTSVD_GPU_MEMORY_GB=24 shows a card's)")

    # 4. the compile cache
    click.echo(f"compile cache: {_compile_cache(settings.data_dir / 'compile-cache')}")
    if not ok:
        raise SystemExit(EXIT_FAILED)


def _compile_cache(folder: Path) -> str:
    if not folder.is_dir():
        return f"none yet at {folder}: the first start serves eagerly and compiles between jobs"
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    warmed = len(list(folder.glob("warmed-*")))
    done = f"{warmed} warmed-up configuration{'s' if warmed != 1 else ''}"
    return f"{folder}: {size / 1e6:.0f} MB, {done} (a restart with one of them is ready compiled)"


def _ask_hub(repo: str) -> str:
    """Whether this machine's token can read ``repo`` (one call to the hub)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    from fastsvd.pipeline import weights

    if weights.hub_offline():
        return f"{repo}: not asked (HF_HUB_OFFLINE is on)"
    try:
        HfApi().auth_check(repo)
    except GatedRepoError:
        return f"{repo}: gated, and this token has no access yet (accept the licence)"
    except (HfHubHTTPError, OSError) as exc:
        return f"{repo}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return f"{repo}: readable"
