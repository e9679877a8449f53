"""Model presets: which weights a worker loads, and the settings that go with them.

A preset holds families. A family is one way of running a request: a first-frame model with
its steps and guidance, a video model with its guidance ramp, and a sampler. A preset's first
family is whole pipelines (Hugging Face repos or folders); every other family is distilled
U-Nets (single safetensors files) run on the first family's other components: one VAE, image
encoder and text encoder pair, in memory once.

Everything else is named from the family and the stage: the model's key
(``model_key``: the weights manifest's, and the settings' ``FASTSVD_<KEY>_MODEL``), its U-Net's
part in the memory plan, its messages. No torch here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

from fastsvd import constants as c
from fastsvd.hooks import Stage

# the families, by key
STANDARD = "standard"  # SDXL base + SVD-XT, 20 steps (fal-ai/fast-svd)
FEW_STEP = "few_step"  # SDXL-Lightning + AnimateLCM-SVD-xt, 4 steps (fal-ai/fast-svd-lcm)
FAMILIES = (STANDARD, FEW_STEP)  # every preset's, in this order

# the stages that load models, first-frame first
MODEL_STAGES = (Stage.first_frame, Stage.video)

# a model of a preset: (family key, stage)
ModelKey = tuple[str, Stage]


class Sampler(enum.StrEnum):
    """How a family's models are sampled."""

    # each model's own scheduler, as its repo configures it (Euler for SDXL and SVD-XT)
    stock = "stock"
    # the distillations' own: the consistency sampler for the video (AnimateLCM), Euler with
    # trailing timestep spacing for the first frame (SDXL-Lightning)
    few_step = "few-step"


@dataclass(frozen=True)
class Family:
    """One family of models and how to run them.

    A model reference is a Hugging Face id or a local folder (the first family), or a single
    safetensors file: ``owner/name/file.safetensors``, a local file, or a folder holding the
    default file (the other families); None: built in code (tiny).
    """

    key: str  # STANDARD, FEW_STEP
    name: str  # for messages: "20-step"
    video_model: str | None
    first_frame_model: str | None
    first_frame_steps: int
    first_frame_guidance: float
    # the video's per-frame classifier-free guidance ramps from min (first frame) to max (last
    # frame); a max of 1.0 turns guidance off (one U-Net batch instead of two)
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0
    sampler: Sampler = Sampler.stock

    def model(self, stage: Stage) -> str | None:
        """The reference of the family's model of ``stage``."""
        return self.video_model if stage is Stage.video else self.first_frame_model


@dataclass(frozen=True)
class ModelPreset:
    """Families of models (the first one whole pipelines, the others U-Nets on its
    components) and what they share."""

    name: str
    description: str
    families: tuple[Family, ...]
    decode_chunk_size: int  # frames per temporal-VAE call: fewer saves memory, more flickers
    num_frames: int = c.NUM_FRAMES
    # the fps id the video model is conditioned on (the first of SVD's added time ids): the one
    # it was fine-tuned at. SVD-XT 1.1 was fine-tuned at a fixed 6 ("6 FPS, motion bucket 127";
    # its card: "performance outside of the fixed conditioning settings may vary"); 6 is also
    # the default of Stability's own SVD sampling script (fps_id=6). A request's fps sets the
    # MP4's playback rate; FASTSVD_FPS_CONDITIONING=request conditions on its fps - 1 instead.
    fps_id: int = 6

    @property
    def base(self) -> Family:
        """The family of whole pipelines, whose components the others run on."""
        return self.families[0]

    def family(self, key: str) -> Family:
        """The family ``key``; an error naming the preset when it has none."""
        for family in self.families:
            if family.key == key:
                return family
        raise ValueError(f"preset {self.name} has no {key} family")

    @property
    def real(self) -> bool:
        """Whether its models are released weights (else built in code: tiny)."""
        return self.base.video_model is not None


def model_key(family: str, stage: Stage) -> str:
    """The name of a model: ``video``, ``first_frame`` for the standard family's, else prefixed
    with the family's key (``few_step_video``). The weights manifest's key, the stem of its
    setting (``FASTSVD_FEW_STEP_VIDEO_MODEL``) and of its U-Net's part (``few_step_video_unet``)."""
    return str(stage) if family == STANDARD else f"{family}_{stage}"


