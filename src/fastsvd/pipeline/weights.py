"""What each preset's models need on disk, whether it is there, and how to fetch the rest.

The manifest names, for every model a preset loads, its Hugging Face repo, whether the repo is
gated (and the page where its licence is accepted), and the files fastsvd reads: the configs and
tokenizers, and per component the fp16 variant weights (the released repos also hold fp32,
ONNX and OpenVINO copies, which are never needed). ``download_command`` gives the minimal
``hf download`` for a model; ``check`` says which of the models a worker's endpoints need are
present (a local folder or file, or the Hugging Face cache) and which are missing, with the
command for each. No torch here: ``fastsvd doctor`` and start-up checks stay fast.

Download sizes are the parameter counts of the bundled configs (``pipeline/configs``, counted
with diffusers 0.42 / transformers 5.23) times the bytes of the file's dtype; a safetensors
header adds under 1 MB per file.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fastsvd.errors import ModelNotAvailable
from fastsvd.hooks import Stage
from fastsvd.pipeline.presets import (
    MODEL_STAGES,
    PRESETS,
    Family,
    ModelPreset,
    env_var,
    model_key,
    models_of,
)
from fastsvd.settings import Settings, flag

FP16 = "fp16"  # the variant name diffusers and the repos use


@dataclass(frozen=True)
class Component:
    """One weights file of a model: ``<folder>/<stem>.fp16.safetensors`` as released (a folder
    holding ``<stem>.safetensors`` instead, e.g. saved in fp32, serves as well)."""

    folder: str  # "unet"; "" for a single-file model
    stem: str  # "diffusion_pytorch_model", "model"; the whole file name for a single file
    bytes: int  # the download size of the file fastsvd asks for

    @property
    def variant_file(self) -> str:
        """The released fp16 file's path in the repo (a single file: the file itself)."""
        if not self.folder:
            return self.stem
        return f"{self.folder}/{self.stem}.{FP16}.safetensors"

    @property
    def plain_file(self) -> str:
        """The same weights saved without a variant."""
        if not self.folder:
            return self.stem
        return f"{self.folder}/{self.stem}.safetensors"


@dataclass(frozen=True)
class ModelWeights:
    """One model a preset loads: where it is released and which of its files fastsvd reads."""

    key: str  # ``presets.model_key``: "video", "few_step_first_frame"...
    role: str  # for messages: "video (SVD-XT 1.1)"
    env_var: str  # the setting that points it elsewhere
    repo: str  # "owner/name" on the Hugging Face hub
    gated: bool  # the licence must be accepted on ``page`` and HF_TOKEN set
    configs: tuple[str, ...]  # small files (configs, tokenizers), as ``hf download`` patterns
    components: tuple[Component, ...]  # a single-file model has one, with no folder

    @property
    def page(self) -> str:
        """The model page, where a gated model's licence is accepted."""
        return f"https://huggingface.co/{self.repo}"

    @property
    def single_file(self) -> bool:
        return len(self.components) == 1 and not self.components[0].folder

    def bytes(self, components: Iterable[str] | None = None) -> int:
        """The download size of ``components`` (folder names; None: all)."""
        return sum(c.bytes for c in self.select(components))

    def select(self, components: Iterable[str] | None = None) -> tuple[Component, ...]:
        if components is None:
            return self.components
        wanted = set(components)
        return tuple(c for c in self.components if c.folder in wanted)


# fp16 bytes: parameters x 2 (see the module docstring)
_SVD_FILES = (
    Component("unet", "diffusion_pytorch_model", 1_524_623_082 * 2),
    Component("vae", "diffusion_pytorch_model", 97_742_847 * 2),
    Component("image_encoder", "model", 632_076_800 * 2),
)
_SDXL_FILES = (
    Component("unet", "diffusion_pytorch_model", 2_567_463_684 * 2),
    Component("vae", "diffusion_pytorch_model", 83_653_863 * 2),
    Component("text_encoder", "model", 123_060_480 * 2),
    Component("text_encoder_2", "model", 694_659_840 * 2),
)


