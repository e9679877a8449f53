"""Loading the real models: a Hugging Face id, a local folder, or the Hugging Face cache.

``huggingface_hub`` decides where weights come from: a folder path is read as it is; an id is
looked up in the cache (``HF_HOME`` / ``HF_HUB_CACHE``) and downloaded when missing, unless
``HF_HUB_OFFLINE=1``. Every way this can fail becomes one ``ModelNotAvailable`` naming the model
and saying how to provide it.
"""

from __future__ import annotations

import os
import textwrap
from typing import Any, TypeVar

import torch
from diffusers import DiffusionPipeline

from fastsvd.errors import ModelNotAvailable

P = TypeVar("P", bound=DiffusionPipeline)


def load_pretrained(cls: type[P], model: str, *, dtype: torch.dtype, role: str, env_var: str) -> P:
    """``cls.from_pretrained(model)`` in ``dtype``; half-precision weight files preferred."""
    attempts: list[dict[str, Any]] = [{}]
    if dtype != torch.float32 and not os.path.isdir(model):
        attempts.insert(0, {"variant": "fp16"})  # half the download, same numbers in bf16/fp16
    error: Exception | None = None
    for extra in attempts:
        try:
            pipe: P = cls.from_pretrained(model, dtype=dtype, **extra)
            return pipe
        except (OSError, ValueError) as exc:  # hub, cache and file errors all land here
            error = exc
    assert error is not None
    reason = " ".join(str(error).split()) or type(error).__name__
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    raise ModelNotAvailable(
        f"{role} model '{model}' is not available ({textwrap.shorten(reason, 160)}). "
        f"Download it with `hf download {model}` (gated models need HF_TOKEN)"
        f"{', then run again; offline mode is on' if offline else ''}; "
        f"or set {env_var} to a local folder; or try everything without weights on the "
        "tiny preset (--preset tiny; make run PRESET=tiny)."
    ) from error