def env_var(family: str, stage: Stage) -> str:
    """The setting that says where a model's weights are."""
    return f"FASTSVD_{model_key(family, stage).upper()}_MODEL"


@dataclass(frozen=True)
class Capability:
    """What a runner needs to run an endpoint: a family's video model, and with ``text`` its
    first-frame model too (text-to-video)."""

    family: str
    text: bool

    @property
    def name(self) -> str:
        """``text_to_video``, ``few_step_image_to_video``..."""
        prefix = "" if self.family == STANDARD else f"{self.family}_"
        return f"{prefix}{'text' if self.text else 'image'}_to_video"

    @property
    def models(self) -> frozenset[ModelKey]:
        """The models it runs."""
        stages = MODEL_STAGES if self.text else (Stage.video,)
        return frozenset((self.family, stage) for stage in stages)

    def __str__(self) -> str:
        return self.name


def models_of(capabilities: Iterable[object]) -> frozenset[ModelKey]:
    """The models that ``capabilities`` run, all together; a stand-in runner's capabilities
    (not a ``Capability``) need none."""
    return frozenset(
        model
        for capability in capabilities
        if isinstance(capability, Capability)
        for model in capability.models
    )


ANIMATE_LCM = "wangfuyun/AnimateLCM-SVD-xt/AnimateLCM-SVD-xt-1.1.safetensors"
SDXL_LIGHTNING_4STEP = "ByteDance/SDXL-Lightning/sdxl_lightning_4step_unet.safetensors"

SDXL_SVD_XT_1_1 = Family(
    key=STANDARD,
    name="20-step",
    video_model="stabilityai/stable-video-diffusion-img2vid-xt-1-1",
    first_frame_model="stabilityai/stable-diffusion-xl-base-1.0",
    first_frame_steps=25,
    first_frame_guidance=5.0,
)
LIGHTNING_ANIMATE_LCM = Family(
    key=FEW_STEP,
    name="few-step",
    video_model=ANIMATE_LCM,  # AnimateLCM-SVD-xt: SVD-XT's U-Net, distilled for 4 steps
    first_frame_model=SDXL_LIGHTNING_4STEP,  # SDXL-Lightning 4-step: SDXL base's U-Net, distilled
    first_frame_steps=4,  # the Lightning U-Net's own step count (its file's name)
    first_frame_guidance=0.0,  # Lightning runs without classifier-free guidance
    # the video's per-frame guidance ramp, as the AnimateLCM authors ran it
    # (FASTSVD_FEW_STEP_GUIDANCE sets its max)
    min_guidance_scale=1.0,
    max_guidance_scale=1.2,
    sampler=Sampler.few_step,
)

SVD_XT_1_1 = ModelPreset(
    name="svd-xt-1.1",
    description="SDXL base 1.0 draws the first frame, SVD-XT 1.1 animates it (fal's model).",
    families=(SDXL_SVD_XT_1_1, LIGHTNING_ANIMATE_LCM),
    decode_chunk_size=8,
)

SVD_XT = ModelPreset(
    name="svd-xt",
    description="SDXL base 1.0 + the original SVD-XT (not gated on Hugging Face).",
    families=(
        replace(SDXL_SVD_XT_1_1, video_model="stabilityai/stable-video-diffusion-img2vid-xt"),
        replace(
            LIGHTNING_ANIMATE_LCM,
            video_model="wangfuyun/AnimateLCM-SVD-xt/AnimateLCM-SVD-xt.safetensors",
        ),
    ),
    decode_chunk_size=8,
)

TINY = ModelPreset(
    name="tiny",
    description="Miniature random-weight copies of the same model classes: tests and smoke runs.",
    families=(
        replace(SDXL_SVD_XT_1_1, video_model=None, first_frame_model=None, first_frame_steps=4),
        replace(LIGHTNING_ANIMATE_LCM, video_model=None, first_frame_model=None),
    ),
    decode_chunk_size=c.NUM_FRAMES,
)

PRESETS: dict[str, ModelPreset] = {p.name: p for p in (SVD_XT_1_1, SVD_XT, TINY)}
