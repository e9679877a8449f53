"""What a default request of each endpoint costs: FLOPs counted on the full-size models, and CPU
wall time on the tiny preset, per stage, in one run.

FLOPs: every full-size component is built from its real config (``pipeline/configs``) on the
``meta`` device, so no weight is materialised, and each call a default request makes is
counted once with ``torch.utils.flop_counter.FlopCounterMode`` at its exact shapes (1024x576,
25 frames), then multiplied by how often the request makes it: the text encoders once, each
U-Net once per step (a batch of two under classifier-free guidance), the VAE encode once, the
temporal VAE decode once per chunk of 8 frames. The 20-step family is the preset's SDXL base
(25 steps, guidance 5) and SVD-XT (20 steps, guidance 1 -> 3); the few-step family is
SDXL-Lightning (4 steps, no guidance) and AnimateLCM-SVD-xt (4 steps, guidance 1 -> 1.2; and,
as ``no guidance``, with FASTSVD_FEW_STEP_GUIDANCE=1.0).

Longer videos (``num_frames``, fastsvd's extension) are chained segments of 25 frames
(``pipeline/chain.py``): the first frame is drawn once, and every segment costs what a 25-frame
video's video and decode stages cost (the last one is made whole and cut), so a request of
``n`` frames costs ``first_frame + segments(n) x (video + decode)``: the second table, for 25,
49 and 241 frames.

Times: the tiny preset on this CPU, each endpoint's default steps at ``--size`` (the tiny
models' time at 1024x576 is dominated by the full-resolution VAE, which says nothing of a GPU),
median of ``--repeats`` runs. They show the relative cost of the families' code paths, not
what a GPU does (bench/gpu.py measures that).

    .venv/bin/python bench/cost.py [--size 256x128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from dataclasses import replace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastsvd.pipeline.quiet import quiet_libraries

quiet_libraries()

from fastsvd import constants as c  # noqa: E402
from fastsvd.hooks import Stage  # noqa: E402
from fastsvd.pipeline import full_size  # noqa: E402
from fastsvd.pipeline.chain import segment_count  # noqa: E402
from fastsvd.pipeline.core import WARM_UP_SIZE  # noqa: E402
from fastsvd.pipeline.device import choose  # noqa: E402
from fastsvd.pipeline.loading import load_pipeline  # noqa: E402
from fastsvd.pipeline.presets import (  # noqa: E402
    FEW_STEP,
    STANDARD,
    SVD_XT_1_1,
    TINY,
    Family,
    ModelPreset,
)
from fastsvd.runner import params_of  # noqa: E402
from fastsvd.schema import (  # noqa: E402
    FewStepImageToVideoInput,
    FewStepTextToVideoInput,
    ImageToVideoInput,
    TextToVideoInput,
)

STAGES = ("first_frame", "video", "decode", "export")
TOKENS = 77  # CLIP's sequence, every prompt padded to it


def counted(call: Callable[[], Any]) -> int:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        call()
    return int(counter.get_total_flops())


class FullSize:
    """The preset's full-size models on ``meta`` and the FLOPs of each call a request makes."""

    def __init__(self, width: int, height: int) -> None:
        meta, dtype = torch.device("meta"), torch.bfloat16
        self.sdxl = full_size.build_first_frame(meta, dtype)
        self.svd = full_size.build_video(meta, dtype)
        self.width, self.height = width, height
        self.dtype = dtype
        self._cache: dict[tuple[str, int], int] = {}

    def _once(self, name: str, batch: int, call: Callable[[], Any]) -> int:
        if (name, batch) not in self._cache:
            self._cache[(name, batch)] = counted(call)
        return self._cache[(name, batch)]

    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(*shape, device="meta", dtype=self.dtype)

    def text_encoders(self, batch: int) -> int:
        ids = torch.zeros(batch, TOKENS, dtype=torch.long, device="meta")

        def call() -> None:
            self.sdxl.text_encoder(ids, output_hidden_states=True)
            self.sdxl.text_encoder_2(ids, output_hidden_states=True)

        return self._once("text", batch, call)

    def sdxl_unet(self, batch: int) -> int:
        unet = self.sdxl.unet
        latents = self._zeros(batch, 4, self.height // 8, self.width // 8)
        context = self._zeros(batch, TOKENS, unet.config.cross_attention_dim)
        added = {"text_embeds": self._zeros(batch, 1280), "time_ids": self._zeros(batch, 6)}
        return self._once(
            "sdxl_unet",
            batch,
            lambda: unet(latents, torch.tensor(999.0), context, added_cond_kwargs=added),
        )

    def sdxl_decode(self) -> int:
        latents = self._zeros(1, 4, self.height // 8, self.width // 8)
        return self._once("sdxl_decode", 1, lambda: self.sdxl.vae.decode(latents))

    def image_encoder(self) -> int:
        pixels = self._zeros(1, 3, 224, 224)
        return self._once("clip", 1, lambda: self.svd.image_encoder(pixels))

    def vae_encode(self) -> int:
        pixels = self._zeros(1, 3, self.height, self.width)
        return self._once("svd_encode", 1, lambda: self.svd.vae.encode(pixels))

    def svd_unet(self, batch: int) -> int:
        unet = self.svd.unet
        latents = self._zeros(batch, c.NUM_FRAMES, 8, self.height // 8, self.width // 8)
        context = self._zeros(batch, 1, unet.config.cross_attention_dim)
        time_ids = self._zeros(batch, 3)
        return self._once(
            "svd_unet",
            batch,
            lambda: unet(latents, torch.tensor(1.0), context, added_time_ids=time_ids),
        )

    def temporal_decode(self, frames: int) -> int:
        latents = self._zeros(frames, 4, self.height // 8, self.width // 8)
        return self._once(
            "svd_decode", frames, lambda: self.svd.vae.decode(latents, num_frames=frames)
        )


def request_flops(
    models: FullSize,
    *,
    preset: ModelPreset,
    family: Family,
    prompt: bool,
    steps: int,
) -> dict[str, int]:
    """FLOPs per stage of one request run by ``family``."""
    out = dict.fromkeys(STAGES, 0)
    max_guidance = family.max_guidance_scale
    if prompt:
        ff_steps, ff_guidance = family.first_frame_steps, family.first_frame_guidance
        batch = 2 if ff_guidance > 1 else 1
        out["first_frame"] = (
            models.text_encoders(batch) + ff_steps * models.sdxl_unet(batch) + models.sdxl_decode()
        )
    batch = 2 if max_guidance > 1 else 1
    out["video"] = models.image_encoder() + models.vae_encode() + steps * models.svd_unet(batch)
    chunk = preset.decode_chunk_size
    sizes = [min(chunk, c.NUM_FRAMES - start) for start in range(0, c.NUM_FRAMES, chunk)]
    out["decode"] = sum(models.temporal_decode(n) for n in sizes)
    return out


# (label, request type, family, guidance override)
ROWS: list[tuple[str, type, str, float | None]] = [
    (c.TEXT_TO_VIDEO_ENDPOINT, TextToVideoInput, STANDARD, None),
    (c.IMAGE_TO_VIDEO_ENDPOINT, ImageToVideoInput, STANDARD, None),
    (c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT, FewStepTextToVideoInput, FEW_STEP, None),
    (c.FEW_STEP_IMAGE_TO_VIDEO_ENDPOINT, FewStepImageToVideoInput, FEW_STEP, None),
    (f"{c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT}, no guidance", FewStepTextToVideoInput, FEW_STEP, 1.0),
]


def flops_table() -> list[dict[str, Any]]:
    preset = SVD_XT_1_1
    width, height = WARM_UP_SIZE  # fal's default video_size, landscape_16_9
    models = FullSize(width, height)
    rows = []
    for label, kind, key, guidance in ROWS:
        default_steps = kind.model_fields["steps"].default
        family = preset.family(key)
        if guidance is not None:
            family = replace(family, max_guidance_scale=guidance)
        stages = request_flops(
            models,
            preset=preset,
            family=family,
            prompt="prompt" in kind.model_fields,
            steps=default_steps,
        )
        rows.append({"endpoint": label, "steps": default_steps, **stages})
    return rows


LENGTHS = (25, 49, 241)  # frames: one segment, two, ten


def chained_table(
    rows: list[dict[str, Any]], lengths: tuple[int, ...] = LENGTHS
) -> list[dict[Any, Any]]:
    """Each endpoint's FLOPs for videos of ``lengths`` frames, from its 25-frame stages."""
    out = []
    for row in rows:
        by_length = {}
        for frames in lengths:
            segments = segment_count(frames, c.NUM_FRAMES)
            by_length[frames] = row["first_frame"] + segments * (row["video"] + row["decode"])
        out.append({"endpoint": row["endpoint"], "steps": row["steps"], **by_length})
    return out


def print_chained(rows: list[dict[str, Any]], lengths: tuple[int, ...] = LENGTHS) -> None:
    heads = " | ".join(f"{n} frames ({segment_count(n, c.NUM_FRAMES)} seg.)" for n in lengths)
    print(f"| endpoint | steps | {heads} | {lengths[-1]} vs {lengths[0]} |")
    print(f"|---|---|{'---|' * len(lengths)}---|")
    for row in rows:
        cells = " | ".join(f"{row[n] / 1e12:.1f}" for n in lengths)
        ratio = row[lengths[-1]] / row[lengths[0]]
        print(f"| {row['endpoint']} | {row['steps']} | {cells} | {ratio:.2f}x |")


def request_for(kind: type, width: int, height: int) -> Any:
    size = {"width": width, "height": height}
    if "prompt" in kind.model_fields:
        return kind(prompt="a rocket", video_size=size)
    return kind(image_url="data:,", video_size=size)


def times_table(width: int, height: int, repeats: int) -> list[dict[str, Any]]:
    from PIL import Image

    pipeline = load_pipeline(TINY, choose("cpu", "fp32"))
    picture = Image.new("RGB", (width, height), (120, 80, 200))
    rows = []
    for label, kind, key, guidance in ROWS:
        request = request_for(kind, width, height)
        params = params_of(request, 7, None if "prompt" in kind.model_fields else picture)
        saved = pipeline.families[key]
        if guidance is not None:
            pipeline.families[key] = replace(saved, max_guidance_scale=guidance)
        samples: list[dict[str, float]] = []
        try:
            for _ in range(repeats + 1):  # the first run warms the caches; not counted
                video = pipeline.generate(replace(params))
                pipeline.to_mp4(video)
                samples.append({s: video.timings_s.get(Stage(s), 0.0) for s in STAGES})
        finally:
            pipeline.families[key] = saved
        stages = {s: statistics.median(run[s] for run in samples[1:]) for s in STAGES}
        rows.append({"endpoint": label, "steps": params.steps, **stages})
    return rows


def print_table(
    rows: list[dict[str, Any]], stages: tuple[str, ...], unit: str, scale: float, digits: int
) -> None:
    base = sum(rows[0][s] for s in stages)
    print(f"| endpoint | steps | {' | '.join(stages)} | total | vs first row |")
    print(f"|---|---|{'---|' * len(stages)}---|---|")
    for row in rows:
        total = sum(row[s] for s in stages)
        cells = " | ".join(f"{row[s] / scale:.{digits}f}" for s in stages)
        print(
            f"| {row['endpoint']} | {row['steps']} | {cells} | "
            f"{total / scale:.{digits}f} {unit} | {total / base:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256x128", help="tiny-preset size, WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-times", action="store_true", help="count FLOPs only")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)
    print("FLOPs per default request, full-size models (1024x576, 25 frames), TFLOP:")
    flops = flops_table()
    print_table(flops, STAGES[:3], "TFLOP", 1e12, 1)  # the MP4 encode: no tensors
    print("\nFLOPs per default request by num_frames (chained segments), TFLOP:")
    print_chained(chained_table(flops))
    if not args.no_times:
        print(
            f"\nCPU wall time per request, tiny preset ({width}x{height}, default steps, "
            f"median of {args.repeats}), {torch.get_num_threads()} threads, s:"
        )
        print_table(times_table(width, height, args.repeats), STAGES, "s", 1.0, 3)


if __name__ == "__main__":
    main()
