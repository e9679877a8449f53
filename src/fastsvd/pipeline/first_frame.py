"""Stage 1: the first frame, drawn from the prompt by a text-to-image pipeline (SDXL)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from fastsvd.hooks import Hooks, Stage, StepEvent


def draw_first_frame(
    pipe: StableDiffusionXLPipeline,
    *,
    prompt: str,
    negative_prompt: str,
    width: int,
    height: int,
    seed: int,
    steps: int,
    guidance_scale: float,
    hooks: Hooks,
) -> Image.Image:
    """Render ``prompt`` at ``width`` x ``height`` with classifier-free guidance.

    The noise comes from a CPU generator seeded with ``seed``, so a seed gives the same picture
    on any device of the same kind.
    """
    generator = torch.Generator("cpu").manual_seed(seed)

    def on_step_end(_pipe: Any, i: int, _t: Any, _tensors: dict[str, Any]) -> dict[str, Any]:
        hooks.on_step(StepEvent(Stage.first_frame, i + 1, steps))
        if i + 1 < steps:
            hooks.check_cancel(Stage.first_frame, i + 2)
        return {}

    hooks.check_cancel(Stage.first_frame, 1)
    result = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="pil",
        callback_on_step_end=on_step_end,
    )
    image: Image.Image = result.images[0]
    return image
