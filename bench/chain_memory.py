"""Host peak memory of a long video on the tiny preset: the frames streamed into the MP4 as each
segment is made (what the worker does), against every frame held first (``generate``, then
``to_mp4``: what the worker did before videos were chained).

Each case runs in a fresh process, which reports its peak resident set (``ru_maxrss``) after
loading the models and after the request; the difference is what the request itself took. The
processes run with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``): by default glibc
raises it as large blocks are freed, the model's activations then stay in the heap, and the
peak of one and the same case varies by about 100 MiB from run to run, more than the frames.

    .venv/bin/python bench/chain_memory.py [--size 256x128] [--frames 25 241]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODES = ("stream", "held")
MMAP_THRESHOLD = 64 * 1024  # bytes: blocks this large or larger are mapped, unmapped when freed


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one(frames: int, mode: str, width: int, height: int) -> dict[str, float]:
    """One request in this process; its figures."""
    import time

    from PIL import Image

    from fastsvd.pipeline.quiet import quiet_libraries

    quiet_libraries()
    from fastsvd.pipeline.device import choose
    from fastsvd.pipeline.loading import load_pipeline
    from fastsvd.pipeline.params import GenerationParams
    from fastsvd.pipeline.presets import TINY

    pipeline = load_pipeline(TINY, choose("cpu", "fp32"))
    params = GenerationParams(
        width=width,
        height=height,
        steps=1,
        fps=10,
        motion_bucket_id=127,
        noise_aug_strength=0.02,
        seed=0,
        image=Image.new("RGB", (width, height), (120, 80, 200)),
        num_frames=frames,
    )
    loaded = peak_mib()
    started = time.perf_counter()
    if mode == "stream":
        data = pipeline.to_mp4(pipeline.stream(params))
    else:
        data = pipeline.to_mp4(pipeline.generate(params))
    return {
        "loaded_mib": loaded,
        "peak_mib": peak_mib(),
        "seconds": time.perf_counter() - started,
        "mp4_bytes": len(data),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256x128", help="WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, nargs="+", default=[25, 241])
    parser.add_argument("--one", nargs=2, metavar=("FRAMES", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], width, height)))
        return
    print(f"tiny preset, {width}x{height}, 1 step, CPU; peak resident memory, MiB:")
    print("| frames | MP4 | after loading | peak | the request's own | seconds |")
    print("|---|---|---|---|---|---|")
    for frames in args.frames:
        for mode in MODES:
            command = [sys.executable, __file__, "--size", args.size, "--one", str(frames), mode]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
            out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            how = "streamed as made" if mode == "stream" else "every frame held first"
            print(
                f"| {frames} | {how} | {r['loaded_mib']:.0f} | {r['peak_mib']:.0f} | "
                f"{r['peak_mib'] - r['loaded_mib']:.0f} | {r['seconds']:.1f} |"
            )


if __name__ == "__main__":
    main()
