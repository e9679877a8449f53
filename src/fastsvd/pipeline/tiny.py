"""The ``tiny`` preset: miniature, seeded, random-weight copies of the real model classes.

Every component is the class the real preset uses, built from the real config with only its sizes
shrunk, so the whole pipeline (tokenizers, text encoders, SDXL U-Net, CLIP image encoder, SVD
U-Net, temporal VAE, schedulers) runs for real on a CPU in about a second, with no download. The
output is noise-like pictures, not art: this preset exists for tests and smoke runs.
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
from tokenizers import pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from fastsvd.pipeline import model_configs as configs

_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
_CHANNELS = 32  # the smallest width the models' 32-group GroupNorms accept
_TEXT_DIM = 32


def _text_config(model_component: str, vocab_size: int, bos_id: int, eos_id: int) -> CLIPTextConfig:
    real = configs.load(configs.SDXL_BASE, model_component)
    real.update(
        hidden_size=_TEXT_DIM,
        intermediate_size=37,
        num_attention_heads=2,
        num_hidden_layers=2,
        projection_dim=_TEXT_DIM,
        vocab_size=vocab_size,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    real.pop("architectures", None)
    real.pop("torch_dtype", None)
    return CLIPTextConfig(**real)


def tiny_tokenizer() -> CLIPTokenizer:
    """A real CLIP BPE tokenizer whose vocabulary is the 256 byte symbols (no merges)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {_BOS: 0, _EOS: 1}
    for symbol in alphabet:
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _seeded(seed: int) -> Any:
    rng = torch.random.fork_rng(devices=[])
    torch.manual_seed(seed)
    return rng


def first_frame_unet_config() -> dict[str, Any]:
    """SDXL base's U-Net config, shrunk."""
    config = configs.load(configs.SDXL_BASE, "unet")
    config.update(
        block_out_channels=[_CHANNELS] * 3,
        attention_head_dim=[2, 2, 2],
        layers_per_block=1,
        transformer_layers_per_block=[1, 1, 1],
        # the U-Net attends over both text encoders' hidden states side by side
        cross_attention_dim=2 * _TEXT_DIM,
        addition_time_embed_dim=8,
        # 6 size/crop ids x 8 + the pooled text embedding
        projection_class_embeddings_input_dim=6 * 8 + _TEXT_DIM,
    )
    return config


def video_unet_config() -> dict[str, Any]:
    """SVD-XT's spatio-temporal U-Net config, shrunk."""
    config = configs.load(configs.SVD_XT, "unet")
    config.update(
        block_out_channels=[_CHANNELS] * 4,
        num_attention_heads=[2, 2, 2, 2],
        cross_attention_dim=_TEXT_DIM,
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=3 * 8,  # fps, motion bucket, cond_aug
    )
    return config


def build_few_step_video_unet(seed: int = 1) -> UNetSpatioTemporalConditionModel:
    """The tiny stand-in of AnimateLCM-SVD-xt: the tiny video U-Net's class and config, its own
    random weights (a distilled U-Net differs from its teacher only in its weights)."""
    with _seeded(seed):
        return UNetSpatioTemporalConditionModel.from_config(video_unet_config())


def build_few_step_first_frame_unet(seed: int = 1) -> UNet2DConditionModel:
    """The tiny stand-in of SDXL-Lightning's 4-step U-Net, the same way."""
    with _seeded(seed):
        return UNet2DConditionModel.from_config(first_frame_unet_config())


def build_first_frame(seed: int = 0) -> StableDiffusionXLPipeline:
    """A tiny SDXL text-to-image pipeline (two text encoders, micro-conditioned U-Net)."""
    with _seeded(seed):
        tokenizer = tiny_tokenizer()
        vocab_size = len(tokenizer)
        bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        text_encoder = CLIPTextModel(_text_config("text_encoder", vocab_size, bos_id, eos_id))
        text_encoder_2 = CLIPTextModelWithProjection(
            _text_config("text_encoder_2", vocab_size, bos_id, eos_id)
        )
        unet = UNet2DConditionModel.from_config(first_frame_unet_config())
        vae_config = configs.load(configs.SDXL_BASE, "vae")
        vae_config.update(block_out_channels=[_CHANNELS] * 4, layers_per_block=1)
        vae = AutoencoderKL.from_config(vae_config)
    scheduler = EulerDiscreteScheduler.from_config(configs.load(configs.SDXL_BASE, "scheduler"))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tiny_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )


def build_video(seed: int = 0) -> StableVideoDiffusionPipeline:
    """A tiny SVD-XT image-to-video pipeline: 4-level spatio-temporal U-Net, temporal VAE, CLIP."""
    with _seeded(seed):
        unet = UNetSpatioTemporalConditionModel.from_config(video_unet_config())
        vae_config = configs.load(configs.SVD_XT, "vae")
        vae_config.update(block_out_channels=[_CHANNELS] * 4, layers_per_block=1)
        vae = AutoencoderKLTemporalDecoder.from_config(vae_config)
        clip_config = configs.load(configs.SVD_XT, "image_encoder")
        for key in ("architectures", "torch_dtype", "transformers_version"):
            clip_config.pop(key, None)
        clip_config.update(
            hidden_size=_TEXT_DIM,
            intermediate_size=37,
            num_attention_heads=2,
            num_hidden_layers=2,
            patch_size=32,  # image_size stays 224: the pipeline always resizes to it
            projection_dim=_TEXT_DIM,
        )
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_config))
    feature_extractor = CLIPImageProcessor(**configs.load(configs.SVD_XT, "feature_extractor"))
    scheduler = EulerDiscreteScheduler.from_config(configs.load(configs.SVD_XT, "scheduler"))
    return StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=feature_extractor,
    )
