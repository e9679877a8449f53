"""Loading the models: ``load_pipeline`` loops over a preset's families and stages and reads
each model from a Hugging Face id, a local folder, or the Hugging Face cache (tiny: built in code).

A hub id is first resolved to a folder: ``huggingface_hub`` finds its snapshot in the cache
(``HF_HOME`` / ``HF_HUB_CACHE``) or downloads it, unless ``HF_HUB_OFFLINE=1``, fetching only the
files the weights manifest names (``pipeline/weights.py``: configs and fp16 weights; a repo
without fp16 files gives its plain ones). Then every component is loaded on its own, straight
to the device and dtype it runs in: the fp16 variant files wherever they are there (folders
too), with ``low_cpu_mem_usage`` (weights go into an empty model, tensor by tensor), so the host
holds one component at a time, not the whole pipeline. A single-file U-Net (AnimateLCM,
SDXL-Lightning) is read tensor by tensor into its target dtype and device
(``pipeline/single_file.py``).

Every way this can fail becomes one ``ModelNotAvailable`` naming the model and saying what to
do: a gated repo says where to accept its licence, a missing one gives the minimal
``hf download`` command.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import (
    DiffusionPipeline,
    EulerDiscreteScheduler,
    ModelMixin,
    StableDiffusionXLPipeline,
    StableVideoDiffusionPipeline,
    UNet2DConditionModel,
    UNetSpatioTemporalConditionModel,
)
from diffusers.configuration_utils import ConfigMixin

from fastsvd.errors import ModelNotAvailable
from fastsvd.hooks import Stage
from fastsvd.pipeline import model_configs as configs
from fastsvd.pipeline import optimize, tiny, weights
from fastsvd.pipeline.compile import CompileOptions
from fastsvd.pipeline.consistency import ConsistencySampler
from fastsvd.pipeline.core import VideoPipeline
from fastsvd.pipeline.device import Placement
from fastsvd.pipeline.memory import ALL_MODELS, Models, Plan, component_parts
from fastsvd.pipeline.presets import (
    MODEL_STAGES,
    SVD_XT_1_1,
    Family,
    ModelKey,
    ModelPreset,
    Sampler,
    env_var,
    model_key,
)
from fastsvd.pipeline.single_file import read_tensors, weights_file
from fastsvd.pipeline.weights import FP16, ModelWeights, download_command, hub_offline, token_set
from fastsvd.settings import Settings

P = TypeVar("P", bound=DiffusionPipeline)
M = TypeVar("M", bound=torch.nn.Module)

# where each component of a pipeline goes: one placement for all, or one per component name
# ("unet", "vae", "text_encoder", ...; a name not in the mapping goes to its "" entry)
Placements = Placement | Mapping[str, Placement]

TINY_HINT = "or try everything without weights on the tiny preset (--preset tiny)"


def placement_of(placements: Placements, component: str) -> Placement:
    """Where ``component`` goes."""
    if isinstance(placements, Placement):
        return placements
    return placements.get(component) or placements[""]


def load_pretrained(
    cls: type[P],
    model: str,
    placements: Placements,
    *,
    role: str,
    env_var: str,
    weights: ModelWeights | None = None,
    components: dict[str, Any] | None = None,
) -> P:
    """A ``cls`` from ``model`` (hub id or folder), each component loaded on its own onto its
    placement; fp16 variant files used wherever they are there. ``components`` are used as
    given and not loaded (e.g. a distilled U-Net in place of the repo's own). ``weights``, the
    model's manifest entry, names the files a hub id needs and the download command."""
    given = components or {}
    try:
        folder = resolve_folder(model, weights, skip=given)
        parts = {
            name: load_component(part_cls, folder, name, placement_of(placements, name))
            for name, part_cls in weighted_components(folder, skip=given)
        }
        pipe: P = cls.from_pretrained(folder, **parts, **given)
        return pipe
    except (OSError, ValueError) as exc:  # hub, cache and file errors all land here
        raise not_available(exc, role, model, env_var, weights, skip=given) from exc


def resolve_folder(model: str, weights: ModelWeights | None, skip: Iterable[str] = ()) -> Path:
    """The local folder of ``model``: itself, or a hub id's snapshot (cached or downloaded),
    holding the manifest's configs and, per component not in ``skip``, its fp16 files, else
    its plain ones."""
    local = Path(model).expanduser()
    if local.is_dir() or local.is_absolute() or model.startswith((".", "~")):
        if not (local / "model_index.json").is_file():
            raise FileNotFoundError(f"{local} has no model_index.json")
        return local
    from huggingface_hub import snapshot_download

    if weights is None:  # a repo the manifest does not know: all of it
        return Path(snapshot_download(model))

    needed = [c for c in weights.components if c.folder not in set(skip)]
    patterns = [*weights.configs, *(c.variant_file for c in needed)]
    folder = Path(snapshot_download(model, allow_patterns=patterns))
    plain = [c.plain_file for c in needed if not any((folder / c.folder).glob("*.safetensors"))]
    if plain:  # a repo released without fp16 files
        folder = Path(snapshot_download(model, allow_patterns=plain))
    return folder


def weighted_components(folder: Path, skip: Iterable[str] = ()) -> list[tuple[str, type[Any]]]:
    """The components of the pipeline in ``folder`` that hold weights, with their classes
    (from its ``model_index.json``), except those in ``skip``; the largest first."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    found: list[tuple[str, type[Any]]] = []
    for name, spec in index.items():
        if name.startswith("_") or name in set(skip) or not isinstance(spec, list):
            continue
        library, class_name = spec
        if library is None or not any((folder / name).glob("*.safetensors*")):
            continue
        found.append((name, getattr(importlib.import_module(library), class_name)))
    # the largest first: while a component loads, its file's pages count in the host's memory
    # too; loaded before the others, that peak is not stacked on what is already loaded
    return sorted(found, key=lambda part: -_weights_bytes(folder / part[0]))


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def load_component(cls: type[Any], folder: Path, name: str, placement: Placement) -> Any:
    """Component ``name`` of the pipeline in ``folder``, read straight into ``placement``'s
    dtype and device (the fp16 variant files where they are there)."""
    variant = FP16 if any((folder / name).glob(f"*.{FP16}.*")) else None
    device_map = None if placement.device.type == "cpu" else {"": placement.device}
    if issubclass(cls, ModelMixin):
        module = cls.from_pretrained(
            folder,
            subfolder=name,
            variant=variant,
            torch_dtype=placement.dtype,
            low_cpu_mem_usage=True,
            device_map=device_map,
        )
    else:  # transformers (text and image encoders)
        module = cls.from_pretrained(
            folder, subfolder=name, variant=variant, dtype=placement.dtype, device_map=device_map
        )
    return module


def load_single_file(
    cls: type[M],
    config: dict[str, Any],
    reference: str,
    placement: Placement,
    *,
    default_file: str,
    role: str,
    env_var: str,
    weights: ModelWeights | None = None,
) -> M:
    """A ``cls`` of ``config`` with the full state dict in ``reference``'s safetensors file,
    loaded strictly (every key of the architecture, no other), tensor by tensor into
    ``placement``'s dtype and device: the host never holds the file's own (fp32) copy whole."""
    try:
        path = weights_file(reference, default_file)
        state = dict(read_tensors(path, placement))
    except (OSError, ValueError) as exc:
        raise not_available(exc, role, reference, env_var, weights, default_file) from exc
    assert issubclass(cls, ConfigMixin)
    with torch.device("meta"):
        module = cls.from_config(config)
    try:  # assign: the file's tensors become the parameters, no second copy is made
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())
        raise ModelNotAvailable(
            f"{role} weights {path} do not fit {cls.__name__} ({_shorten(first, 200)}); "
            f"{env_var} must name a full state dict of that model"
        ) from exc
    left = [name for name, t in module.state_dict(keep_vars=True).items() if t.is_meta]
    if left:  # a tensor of the architecture the file did not give (not in its state dict)
        raise ModelNotAvailable(f"{role} weights {path} leave {left[0]} unset")
    loaded: M = module.to(device=placement.device)
    return loaded


def not_available(
    exc: BaseException,
    role: str,
    reference: str,
    env_var: str,
    weights: ModelWeights | None,
    default_file: str | None = None,
    skip: Iterable[str] = (),
) -> ModelNotAvailable:
    """The one error for weights that cannot be had, saying what a newcomer can do about it:
    for a gated repo, where to accept its licence (and to set HF_TOKEN, if none is set); else
    the minimal ``hf download`` command. The hub's last line of explanation is kept."""
    from huggingface_hub.errors import GatedRepoError

    reason = hub_reason(exc)
    parts = reference.split("/")
    repo = "/".join(parts[:2])
    if isinstance(exc, GatedRepoError):
        page = f"https://huggingface.co/{repo}"
        status = exc.response.status_code if exc.response is not None else None
        if status == 403 or (status is None and token_set()):
            return ModelNotAvailable(
                f"{role} model: your token has no access to {repo}: accept the licence at "
                f"{page} (the hub says: {reason})"
            )
        return ModelNotAvailable(
            f"{role} model {repo}: this model is gated: accept its licence at {page}, then set "
            f"HF_TOKEN (the hub says: {reason})"
        )
    local = Path(reference).expanduser()
    offline = hub_offline()
    on_hub = len(parts) >= 2 and all(parts) and not local.exists() and not local.is_absolute()
    if weights is not None:
        if weights.single_file:
            file = "/".join(parts[2:]) or default_file or weights.components[0].stem
            command = f"hf download {repo} {file}" if on_hub else download_command(weights)
        else:
            needed = [c.folder for c in weights.components if c.folder not in set(skip)]
            command = download_command(
                weights,
                needed,
                repo=repo if on_hub else None,
                local_dir=None if on_hub else local,
            )
        fetch = f"`{command}`"
    elif on_hub:
        fetch = f"`hf download {repo}{' ' + default_file if default_file else ''}`"
    else:
        fetch = "it"
    gated = (
        f" (gated: accept its licence at {weights.page}, then set HF_TOKEN)"
        if weights is not None and weights.gated and on_hub
        else ""
    )
    where = "a local .safetensors file or a folder holding it" if default_file else "a local folder"
    return ModelNotAvailable(
        f"{role} model '{reference}' is not available ({reason}). Download {fetch}{gated}"
        f"{', then run again; offline mode is on' if offline else ''}; or set {env_var} to "
        f"{where}; {TINY_HINT}."
    )


def hub_reason(exc: BaseException) -> str:
    """The hub's last line of explanation (not its "401 Client Error (Request ID...)" prefix),
    else the error's text on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return _shorten(lines[-1], 300)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# --- the loader: a preset's models, family by family and stage by stage ---------------------


@dataclass(frozen=True)
class _StageClasses:
    """How a stage's models load: its pipeline and U-Net classes, its name in messages, its
    released config, and its tiny equivalents."""

    pipeline: type[StableVideoDiffusionPipeline] | type[StableDiffusionXLPipeline]
    unet: type[UNetSpatioTemporalConditionModel] | type[UNet2DConditionModel]
    label: str  # "video", "first-frame"
    bundled_config: str  # the released model's config kept in pipeline/configs
    build_tiny: Callable[[], Any]
    tiny_unet_config: Callable[[], dict[str, Any]]
    build_tiny_unet: Callable[[], torch.nn.Module]  # a family's own U-Net, distinct weights


_STAGES = {
    Stage.video: _StageClasses(
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
        "video",
        configs.SVD_XT,
        tiny.build_video,
        tiny.video_unet_config,
        tiny.build_few_step_video_unet,
    ),
    Stage.first_frame: _StageClasses(
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
        "first-frame",
        configs.SDXL_BASE,
        tiny.build_first_frame,
        tiny.first_frame_unet_config,
        tiny.build_few_step_first_frame_unet,
    ),
}


def load_pipeline(
    preset: ModelPreset,
    placement: Placement,
    *,
    models: Models = ALL_MODELS,
    settings: Settings | None = None,
    optimizations: tuple[str, ...] = (),
    compile: CompileOptions | None = None,
    warm_up: bool = False,
    plan: Plan | None = None,
) -> VideoPipeline:
    """Load ``models`` (family, stage) of ``preset`` onto ``placement``. ``settings`` override
    where a model's weights are (``FASTSVD_<KEY>_MODEL``: a Hugging Face id or folder; for a
    distilled U-Net, a single file or its repo), a family's guidance, and the fps conditioning.

    ``plan`` (``pipeline/memory.py``) says which models wait on the CPU between stages, and
    the decode chunk; by default everything stays on ``placement``'s device. With ``compile``
    the models are compiled (eager until warmed up and swapped in: ``compile.py``), and with
    ``warm_up`` one short request per ``deep_cache`` level runs at the default size first.
    """
    settings = settings or Settings()
    released = weights.manifest(preset)
    loaded: dict[ModelKey, Any] = {}
    for stage in MODEL_STAGES:
        wanted = [f for f in preset.families if (f.key, stage) in models]
        if not wanted:
            continue
        base = preset.base
        base_model = settings.model_reference(model_key(base.key, stage)) or base.model(stage)
        # the base family's pipeline; loaded without its U-Net when only others need it
        components = None
        if base in wanted:
            components = loaded[(base.key, stage)] = _load_whole(
                stage, base, base_model, released, _placements(plan, placement, base.key, stage)
            )
        for family in wanted:
            if family is base:
                continue
            unet = _load_unet(
                stage, family, base_model, components, settings, released,
                _placements(plan, placement, family.key, stage),
            )  # fmt: skip
            if components is None:
                components = _load_whole(
                    stage, base, base_model, released,
                    _placements(plan, placement, family.key, stage), unet=unet,
                )  # fmt: skip
            loaded[(family.key, stage)] = assemble(stage, components, unet, family.sampler)
    families = {f.key: _guided(f, settings.guidance(f.key)) for f in preset.families}
    pipeline = VideoPipeline(preset, placement, loaded, families=families, plan=plan)
    pipeline.fps_conditioning = settings.fps_conditioning
    optimize.apply(pipeline.pipes(), optimizations)
    if compile is not None:
        pipeline.compile(compile)
    if warm_up:
        pipeline.warm_up()
    return pipeline


def _guided(family: Family, max_guidance: float | None) -> Family:
    """``family`` with its video's guidance ramp ending at ``max_guidance``, when set."""
    return family if max_guidance is None else replace(family, max_guidance_scale=max_guidance)


