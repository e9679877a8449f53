"""Full-size models with random weights: the real configs, no download. The memory plan counts
their parameters on the meta device (``memory.part_parameters``); benchmarks run them.

Every component is built from the preset's real config (``pipeline/configs``) at its real size,
so it does the same work (FLOPs, memory traffic) as the released weights; only the weights are
random, so the pictures are noise. The tokenizers are the tiny preset's byte-level ones (no
vocabulary files are downloaded); the text encoders still see 77-token sequences.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    StableVideoDiffusionPipeline,
    UNet2DConditionModel,
    UNetSpatioTemporalConditionModel,
)
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from fastsvd.pipeline import model_configs as configs
from fastsvd.pipeline.tiny import tiny_tokenizer


def _clean(config: dict[str, Any]) -> dict[str, Any]:
    for key in ("architectures", "torch_dtype", "transformers_version", "_name_or_path"):
        config.pop(key, None)
    return config


def build_first_frame(device: torch.device, dtype: torch.dtype) -> StableDiffusionXLPipeline:
    """SDXL base 1.0 at full size, random weights, created directly on ``device``."""
    with torch.device(device):
        text_encoder = CLIPTextModel(
            CLIPTextConfig(**_clean(configs.load(configs.SDXL_BASE, "text_encoder")))
        )
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**_clean(configs.load(configs.SDXL_BASE, "text_encoder_2")))
        )
        unet = UNet2DConditionModel.from_config(configs.load(configs.SDXL_BASE, "unet"))
        vae = AutoencoderKL.from_config(configs.load(configs.SDXL_BASE, "vae"))
    scheduler = EulerDiscreteScheduler.from_config(configs.load(configs.SDXL_BASE, "scheduler"))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tiny_tokenizer(),
        tokenizer_2=tiny_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    return pipe.to(device=device, dtype=dtype)


def build_video(device: torch.device, dtype: torch.dtype) -> StableVideoDiffusionPipeline:
    """SVD-XT at full size (U-Net, temporal VAE, CLIP ViT-H image encoder), random weights."""
    with torch.device(device):
        unet = UNetSpatioTemporalConditionModel.from_config(configs.load(configs.SVD_XT, "unet"))
        vae = AutoencoderKLTemporalDecoder.from_config(configs.load(configs.SVD_XT, "vae"))
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(**_clean(configs.load(configs.SVD_XT, "image_encoder")))
        )
    feature_extractor = CLIPImageProcessor(**configs.load(configs.SVD_XT, "feature_extractor"))
    scheduler = EulerDiscreteScheduler.from_config(configs.load(configs.SVD_XT, "scheduler"))
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=feature_extractor,
    )
    return pipe.to(device=device, dtype=dtype)