def _configs(files: tuple[Component, ...], *extra: str) -> tuple[str, ...]:
    """A pipeline's small files: its index, each weighted component's config, the scheduler's,
    and ``extra`` (the feature extractor's, the tokenizers)."""
    each = (f"{c.folder}/config.json" for c in files)
    return ("model_index.json", *each, "scheduler/scheduler_config.json", *extra)


_SVD_CONFIGS = _configs(_SVD_FILES, "feature_extractor/preprocessor_config.json")
_SDXL_CONFIGS = _configs(_SDXL_FILES, "tokenizer/*", "tokenizer_2/*")
# the single files: AnimateLCM-SVD-xt is released in fp32 only (6,098,682,464 bytes, the size of
# an fp32 SVD-XT U-Net); SDXL-Lightning's U-Nets in fp16
_ANIMATE_LCM_BYTES = 1_524_623_082 * 4
_LIGHTNING_BYTES = 2_567_463_684 * 2

# the repos that need a licence accepted (and a token) before they download
GATED_REPOS = frozenset({"stabilityai/stable-video-diffusion-img2vid-xt-1-1"})


def _model(
    key: str, role: str, env_var: str, repo: str, configs: tuple[str, ...], *files: Component
) -> ModelWeights:
    return ModelWeights(key, role, env_var, repo, repo in GATED_REPOS, configs, files)


# the released models' names, by repo, for messages
_NAMES = {
    "stabilityai/stable-video-diffusion-img2vid-xt-1-1": "SVD-XT 1.1",
    "stabilityai/stable-video-diffusion-img2vid-xt": "SVD-XT",
    "stabilityai/stable-diffusion-xl-base-1.0": "SDXL",
    "wangfuyun/AnimateLCM-SVD-xt": "AnimateLCM-SVD-xt",
    "ByteDance/SDXL-Lightning": "SDXL-Lightning",
}
# a base family's whole pipelines, by stage: configs and files
_PIPELINE_FILES = {
    Stage.video: (_SVD_CONFIGS, _SVD_FILES),
    Stage.first_frame: (_SDXL_CONFIGS, _SDXL_FILES),
}
# a distilled family's single files, by stage: the size of the released file
_FILE_BYTES = {Stage.video: _ANIMATE_LCM_BYTES, Stage.first_frame: _LIGHTNING_BYTES}


def _role(family: Family, stage: Stage, repo: str, base: bool) -> str:
    """A model's name in messages: "video (SVD-XT 1.1)", "few-step first-frame (SDXL-Lightning)"."""
    label = "video" if stage is Stage.video else "first-frame"
    prefix = "" if base else f"{family.name} "
    return f"{prefix}{label} ({_NAMES.get(repo, repo)})"


def manifest(preset: ModelPreset) -> dict[str, ModelWeights]:
    """The released weights of ``preset``'s models, by key (none for the tiny preset): the base
    family's whole pipelines, the other families' single files."""
    models: dict[str, ModelWeights] = {}
    for family in preset.families:
        base = family is preset.base
        for stage in MODEL_STAGES:
            reference = family.model(stage)
            if reference is None:  # the tiny preset: built in code
                continue
            key = model_key(family.key, stage)
            repo = reference if base else _split_file_reference(reference)[0]
            role, setting = _role(family, stage, repo, base), env_var(family.key, stage)
            if base:
                configs, files = _PIPELINE_FILES[stage]
                models[key] = _model(key, role, setting, repo, configs, *files)
            else:
                file = _split_file_reference(reference)[2]
                component = Component("", file, _FILE_BYTES[stage])
                models[key] = _model(key, role, setting, repo, (), component)
    return models


def models_for(preset: ModelPreset, capabilities: Iterable[object]) -> dict[str, bool]:
    """The models a runner with ``capabilities`` loads: key -> whether it needs the model's own
    U-Net (False: only the components a distilled family's U-Net runs on)."""
    wanted = models_of(capabilities)
    needed: dict[str, bool] = {}
    for family in preset.families:
        for stage in (Stage.video, Stage.first_frame):
            if (family.key, stage) not in wanted:
                continue
            needed.setdefault(model_key(preset.base.key, stage), False)
            needed[model_key(family.key, stage)] = True
    return needed