def _role(stage: Stage, family: Family, released: dict[str, ModelWeights]) -> str:
    """A model's name in messages: the manifest's ("video (SVD-XT 1.1)"), else its family's."""
    model = released.get(model_key(family.key, stage))
    return model.role if model is not None else f"{family.name} {_STAGES[stage].label}"


def _load_whole(
    stage: Stage,
    family: Family,
    model: str | None,
    released: dict[str, ModelWeights],
    placements: Placements,
    unet: torch.nn.Module | None = None,
) -> Any:
    """The whole pipeline of ``stage`` from ``model`` (None: tiny); with ``unet``, that U-Net in
    place of the repo's own (whose weights are then not read)."""
    classes = _STAGES[stage]
    if model is None:
        return classes.build_tiny()
    return load_pretrained(
        classes.pipeline,
        model,
        placements,
        role=_role(stage, family, released),
        env_var=env_var(family.key, stage),
        weights=released.get(model_key(family.key, stage)),
        components={} if unet is None else {"unet": unet},
    )


def _load_unet(
    stage: Stage,
    family: Family,
    base_model: str | None,
    base: Any,
    settings: Settings,
    released: dict[str, ModelWeights],
    placements: Placements,
) -> torch.nn.Module:
    """A distilled family's U-Net of ``stage``: a single file (None: tiny), loaded into the
    architecture of the base family's U-Net."""
    classes = _STAGES[stage]
    key = model_key(family.key, stage)
    reference = settings.model_reference(key) or family.model(stage)
    if reference is None:
        return classes.build_tiny_unet()
    config = (
        _unet_config(classes.unet, base, base_model, classes.bundled_config)
        if base_model
        else classes.tiny_unet_config()
    )
    # a folder holds the file the released preset names
    default = family.model(stage) or SVD_XT_1_1.family(family.key).model(stage) or reference
    return load_single_file(
        classes.unet,
        config,
        reference,
        placement_of(placements, "unet"),
        default_file=default.rsplit("/", 1)[-1],
        role=_role(stage, family, released),
        env_var=env_var(family.key, stage),
        weights=released.get(key),
    )


