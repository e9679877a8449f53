"""The stock diffusers pipelines called for a fal request, as a diffusers user would call them.

This is the baseline fastsvd is checked against (tests) and timed against (``bench/``): the
preset's ``StableDiffusionXLPipeline`` and ``StableVideoDiffusionPipeline`` with the preset's
settings. Noise comes from CPU generators seeded with the request's seed, as in fastsvd's own
stages, so on any device the two draw the same noise and their frames can be compared.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from fastsvd.pipeline.core import VideoPipeline
from fastsvd.schema import TextToVideoInput


def first_frame(pipe: VideoPipeline, req: TextToVideoInput, seed: int) -> Image.Image:
    """Stage 1 through the stock text-to-image pipeline."""
    assert pipe.first_frame is not None, "loaded without the first-frame model"
    image: Image.Image = pipe.first_frame(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        width=req.video_size.width,
        height=req.video_size.height,
        num_inference_steps=pipe.preset.first_frame_steps,
        guidance_scale=pipe.preset.first_frame_guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return image


def video_arguments(pipe: VideoPipeline, req: TextToVideoInput, seed: int) -> dict[str, Any]:
    """Keyword arguments for ``pipe.video(image, **...)``: stage 2 with fal's inputs mapped."""
    preset = pipe.preset
    return {
        "width": req.video_size.width,
        "height": req.video_size.height,
        "num_frames": preset.num_frames,
        "num_inference_steps": req.steps,
        "fps": req.fps,
        "motion_bucket_id": req.motion_bucket_id,
        "noise_aug_strength": req.cond_aug,
        "min_guidance_scale": preset.min_guidance_scale,
        "max_guidance_scale": preset.max_guidance_scale,
        "decode_chunk_size": preset.decode_chunk_size,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "np",
    }


def to_pixels(frames: np.ndarray) -> np.ndarray:
    """The stock pipeline's float frames in [0, 1] as uint8, rounded as fastsvd rounds."""
    pixels: np.ndarray = (frames * 255).round().clip(0, 255).astype(np.uint8)
    return pixels


def text_to_video(
    pipe: VideoPipeline, req: TextToVideoInput, seed: int
) -> tuple[Image.Image, np.ndarray]:
    """Both stages: the first frame and the video's frames (uint8, frames x H x W x 3)."""
    image = first_frame(pipe, req, seed)
    frames = pipe.video(image, **video_arguments(pipe, req, seed)).frames[0]
    return image, to_pixels(frames)
