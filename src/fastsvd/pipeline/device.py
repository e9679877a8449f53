"""Which device and dtype a worker runs on: chosen from the hardware, overridable; and the
platform checks a worker makes at start.

``probe`` reads what this process can see (the seam tests replace with a ``Platform`` of their
own): the GPU, its memory and compute capability, torch's version and CUDA build, the driver.
``choose`` turns it into a ``Placement``, refusing what would go badly:

- a real preset with no usable CUDA GPU stops with the cause (no GPU; a CPU-only torch; a driver
  older than torch's CUDA build, with both versions) unless ``FASTSVD_DEVICE=cpu`` says so;
- below compute capability 8.0 (V100, T4, RTX 20xx) fp16, not bf16: those GPUs report bf16 as
  supported but emulate it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace

import torch

from fastsvd.constants import NVIDIA_SMI_TIMEOUT_S
from fastsvd.errors import FastSVDError, NoUsableGpu

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
GiB = 1024**3
BF16_CAPABILITY = (8, 0)  # Ampere: bf16 in hardware


@dataclass(frozen=True)
class Placement:
    """A torch device and the dtype the models run in there."""

    device: torch.device
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


@dataclass(frozen=True)
class Platform:
    """What this process can see of its accelerator (the first visible CUDA GPU)."""

    torch_version: str
    cuda_build: str | None  # the CUDA version torch was built for; None: a CPU-only build
    cuda_usable: bool  # torch.cuda.is_available()
    cuda_error: str | None = None  # torch's own words when CUDA failed to initialise
    gpu_name: str | None = None
    total_bytes: int | None = None
    capability: tuple[int, int] | None = None
    driver: str | None = None  # the NVIDIA driver's version (nvidia-smi)
    driver_cuda: str | None = None  # the newest CUDA the driver supports (nvidia-smi)

    def describe(self) -> str:
        """One line: the GPU, its memory and capability, torch and CUDA."""
        build = f"CUDA {self.cuda_build}" if self.cuda_build else "CPU-only build"
        driver = f", driver {self.driver} (CUDA {self.driver_cuda})" if self.driver else ""
        if not self.cuda_usable:
            return f"no usable CUDA GPU; torch {self.torch_version}, {build}{driver}"
        major, minor = self.capability or (0, 0)
        return (
            f"{self.gpu_name}, {(self.total_bytes or 0) / GiB:.1f} GiB, compute {major}.{minor}; "
            f"torch {self.torch_version}, {build}{driver}"
        )

    def why_no_cuda(self) -> str:
        """The cause, in one sentence, when CUDA is not usable."""
        if self.cuda_build is None:
            if self.driver:
                return (
                    f"torch {self.torch_version} is a CPU-only build, but this machine has an "
                    f"NVIDIA GPU (driver {self.driver}): install a CUDA build of torch "
                    "(`make install` on this machine)"
                )
            return f"no NVIDIA GPU here, and torch {self.torch_version} is a CPU-only build"
        if self.driver is None:
            return "no NVIDIA GPU is visible (no driver answers: nvidia-smi finds nothing)"
        if self.driver_cuda and _version(self.driver_cuda) < _version(self.cuda_build):
            return (
                f"the NVIDIA driver {self.driver} supports CUDA up to {self.driver_cuda}, but "
                f"torch {self.torch_version} was built for CUDA {self.cuda_build}: update the "
                f"driver, or install a torch built for CUDA {self.driver_cuda} or older"
            )
        reason = f" ({self.cuda_error})" if self.cuda_error else ""
        return (
            f"CUDA does not initialise{reason} with driver {self.driver} and torch "
            f"{self.torch_version} (CUDA {self.cuda_build}); check CUDA_VISIBLE_DEVICES"
        )


def probe() -> Platform:
    """This process's platform, read from torch and (for the driver) ``nvidia-smi``."""
    driver, driver_cuda = _nvidia_smi()
    base = Platform(
        torch_version=torch.__version__.split("+")[0],
        cuda_build=torch.version.cuda,
        cuda_usable=False,
        driver=driver,
        driver_cuda=driver_cuda,
    )
    try:
        usable = torch.cuda.is_available()
        if usable:
            torch.cuda.init()
    except Exception as exc:  # torch's own words: the driver, the runtime, no device
        return replace(base, cuda_error=str(exc).splitlines()[0] if str(exc) else None)
    if not usable:
        return base
    props = torch.cuda.get_device_properties(0)
    return replace(
        base,
        cuda_usable=True,
        gpu_name=props.name,
        total_bytes=int(props.total_memory),
        capability=(props.major, props.minor),
    )


