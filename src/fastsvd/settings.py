"""Settings: one frozen object, read from the environment once at start-up and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from fastsvd.constants import DEFAULT_PRESET

ENV_PREFIX = "FASTSVD_"


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with its environment variable in the comment."""

    preset: str = DEFAULT_PRESET  # FASTSVD_PRESET: svd-xt-1.1, svd-xt or tiny
    device: str | None = None  # FASTSVD_DEVICE: cuda, cuda:1, cpu (default: the best there is)
    dtype: str | None = None  # FASTSVD_DTYPE: bf16, fp16, fp32 (default: bf16 on CUDA)
    video_model: str | None = None  # FASTSVD_VIDEO_MODEL: HF id or folder of the SVD weights
    first_frame_model: str | None = None  # FASTSVD_FIRST_FRAME_MODEL: HF id or folder (SDXL)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``FASTSVD_*`` variables; unset or empty ones keep their defaults."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name.upper(), "").strip()
            return value or None

        return cls(
            preset=get("preset") or DEFAULT_PRESET,
            device=get("device"),
            dtype=get("dtype"),
            video_model=get("video_model"),
            first_frame_model=get("first_frame_model"),
        )

    def with_overrides(self, **values: str | None) -> Settings:
        """A copy with every given value that is not None replaced (command-line flags)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})