def assemble(stage: Stage, base: Any, unet: torch.nn.Module, sampler: Sampler) -> Any:
    """A pipeline of ``unet`` on the other components of ``base``, sampled by ``sampler``."""
    if stage is Stage.video:
        scheduler = ConsistencySampler() if sampler is Sampler.few_step else base.scheduler
        return StableVideoDiffusionPipeline(
            **{**base.components, "unet": unet, "scheduler": scheduler}
        )
    if sampler is Sampler.few_step:
        return lightning_pipeline(base, unet)
    return StableDiffusionXLPipeline(
        **{**base.components, "unet": unet},
        force_zeros_for_empty_prompt=base.config.force_zeros_for_empty_prompt,
        add_watermarker=False,
    )


def _placements(plan: Plan | None, placement: Placement, family: str, stage: Stage) -> Placements:
    """Where each component of a model loads: straight to the CPU when ``plan`` keeps its part
    there between stages, else to ``placement``; so no model passes through the GPU (or
    through host memory whole) on its way to where it waits."""
    offloaded = plan.offloaded if plan is not None else frozenset()
    cpu = Placement(torch.device("cpu"), placement.dtype)
    table = component_parts((family, stage))
    return {"": placement} | {
        component: cpu for component, part in table.items() if part in offloaded
    }


