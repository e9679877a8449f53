"""fastsvd's pipeline against the stock diffusers pipelines, on the tiny preset, in one run.

Both sides run the same models with the same request: the stock ``StableDiffusionXLPipeline``
then ``StableVideoDiffusionPipeline.__call__`` called directly, versus ``VideoPipeline``
(hooks, timings, its own denoising loop). Runs alternate so drift hits both alike; the figure
is the ratio of medians (target: within 5%).

    .venv/bin/python bench/overhead.py [--repeats 7] [--steps 8] [--size 64x64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from fastsvd.pipeline.quiet import quiet_libraries

quiet_libraries()

from fastsvd.pipeline import stock  # noqa: E402
from fastsvd.pipeline.core import VideoPipeline, load_pipeline  # noqa: E402
from fastsvd.pipeline.device import choose  # noqa: E402
from fastsvd.pipeline.hooks import Hooks, StepEvent  # noqa: E402
from fastsvd.pipeline.params import GenerationParams  # noqa: E402
from fastsvd.pipeline.presets import TINY  # noqa: E402
from fastsvd.runner import params_of  # noqa: E402
from fastsvd.schema import TextToVideoInput  # noqa: E402


def baseline(pipeline: VideoPipeline, params: GenerationParams) -> np.ndarray:
    return stock.generate(pipeline, params)[1]


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

    pipeline = load_pipeline(TINY, choose("cpu", "fp32"))
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
