"""fastsvd's pipeline against the stock diffusers pipelines, on the tiny preset, in one run.

Both sides run the same models with the same request: the tiny models are saved to a folder,
then loaded twice, by diffusers' own ``StableDiffusionXLPipeline`` and
``StableVideoDiffusionPipeline.from_pretrained`` (called directly) and by fastsvd's loader into
``VideoPipeline`` (hooks, timings, its own denoising loop). Runs alternate so drift hits both
alike; the figure is the ratio of medians (target: within 5%).

    .venv/bin/python bench/overhead.py [--repeats 7] [--steps 8] [--size 64x64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from fastsvd.pipeline.quiet import quiet_libraries

quiet_libraries()

from fastsvd.hooks import Hooks, StepEvent  # noqa: E402
from fastsvd.pipeline.core import VideoPipeline  # noqa: E402
from fastsvd.pipeline.device import choose  # noqa: E402
from fastsvd.pipeline.loading import load_pipeline  # noqa: E402
from fastsvd.pipeline.params import GenerationParams  # noqa: E402
from fastsvd.pipeline.presets import STANDARD, TINY, Capability  # noqa: E402
from fastsvd.runner import params_of  # noqa: E402
from fastsvd.schema import TextToVideoInput  # noqa: E402
from fastsvd.settings import Settings  # noqa: E402
from stock import Stock  # noqa: E402 (bench/stock.py: this script's folder is on the path)


def ours(pipeline: VideoPipeline, params: GenerationParams) -> np.ndarray:
    steps: list[StepEvent] = []
    hooks = Hooks(on_step=steps.append, should_cancel=lambda: False)
    return pipeline.generate(params, hooks).frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", default="64x64")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    base = Capability(STANDARD, text=True).models  # the 20-step family's
    built = load_pipeline(TINY, choose("cpu", "fp32"), models=base)
    assert built.first_frame is not None
    folder = Path(tempfile.mkdtemp(prefix="fastsvd-overhead-"))
    built.video.save_pretrained(folder / "video")
    built.first_frame.save_pretrained(folder / "first-frame")
    pipeline = load_pipeline(
        TINY,
        choose("cpu", "fp32"),
        models=base,
        settings=Settings(
            video_model=str(folder / "video"), first_frame_model=str(folder / "first-frame")
        ),
    )
    stock = Stock.load(TINY, folder / "video", folder / "first-frame", torch.float32)

    def baseline(_pipeline: VideoPipeline, params: GenerationParams) -> np.ndarray:
        return stock.generate(params, pipeline.fps_id(params.fps))[1]

    req = TextToVideoInput(
        prompt="A rocket flying that is about to take off",
        video_size={"width": width, "height": height},  # type: ignore[arg-type]
        steps=args.steps,
    )
    params = params_of(req, seed=0)
    with torch.inference_mode():
        if not np.array_equal(ours(pipeline, params), baseline(pipeline, params)):
            raise SystemExit("fastsvd and the stock pipelines made different frames")
    times: dict[str, list[float]] = {"stock": [], "fastsvd": []}
    for i in range(args.repeats):
        for name, fn in (("stock", baseline), ("fastsvd", ours)):
            started = time.perf_counter()
            with torch.inference_mode():
                fn(pipeline, replace(params, seed=i))
            times[name].append(time.perf_counter() - started)

    threads = torch.get_num_threads()
    print(
        f"tiny preset, {width}x{height}, 25 frames, {args.steps} steps, "
        f"{args.repeats} runs each, torch {torch.__version__}, {threads} threads"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"  {name:8s} median {median:.3f} s  min {min(values):.3f} s  max {max(values):.3f} s"
        )
    ratio = statistics.median(times["fastsvd"]) / statistics.median(times["stock"])
    print(f"  fastsvd / stock = {ratio:.3f} (target <= 1.05); identical frames: yes")


if __name__ == "__main__":
    main()
