"""Loading the released weights: host memory and time, fastsvd's loader against plain diffusers.

Full-size models are built from the bundled configs with random weights and saved once, in the
layouts users download: SVD-XT as ``hf download ... --include`` leaves it in the Hugging Face
cache (configs and fp16 variant files only), and AnimateLCM-SVD-xt's single fp32 U-Net file
(6.1 GB; written tensor by tensor). Each loader then runs in its own child process, so each
peak is its own, loading onto the CPU in bf16:

- ``old``: fastsvd before the loader rewrite (b508dfd): the pipeline's ``from_pretrained`` with
  ``variant="fp16"`` and no accelerate (``low_cpu_mem_usage=False``); the single file read whole
  with ``load_file``, then cast.
- ``diffusers``: plain ``StableVideoDiffusionPipeline.from_pretrained(..., variant="fp16",
  torch_dtype=torch.bfloat16)`` with accelerate installed (its default ``low_cpu_mem_usage``).
- ``fastsvd``: ``pipeline/loading.py``: each component on its own, straight into its dtype and
  device; the single file tensor by tensor.

It reports the host's peak RSS above the child's baseline (after imports), the bytes of the
loaded models (on a CPU they stay in host memory), the overhead above them, and the seconds.

    .venv/bin/python bench/loading.py [--dir /tmp/fastsvd-loading] [--cases video,lcm]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = "bench/svd-xt"  # the hub id the saved SVD-XT is cached under
LCM_FILE = "AnimateLCM-SVD-xt-1.1.safetensors"
LOADERS = ("old", "diffusers", "fastsvd")
CASES = {"video": LOADERS, "lcm": ("old", "fastsvd")}  # the single file has no diffusers loader


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def model_bytes(modules: list[Any]) -> int:
    import torch

    seen: set[int] = set()
    total = 0
    for module in modules:
        if not isinstance(module, torch.nn.Module):
            continue
        for t in [*module.parameters(), *module.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def cache_root(root: Path) -> Path:
    return root / "hub"


def snapshot(root: Path) -> Path:
    return cache_root(root) / f"models--{REPO.replace('/', '--')}" / "snapshots" / ("0" * 40)


def prepare(root: Path) -> None:
    """Save the full-size random-weight models in the released layouts (once)."""
    import torch

    from fastsvd.pipeline import full_size

    folder = snapshot(root)
    lcm = root / "lcm" / LCM_FILE
    if folder.is_dir() and lcm.is_file():
        return
    started = time.perf_counter()
    torch.set_default_dtype(torch.float16)  # built in fp16: half the host memory to build
    torch.manual_seed(0)
    pipe = full_size.build_video(torch.device("cpu"), torch.float16)
    torch.set_default_dtype(torch.float32)
    pipe.save_pretrained(folder, variant="fp16")
    refs = folder.parents[1] / "refs"
    refs.mkdir(exist_ok=True)
    (refs / "main").write_text("0" * 40)
    lcm.parent.mkdir(parents=True, exist_ok=True)
    write_fp32(pipe.unet.state_dict(), lcm)
    print(f"saved the full-size models in {time.perf_counter() - started:.0f} s", flush=True)


def write_fp32(state: dict[str, Any], path: Path) -> None:
    """``state`` as an fp32 safetensors file, one tensor in memory at a time (the format: a
    little-endian u64 header size, the JSON header of offsets, then the raw tensors)."""
    header: dict[str, Any] = {}
    offset = 0
    for name, tensor in state.items():
        size = tensor.numel() * 4
        header[name] = {
            "dtype": "F32",
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for tensor in state.values():
            f.write(tensor.float().contiguous().numpy().tobytes())


def child(case: str, loader: str, root: Path) -> dict[str, float]:
    """Load ``case`` with ``loader`` in this process; its figures."""
    import torch
    from diffusers import StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel

    from fastsvd.pipeline import model_configs as configs
    from fastsvd.pipeline.device import Placement
    from fastsvd.pipeline.loading import load_pretrained, load_single_file
    from fastsvd.pipeline.presets import SVD_XT
    from fastsvd.pipeline.quiet import quiet_libraries
    from fastsvd.pipeline.weights import manifest

    quiet_libraries()
    os.environ["HF_HUB_CACHE"] = str(cache_root(root))
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_CACHE = str(cache_root(root))
    cpu = Placement(torch.device("cpu"), torch.bfloat16)
    baseline = rss_bytes()
    started = time.perf_counter()
    modules: list[Any]
    if case == "video":
        if loader == "fastsvd":
            pipe = load_pretrained(
                StableVideoDiffusionPipeline,
                REPO,
                cpu,
                role="video",
                env_var="FASTSVD_VIDEO_MODEL",
                weights=manifest(SVD_XT)["video"],
            )
        else:
            extra = {"low_cpu_mem_usage": False} if loader == "old" else {}
            pipe = StableVideoDiffusionPipeline.from_pretrained(
                REPO, variant="fp16", dtype=torch.bfloat16, **extra
            )
        modules = list(pipe.components.values())
    else:
        path = root / "lcm" / LCM_FILE
        config = configs.load(configs.SVD_XT, "unet")
        if loader == "fastsvd":
            unet = load_single_file(
                UNetSpatioTemporalConditionModel,
                config,
                str(path),
                cpu,
                default_file=LCM_FILE,
                role="few-step video",
                env_var="FASTSVD_FEW_STEP_VIDEO_MODEL",
            )
        else:  # b508dfd's load_single_file: the whole file, then the cast
            from safetensors.torch import load_file

            state = load_file(path)
            with torch.device("meta"):
                unet = UNetSpatioTemporalConditionModel.from_config(config)
            unet.load_state_dict(state, strict=True, assign=True)
            del state
            unet = unet.to(dtype=torch.bfloat16)
        modules = [unet]
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "seconds": seconds,
        "peak_above_baseline": peak - baseline,
        "loaded": model_bytes(modules),
        "largest": max(model_bytes([m]) for m in modules),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/fastsvd-loading"))
    parser.add_argument("--cases", default="video,lcm")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "LOADER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.dir)))
        return
    prepare(args.dir)
    gb = 1e9
    print(f"{'case':6} {'loader':10} {'peak above baseline':>20} {'loaded':>8} {'overhead':>9} "
          f"{'s':>6}")  # fmt: skip
    for case in args.cases.split(","):
        for loader in CASES[case]:
            out = subprocess.run(
                [sys.executable, __file__, "--dir", str(args.dir), "--child", case, loader],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            overhead = r["peak_above_baseline"] - r["loaded"]
            print(
                f"{case:6} {loader:10} {r['peak_above_baseline'] / gb:17.2f} GB "
                f"{r['loaded'] / gb:5.2f} GB {overhead / gb:6.2f} GB "
                f"{r['seconds']:6.1f}   (largest component {r['largest'] / gb:.2f} GB)",
                flush=True,
            )


if __name__ == "__main__":
    main()
