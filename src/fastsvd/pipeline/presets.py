"""Model presets: which weights a worker loads, and the settings that go with them."""

from __future__ import annotations

from dataclasses import dataclass

from fastsvd import constants as c


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
)

PRESETS: dict[str, ModelPreset] = {p.name: p for p in (SVD_XT_1_1, SVD_XT, TINY)}
DEFAULT_PRESET = c.DEFAULT_PRESET