def lightning_pipeline(
    base: StableDiffusionXLPipeline, unet: UNet2DConditionModel
) -> StableDiffusionXLPipeline:
    """SDXL-Lightning: ``base``'s text encoders, tokenizers and VAE with the distilled ``unet``,
    sampled by Euler with trailing timestep spacing (the Lightning authors' setting)."""
    scheduler = EulerDiscreteScheduler.from_config(
        base.scheduler.config, timestep_spacing="trailing"
    )
    return StableDiffusionXLPipeline(
        **{**base.components, "unet": unet, "scheduler": scheduler},
        force_zeros_for_empty_prompt=base.config.force_zeros_for_empty_prompt,
        add_watermarker=False,  # a first frame is an input of the video model, not an output
    )


def _unet_config(
    cls: type[UNetSpatioTemporalConditionModel] | type[UNet2DConditionModel],
    loaded: StableVideoDiffusionPipeline | StableDiffusionXLPipeline | None,
    model: str,
    bundled: str,
) -> dict[str, Any]:
    """The architecture a distilled U-Net file is loaded into: that of the U-Net of ``model``
    (the loaded one's, else its config file), else the released model's config kept here."""
    if loaded is not None:
        return dict(loaded.unet.config)
    try:
        config: dict[str, Any] = cls.load_config(model, subfolder="unet")
        return config
    except (OSError, ValueError):  # loading the components next says what is missing
        return configs.load(bundled, "unet")