def choose(
    device: str | None = None,
    dtype: str | None = None,
    *,
    real: bool = False,
    platform: Platform | None = None,
) -> Placement:
    """CUDA with bf16 (fp16 below compute capability 8.0), else CPU with float32.

    ``device`` ("cuda", "cuda:1", "cpu") and ``dtype`` ("bf16", "fp16", "fp32") override. With
    ``real`` (a preset of real weights) and no usable CUDA, only ``device="cpu"`` runs on the CPU;
    anything else stops with the cause. ``platform`` defaults to ``probe()``.
    """
    if device is not None and device.strip().lower() == "cpu":
        chosen, platform = torch.device("cpu"), None  # nothing to ask of a GPU
    else:
        platform = platform or probe()
        if device:
            try:
                chosen = torch.device(device)
            except RuntimeError as exc:
                raise FastSVDError(f"FASTSVD_DEVICE: unknown device {device!r}") from exc
        elif platform.cuda_usable or real:
            chosen = torch.device("cuda")
        else:
            chosen = torch.device("cpu")  # the tiny preset: the CPU is what it is for
        if chosen.type == "cuda" and not platform.cuda_usable:
            raise NoUsableGpu(
                f"no usable CUDA GPU: {platform.why_no_cuda()}. To run on the CPU anyway "
                "(minutes per video), set FASTSVD_DEVICE=cpu; to try without weights, "
                "--preset tiny"
            )
    if dtype:
        if dtype.lower() not in _DTYPES:
            raise FastSVDError(f"FASTSVD_DTYPE: unknown dtype {dtype!r}; use bf16, fp16 or fp32")
        chosen_dtype = _DTYPES[dtype.lower()]
    elif chosen.type == "cuda":
        capability = platform.capability if platform is not None else None
        bf16 = capability is not None and capability >= BF16_CAPABILITY
        chosen_dtype = torch.bfloat16 if bf16 else torch.float16
    else:
        chosen_dtype = torch.float32
    return Placement(chosen, chosen_dtype)


# CUDA's own words for errors after which the context is unusable: every later call fails too
# (an out-of-memory error is not one of them)
GPU_FAULTS = (
    "illegal memory access",
    "illegal instruction",
    "unspecified launch failure",
    "uncorrectable ecc error",
    "device-side assert",
    "misaligned address",
    "launch timed out",
    "hardware stack error",
    "an error occurred on the gpu",  # Xid 79: the GPU has fallen off the bus
    "cuda error: unknown error",
    "cublas_status_execution_failed",
    "cudnn_status_execution_failed",
)


def is_gpu_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA error that leaves this process's GPU context unusable."""
    if not isinstance(exc, RuntimeError):  # torch.AcceleratorError is one
        return False
    text = str(exc).lower()
    return any(words in text for words in GPU_FAULTS)


def _nvidia_smi() -> tuple[str | None, str | None]:
    """The driver's version and the newest CUDA it supports, or (None, None)."""
    if shutil.which("nvidia-smi") is None:
        return None, None
    try:
        out = subprocess.run(
            ["nvidia-smi"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
            env=os.environ,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    driver = re.search(r"Driver Version:\s*([\d.]+)", out)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", out)
    return (driver.group(1) if driver else None, cuda.group(1) if cuda else None)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])
