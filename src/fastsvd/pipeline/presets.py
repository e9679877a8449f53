"""Model presets: which weights a worker loads, and the settings that go with them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fastsvd import constants as c


@dataclass(frozen=True)
class FewStepModels:
    """The few-step family (``fal-ai/fast-svd-lcm``): two distilled U-Nets, each one
    safetensors file run on the components of the preset's own models.

    A weights reference is a Hugging Face repo and file, ``owner/name/file.safetensors``, a local
    ``.safetensors`` file, or a folder holding the default file; None: built in code (tiny).
    """

    video_unet: str | None  # AnimateLCM-SVD-xt: SVD-XT's U-Net, distilled for 4 steps
    first_frame_unet: str | None  # SDXL-Lightning 4-step: SDXL base's U-Net, distilled
    first_frame_steps: int = 4  # the Lightning U-Net's own step count (its file's name)
    first_frame_guidance: float = 0.0  # Lightning runs without classifier-free guidance
    # the video's per-frame guidance ramp, as the AnimateLCM authors ran it; a max of 1.0 turns
    # guidance off (one U-Net batch instead of two; FASTSVD_FEW_STEP_GUIDANCE)
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 1.2


ANIMATE_LCM = "wangfuyun/AnimateLCM-SVD-xt/AnimateLCM-SVD-xt-1.1.safetensors"
SDXL_LIGHTNING_4STEP = "ByteDance/SDXL-Lightning/sdxl_lightning_4step_unet.safetensors"
REAL_FEW_STEP = FewStepModels(video_unet=ANIMATE_LCM, first_frame_unet=SDXL_LIGHTNING_4STEP)


@dataclass(frozen=True)
class ModelPreset:
    """A pair of models (first frame + video) and how to run them."""

    name: str
    description: str
    video_model: str | None  # Hugging Face id or local folder; None: built in code (tiny)
    first_frame_model: str | None
    first_frame_steps: int
    first_frame_guidance: float
    decode_chunk_size: int  # frames per temporal-VAE call: fewer saves memory, more flickers
    # SVD's per-frame classifier-free guidance ramps from min (first frame) to max (last frame)
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0
    num_frames: int = c.NUM_FRAMES
    few_step: FewStepModels = REAL_FEW_STEP
    # the fps id the video model is conditioned on (the first of SVD's added time ids): the one
    # it was fine-tuned at. SVD-XT 1.1 was fine-tuned at a fixed 6 ("6 FPS, motion bucket 127";
    # its card: "performance outside of the fixed conditioning settings may vary"); 6 is also
    # the default of Stability's own SVD sampling script (fps_id=6). A request's fps sets the
    # MP4's playback rate; FASTSVD_FPS_CONDITIONING=request conditions on its fps - 1 instead.
    fps_id: int = 6


SVD_XT_1_1 = ModelPreset(
    name="svd-xt-1.1",
    description="SDXL base 1.0 draws the first frame, SVD-XT 1.1 animates it (fal's model).",
    video_model="stabilityai/stable-video-diffusion-img2vid-xt-1-1",
    first_frame_model="stabilityai/stable-diffusion-xl-base-1.0",
    first_frame_steps=25,
    first_frame_guidance=5.0,
    decode_chunk_size=8,
)

SVD_XT = ModelPreset(
    name="svd-xt",
    description="SDXL base 1.0 + the original SVD-XT (not gated on Hugging Face).",
    few_step=replace(
        REAL_FEW_STEP, video_unet="wangfuyun/AnimateLCM-SVD-xt/AnimateLCM-SVD-xt.safetensors"
    ),
    video_model="stabilityai/stable-video-diffusion-img2vid-xt",
    first_frame_model="stabilityai/stable-diffusion-xl-base-1.0",
    first_frame_steps=25,
    first_frame_guidance=5.0,
    decode_chunk_size=8,
)

TINY = ModelPreset(
    name="tiny",
    description="Miniature random-weight copies of the same model classes: tests and smoke runs.",
    video_model=None,
    first_frame_model=None,
    first_frame_steps=4,
    first_frame_guidance=5.0,
    decode_chunk_size=c.NUM_FRAMES,
    few_step=FewStepModels(video_unet=None, first_frame_unet=None),
)

PRESETS: dict[str, ModelPreset] = {p.name: p for p in (SVD_XT_1_1, SVD_XT, TINY)}
DEFAULT_PRESET = c.DEFAULT_PRESET