@dataclass(frozen=True)
class Requirement:
    """One model a worker needs, where the settings say it is, and which of its parts."""

    model: ModelWeights
    reference: str  # the hub id, folder or file the settings name (default: the preset's)
    components: tuple[str, ...]  # the component folders needed ("" for a single file)

    @property
    def bytes(self) -> int:
        return self.model.bytes(self.components)


def requirements(settings: Settings, capabilities: Iterable[object]) -> list[Requirement]:
    """The models ``settings``' preset needs for ``capabilities`` (the endpoints'), each with
    the reference the settings give it."""
    preset = PRESETS[settings.preset]
    models = manifest(preset)
    needed: list[Requirement] = []
    for key, own_unet in models_for(preset, capabilities).items():
        model = models.get(key)
        if model is None:  # the tiny preset: built in code
            continue
        reference = settings.model_reference(key) or (
            model.repo if not model.single_file else f"{model.repo}/{model.components[0].stem}"
        )
        parts = tuple(
            c.folder for c in model.components if own_unet or c.folder != "unet" or not c.folder
        )
        needed.append(Requirement(model, reference, parts))
    return needed


def download_command(
    model: ModelWeights,
    components: Iterable[str] | None = None,
    *,
    repo: str | None = None,
    local_dir: str | Path | None = None,
) -> str:
    """The minimal ``hf download`` for ``model``: its configs and the fp16 files of
    ``components`` (None: all), from ``repo`` (default: the released one), into the Hugging Face
    cache or ``local_dir``.

    >>> download_command(manifest(PRESETS["svd-xt"])["video"], ["vae", "image_encoder"])
    "hf download stabilityai/stable-video-diffusion-img2vid-xt --include model_index.json ..."
    """
    files = [c.variant_file for c in model.select(components)]
    words = ["hf", "download", repo or model.repo]
    if model.single_file:
        words += files
    else:
        words += ["--include", *model.configs, *files]
    if local_dir is not None:
        words += ["--local-dir", str(local_dir)]
    return " ".join(shlex.quote(word) for word in words)


@dataclass(frozen=True)
class Presence:
    """Whether one required model is on disk: where, or the command that fetches it."""

    requirement: Requirement
    location: Path | None  # the folder or file found (a cache snapshot for hub ids); None: missing
    command: str  # the minimal ``hf download`` for what is needed
    reason: str  # why it counts as missing ("" when present)

    @property
    def present(self) -> bool:
        return self.location is not None

    def line(self) -> str:
        """One line for a person: the model, and where it is or how to get it."""
        r = self.requirement
        if self.location is not None:
            return f"{r.model.role}: {self.location}"
        gated = (
            f" (gated: accept its licence at {r.model.page}, then set HF_TOKEN)"
            if r.model.gated and r.reference == _default_reference(r.model)
            else ""
        )
        size = f"{r.bytes / 1e9:.1f} GB"
        return (
            f"{r.model.role} '{r.reference}' is missing ({self.reason}); {size}: "
            f"{self.command}{gated}"
        )


@dataclass(frozen=True)
class WeightsReport:
    """Which of the models a worker needs are present and which are missing."""

    present: list[Presence]
    missing: list[Presence]

    @property
    def complete(self) -> bool:
        return not self.missing

    def message(self) -> str:
        """One line per missing model with its download command ("" when nothing is missing)."""
        return "\n".join(p.line() for p in self.missing)

    def error(self) -> ModelNotAvailable:
        """The error a worker that cannot fetch weights stops with: "weights missing", a line
        per missing model with its command, and what else can be done."""
        env_vars = ", ".join(dict.fromkeys(p.requirement.model.env_var for p in self.missing))
        return ModelNotAvailable(
            "model weights are missing and offline mode is on (HF_HUB_OFFLINE=1):\n"
            f"{self.message()}\n"
            f"Download them, or set {env_vars} to local folders or files; or try everything "
            "without weights on the tiny preset (--preset tiny). `fastsvd doctor` checks it all."
        )


