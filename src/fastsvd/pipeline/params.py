"""What one generation asks of the pipeline, in the pipeline's own terms.

The pipeline knows nothing of the fal inputs: the runner (``fastsvd.runner.params_of``) maps a
validated request onto ``GenerationParams``, resolving what fal leaves open (the seed, the size of
an image-to-video request), so the pipeline gets every value it needs, concrete.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from fastsvd import constants as c
from fastsvd.pipeline.presets import STANDARD
from fastsvd.schema import DeepCache


@dataclass(frozen=True)
class GenerationParams:
    """One video: drawn from ``prompt`` (text-to-video) or animated from ``image``, exactly one.

    ``image`` is fitted to ``width`` x ``height`` (scaled to cover, centre-cropped).
    """

    width: int
    height: int
    steps: int  # SVD-XT denoising steps
    fps: int  # the MP4's playback rate (the conditioning: ``VideoPipeline.fps_id``)
    motion_bucket_id: int
    noise_aug_strength: float  # noise added to the conditioning frame (fal's cond_aug)
    seed: int
    deep_cache: DeepCache = DeepCache.none  # the standard family's only
    family: str = STANDARD  # whose models run it (``presets``; few_step: fal-ai/fast-svd-lcm)
    prompt: str | None = None  # the first frame's prompt, for text-to-video
    negative_prompt: str = ""
    image: Image.Image | None = None  # the first frame, for image-to-video
    num_frames: int = c.NUM_FRAMES  # above the model's segment length: chained (chain.py)
    color_match: bool = True  # chained segments colour-matched to the first (colour.py)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.image is None):
            raise ValueError("GenerationParams takes a prompt or an image, exactly one")
