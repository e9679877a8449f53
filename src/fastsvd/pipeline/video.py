"""Stage 2: SVD-XT animates a first frame into 25 frames, then the temporal VAE decodes them.

The denoising loop is ours rather than ``StableVideoDiffusionPipeline.__call__`` so that DeepCache,
progress and cancellation sit inside it. In fp32 every tensor it computes is the one the stock
pipeline computes (the tests compare the two bit for bit with DeepCache off). In half precision
it is more careful than stock: the latents, the guidance mix and the sampler's steps stay in
fp32 (only the U-Net's input is cast), and an fp16 VAE that asks for it (``force_upcast``) runs
in fp32 for the decode as well as the encode. It reuses the stock pipeline's helpers, so
preprocessing and conditioning are diffusers' own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableVideoDiffusionPipeline
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _append_dims,
    retrieve_timesteps,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from fastsvd.hooks import Hooks, Stage, StepEvent
from fastsvd.pipeline.consistency import ConsistencySampler
from fastsvd.pipeline.deepcache import CachedUNet, CacheSchedule, UNetGraphs


@dataclass(frozen=True)
class VideoSettings:
    """The inputs of one SVD-XT run, in the model's own terms."""

    width: int
    height: int
    num_frames: int
    steps: int
    fps_id: int  # the fps conditioning (SVD's first added time id)
    motion_bucket_id: int
    noise_aug_strength: float  # fal's cond_aug
    seed: int
    min_guidance_scale: float
    max_guidance_scale: float
    decode_chunk_size: int
    cache: CacheSchedule | None


def animate(
    pipe: StableVideoDiffusionPipeline,
    image: Image.Image,
    settings: VideoSettings,
    hooks: Hooks,
    graphs: UNetGraphs | None = None,
) -> np.ndarray:
    """Animate ``image``, already ``width`` x ``height``, through the U-Net's ``graphs`` (the
    pipeline's long-lived, possibly compiled forwards; by default eager ones of ``pipe.unet``),
    sampled by ``pipe.scheduler``: SVD's Euler, or the few-step ``ConsistencySampler``.

    Returns the frames as float32 [F, H, W, 3] in [0, 1].
    """
    device = pipe._execution_device
    do_cfg = settings.max_guidance_scale > 1.0
    # One CPU generator, consumed in the stock order: conditioning noise, then initial latents.
    generator = torch.Generator("cpu").manual_seed(settings.seed)

    # 1. CLIP image embedding: [cfg * 1, 1, dim], zeros for the unconditional half
    image_embeddings = pipe._encode_image(image, device, 1, do_cfg)

    # 2. VAE latents of the noise-augmented conditioning frame, repeated over the frames
    pixels = pipe.video_processor.preprocess(
        image, height=settings.height, width=settings.width
    ).to(device)
    noise = randn_tensor(pixels.shape, generator=generator, device=device, dtype=pixels.dtype)
    pixels = pixels + settings.noise_aug_strength * noise
    with vae_upcast(pipe):
        image_latents = pipe._encode_vae_image(
            pixels, device=device, num_videos_per_prompt=1, do_classifier_free_guidance=do_cfg
        ).to(image_embeddings.dtype)
    # [cfg, C, h, w] -> [cfg, F, C, h, w]
    image_latents = image_latents.unsqueeze(1).repeat(1, settings.num_frames, 1, 1, 1)

    # 3. added time ids: (fps id, motion bucket, noise augmentation)
    added_time_ids = pipe._get_add_time_ids(
        settings.fps_id,
        settings.motion_bucket_id,
        settings.noise_aug_strength,
        image_embeddings.dtype,
        1,
        1,
        do_cfg,
    ).to(device)

    # 4. timesteps and initial latents [1, F, 4, h, w], in fp32 whatever the U-Net runs in: the
    # sampler's updates at the last Karras levels fall below bf16's resolution
    timesteps, _ = retrieve_timesteps(pipe.scheduler, settings.steps, device, None, None)
    latents = pipe.prepare_latents(
        1,
        settings.num_frames,
        pipe.unet.config.in_channels,
        settings.height,
        settings.width,
        torch.float32,
        device,
        generator,
        None,
    )
    unet_dtype = image_embeddings.dtype

    # the few-step sampler re-noises between steps: all of its noise drawn now, in seed order
    sampler = pipe.scheduler
    consistency = isinstance(sampler, ConsistencySampler)
    if consistency:
        sampler.begin(latents, generator)

    # 5. per-frame guidance ramp: [1, F, 1, 1, 1]
    guidance = torch.linspace(
        settings.min_guidance_scale, settings.max_guidance_scale, settings.num_frames
    )
    guidance = _append_dims(guidance.unsqueeze(0).to(device, latents.dtype), latents.ndim)

    # 6. denoising loop; the timestep stays a device tensor, so nothing here syncs with the host
    unet = CachedUNet(pipe.unet, settings.cache, graphs)
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        hooks.check_cancel(Stage.video, i + 1)
        model_input = torch.cat([latents] * 2) if do_cfg else latents
        model_input = pipe.scheduler.scale_model_input(model_input, t).to(unet_dtype)
        # [cfg, F, 4 + 4, h, w]: noisy latents beside the conditioning latents
        model_input = torch.cat([model_input, image_latents], dim=2)
        if settings.cache is None and not (graphs is not None and graphs.compiled):
            # eager without DeepCache: the U-Net's own forward, as the stock pipeline calls it
            noise_pred = pipe.unet(
                model_input,
                t,
                encoder_hidden_states=image_embeddings,
                added_time_ids=added_time_ids,
                return_dict=False,
            )[0]
        else:
            noise_pred = unet(model_input, t, image_embeddings, added_time_ids, step=i)
        noise_pred = noise_pred.float()  # the guidance mix and the step in fp32
        if do_cfg:
            noise_uncond, noise_cond = noise_pred.chunk(2)
            noise_pred = noise_uncond + guidance * (noise_cond - noise_uncond)
        if consistency:
            latents = sampler.step(noise_pred, t, latents)
        else:
            latents = sampler.step(noise_pred, t, latents).prev_sample
        hooks.on_step(StepEvent(Stage.video, i + 1, total))

    # 7. decode, a chunk of frames at a time
    frames = decode(pipe, latents, settings.num_frames, settings.decode_chunk_size, hooks)
    video = pipe.video_processor.postprocess_video(video=frames, output_type="np")
    out: np.ndarray = video[0]
    return out


