"""The stock diffusers pipelines called for ``GenerationParams``, as a diffusers user would.

This is the baseline fastsvd is checked against (tests) and timed against (``bench/``): the
preset's ``StableDiffusionXLPipeline`` and ``StableVideoDiffusionPipeline`` with the preset's
settings. Noise comes from CPU generators seeded with the params' seed, as in fastsvd's own
stages, so on any device the two draw the same noise and their frames can be compared.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from fastsvd import media
from fastsvd.pipeline.core import VideoPipeline
from fastsvd.pipeline.params import GenerationParams


def first_frame(pipe: VideoPipeline, params: GenerationParams) -> Image.Image:
    """Stage 1: the stock text-to-image pipeline for a prompt, or the given image fitted."""
    if params.image is not None:
        return media.fit(params.image, params.width, params.height)
    assert pipe.first_frame is not None, "loaded without the first-frame model"
    image: Image.Image = pipe.first_frame(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        width=params.width,
        height=params.height,
        num_inference_steps=pipe.preset.first_frame_steps,
        guidance_scale=pipe.preset.first_frame_guidance,
        generator=torch.Generator("cpu").manual_seed(params.seed),
    ).images[0]
    return image


def video_arguments(pipe: VideoPipeline, params: GenerationParams) -> dict[str, Any]:
    """Keyword arguments for ``pipe.video(image, **...)``: stage 2 with the params mapped."""
    preset = pipe.preset
    return {
        "width": params.width,
        "height": params.height,
        "num_frames": preset.num_frames,
        "num_inference_steps": params.steps,
        "fps": params.fps,
        "motion_bucket_id": params.motion_bucket_id,
        "noise_aug_strength": params.noise_aug_strength,
        "min_guidance_scale": preset.min_guidance_scale,
        "max_guidance_scale": preset.max_guidance_scale,
        "decode_chunk_size": preset.decode_chunk_size,
        "generator": torch.Generator("cpu").manual_seed(params.seed),
        "output_type": "np",
    }


def to_pixels(frames: np.ndarray) -> np.ndarray:
    """The stock pipeline's float frames in [0, 1] as uint8, rounded as fastsvd rounds."""
    pixels: np.ndarray = (frames * 255).round().clip(0, 255).astype(np.uint8)
    return pixels


def generate(pipe: VideoPipeline, params: GenerationParams) -> tuple[Image.Image, np.ndarray]:
    """Both stages: the first frame and the video's frames (uint8, frames x H x W x 3)."""
    image = first_frame(pipe, params)
    frames = pipe.video(image, **video_arguments(pipe, params)).frames[0]
    return image, to_pixels(frames)