def check(settings: Settings, capabilities: Iterable[object]) -> WeightsReport:
    """Which models ``capabilities`` (the endpoints') need are present, as local
    folders or files or in the Hugging Face cache (``HF_HOME``/``HF_HUB_CACHE``), and which
    are missing. Nothing is downloaded and the hub is not asked."""
    present: list[Presence] = []
    missing: list[Presence] = []
    for requirement in requirements(settings, capabilities):
        presence = locate(requirement)
        (present if presence.present else missing).append(presence)
    return WeightsReport(present, missing)


def locate(requirement: Requirement) -> Presence:
    """Where ``requirement``'s files are: its folder or file, else the hub cache."""
    model, reference = requirement.model, requirement.reference
    local = Path(reference).expanduser()
    if model.single_file:
        default = model.components[0].stem
        if local.is_file():
            return Presence(requirement, local, "", "")
        if local.is_dir():
            found = local / default
            if found.is_file():
                return Presence(requirement, found, "", "")
            command = download_command(model, repo=model.repo, local_dir=local)
            return Presence(requirement, None, command, f"{found} does not exist")
        if not _is_repo_id("/".join(reference.split("/")[:2])):
            command = download_command(model)
            return Presence(requirement, None, command, f"no file or folder {reference}")
        repo, _, file = _split_file_reference(reference, default)
        command = download_command(
            _model(model.key, model.role, model.env_var, repo, (), Component("", file, 0))
        )
        cached = _cached(repo, file)
        if cached is not None:
            return Presence(requirement, cached, command, "")
        return Presence(requirement, None, command, "not in the Hugging Face cache")
    if local.is_dir():
        command = download_command(model, requirement.components, local_dir=local)
        lacking = _missing_in_folder(local, model, requirement.components)
        if lacking:
            return Presence(requirement, None, command, f"{local} has no {lacking}")
        return Presence(requirement, local, command, "")
    command = download_command(model, requirement.components, repo=reference)
    if not _is_repo_id(reference):
        return Presence(requirement, None, command, f"no folder {reference}")
    index = _cached(reference, "model_index.json")
    if index is None:
        return Presence(
            requirement, None, command, "model_index.json not in the Hugging Face cache"
        )
    for component in model.select(requirement.components):
        if not (
            _cached(reference, component.variant_file) or _cached(reference, component.plain_file)
        ):
            reason = f"{component.folder} not in the Hugging Face cache"
            return Presence(requirement, None, command, reason)
    return Presence(requirement, index.parent, command, "")  # the cache's snapshot folder


def _missing_in_folder(folder: Path, model: ModelWeights, components: Iterable[str]) -> str:
    """The first file of ``components`` that ``folder`` lacks ("" when none): the model index,
    and per component its weights in any form ``from_pretrained`` reads (fp16 variant or
    plain, whole or sharded)."""
    if not (folder / "model_index.json").is_file():
        return "model_index.json"
    for component in model.select(components):
        part = folder / component.folder
        if not any(part.glob(f"{component.stem}*.safetensors*")):
            return f"{component.folder} weights ({component.variant_file})"
    return ""


def _cached(repo: str, file: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, file)
    return Path(found) if isinstance(found, str) else None


def _is_repo_id(reference: str) -> bool:
    parts = reference.split("/")
    return len(parts) == 2 and all(parts) and not reference.startswith((".", "~"))


def _split_file_reference(reference: str, default_file: str = "") -> tuple[str, str, str]:
    """``owner/name[/file]`` -> (repo, "/", file) (file: ``default_file`` when absent)."""
    parts = reference.split("/")
    return "/".join(parts[:2]), "/", "/".join(parts[2:]) or default_file


def _default_reference(model: ModelWeights) -> str:
    if model.single_file:
        return f"{model.repo}/{model.components[0].stem}"
    return model.repo


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids downloads."""
    try:
        return flag(os.environ.get("HF_HUB_OFFLINE")) is True
    except ValueError:  # huggingface_hub reads any other value as off too
        return False


def token_set() -> bool:
    """Whether a Hugging Face token is configured (HF_TOKEN or ``hf auth login``)."""
    if os.environ.get("HF_TOKEN"):
        return True
    from huggingface_hub import get_token

    return get_token() is not None
