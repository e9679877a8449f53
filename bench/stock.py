"""The stock diffusers pipelines, loaded and called as a diffusers user would.

This is the baseline fastsvd is checked against (tests) and timed against (``bench/``):
``StableDiffusionXLPipeline`` and ``StableVideoDiffusionPipeline`` loaded by diffusers' own
``from_pretrained`` from the same saved folders fastsvd loads, in the same dtype, and called
with a preset's settings. Nothing of fastsvd's loading, dtype or scheduler choices is reused.
Noise comes from CPU generators seeded with the params' seed, as in fastsvd's own stages, so on
any device the two draw the same noise and their frames can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline, StableVideoDiffusionPipeline
from PIL import Image

from fastsvd import media
from fastsvd.pipeline.params import GenerationParams
from fastsvd.pipeline.presets import ModelPreset


@dataclass(frozen=True)
class Stock:
    """diffusers' own pipelines for a preset's two models."""

    preset: ModelPreset
    video: StableVideoDiffusionPipeline
    first_frame: StableDiffusionXLPipeline

    @classmethod
    def load(
        cls,
        preset: ModelPreset,
        video: str | Path,
        first_frame: str | Path,
        dtype: torch.dtype,
        device: str | torch.device = "cpu",
    ) -> Stock:
        """Both pipelines as ``from_pretrained(folder, torch_dtype=dtype)`` gives them (the fp16
        variant where the folder holds only that, as ``variant="fp16"`` asks)."""
        pipes = []
        for pipe_cls, folder in (
            (StableVideoDiffusionPipeline, Path(video)),
            (StableDiffusionXLPipeline, Path(first_frame)),
        ):
            fp16_only = not any(
                not p.name.endswith(".fp16.safetensors") for p in folder.rglob("*.safetensors")
            )
            variant = {"variant": "fp16"} if fp16_only else {}
            pipe = pipe_cls.from_pretrained(folder, dtype=dtype, **variant).to(device)
            pipe.set_progress_bar_config(disable=True)
            pipes.append(pipe)
        return cls(preset, pipes[0], pipes[1])

    def draw_first_frame(self, params: GenerationParams) -> Image.Image:
        """Stage 1: the text-to-image pipeline for a prompt, or the given image fitted."""
        if params.image is not None:
            return media.fit(params.image, params.width, params.height)
        image: Image.Image = self.first_frame(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            width=params.width,
            height=params.height,
            num_inference_steps=self.preset.base.first_frame_steps,
            guidance_scale=self.preset.base.first_frame_guidance,
            generator=torch.Generator("cpu").manual_seed(params.seed),
        ).images[0]
        return image

    def video_arguments(self, params: GenerationParams, fps_id: int) -> dict[str, Any]:
        """Keyword arguments for ``self.video(image, **...)``: stage 2 with the params mapped;
        conditioned on ``fps_id`` (diffusers conditions on its ``fps`` argument minus one)."""
        preset = self.preset
        return {
            "width": params.width,
            "height": params.height,
            "num_frames": preset.num_frames,
            "num_inference_steps": params.steps,
            "fps": fps_id + 1,
            "motion_bucket_id": params.motion_bucket_id,
            "noise_aug_strength": params.noise_aug_strength,
            "min_guidance_scale": preset.base.min_guidance_scale,
            "max_guidance_scale": preset.base.max_guidance_scale,
            "decode_chunk_size": preset.decode_chunk_size,
            "generator": torch.Generator("cpu").manual_seed(params.seed),
            "output_type": "np",
        }

    def generate(self, params: GenerationParams, fps_id: int) -> tuple[Image.Image, np.ndarray]:
        """Both stages: the first frame and the video's frames (uint8, frames x H x W x 3)."""
        image = self.draw_first_frame(params)
        frames = self.video(image, **self.video_arguments(params, fps_id)).frames[0]
        return image, to_pixels(frames)


def to_pixels(frames: np.ndarray) -> np.ndarray:
    """The stock pipeline's float frames in [0, 1] as uint8, rounded as fastsvd rounds."""
    pixels: np.ndarray = (frames * 255).round().clip(0, 255).astype(np.uint8)
    return pixels
