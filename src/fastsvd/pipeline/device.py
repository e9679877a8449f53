"""Which device and dtype a worker runs on: chosen from the hardware, overridable."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastsvd.errors import FastSVDError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class Placement:
    """A torch device and the dtype the models run in there."""

    device: torch.device
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


def choose(device: str | None = None, dtype: str | None = None) -> Placement:
    """CUDA with bf16 (fp16 where bf16 is unsupported), else CPU with float32.

    ``device`` ("cuda", "cuda:1", "cpu") and ``dtype`` ("bf16", "fp16", "fp32") override.
    """
    if device:
        try:
            chosen = torch.device(device)
        except RuntimeError as exc:
            raise FastSVDError(f"unknown device {device!r}") from exc
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise FastSVDError(f"device {device!r} asked for, but no CUDA GPU is visible")
    else:
        chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype:
        if dtype.lower() not in _DTYPES:
            raise FastSVDError(f"unknown dtype {dtype!r}; use one of bf16, fp16, fp32")
        chosen_dtype = _DTYPES[dtype.lower()]
    elif chosen.type == "cuda":
        chosen_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        chosen_dtype = torch.float32
    return Placement(chosen, chosen_dtype)