def upcasts_vae(pipe: StableVideoDiffusionPipeline) -> bool:
    """Whether the VAE runs in fp32 although loaded in fp16: its config asks for it
    (``force_upcast``, set for SVD's VAE, whose fp16 activations overflow)."""
    return pipe.vae.dtype == torch.float16 and bool(pipe.vae.config.force_upcast)


@contextlib.contextmanager
def vae_upcast(pipe: StableVideoDiffusionPipeline) -> Iterator[None]:
    """The VAE in fp32 inside, where ``upcasts_vae``: stock diffusers upcasts for the encode
    only; the decode is upcast here too (the same overflow, on more activations)."""
    if not upcasts_vae(pipe):
        yield
        return
    pipe.vae.to(dtype=torch.float32)
    try:
        yield
    finally:
        pipe.vae.to(dtype=torch.float16)


def decode(
    pipe: StableVideoDiffusionPipeline,
    latents: torch.Tensor,
    num_frames: int,
    chunk_size: int,
    hooks: Hooks,
) -> torch.Tensor:
    """Latents [1, F, 4, h, w] to pixels [1, 3, F, H, W] (float32), as the stock pipeline does."""
    # [1, F, 4, h, w] -> [F, 4, h, w]
    # (the stock pipeline multiplies by the reciprocal; so do we, for identical results)
    latents = 1 / pipe.vae.config.scaling_factor * latents.flatten(0, 1)
    starts = range(0, latents.shape[0], chunk_size)
    chunks = []
    for step, start in enumerate(starts, 1):
        hooks.check_cancel(Stage.decode, step)
        chunk = latents[start : start + chunk_size]
        with vae_upcast(pipe):
            chunk = chunk.to(pipe.vae.dtype)
            chunks.append(pipe.vae.decode(chunk, num_frames=chunk.shape[0]).sample)
        hooks.on_step(StepEvent(Stage.decode, step, len(starts)))
    frames = torch.cat(chunks, dim=0)
    # [F, 3, H, W] -> [1, 3, F, H, W]
    frames = frames.reshape(-1, num_frames, *frames.shape[1:]).permute(0, 2, 1, 3, 4)
    return frames.float()
