"""The real model configs shipped inside the package (read from the models' Hugging Face repos).

They build full-size models with random weights for benchmarks, and shrunk copies of the same
classes for the ``tiny`` preset, without any download.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

SVD_XT = "svd-xt"
SDXL_BASE = "sdxl-base-1.0"

_FILE_NAMES = ("config.json", "scheduler_config.json", "preprocessor_config.json")


def load(model: str, component: str) -> dict[str, Any]:
    """The config of ``component`` (``unet``, ``vae``, ...) of ``model`` as a fresh dict."""
    folder = (
        resources.files("fastsvd.pipeline").joinpath("configs").joinpath(model).joinpath(component)
    )
    for name in _FILE_NAMES:
        path = folder.joinpath(name)
        if path.is_file():
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return data
    raise FileNotFoundError(f"no config for {model}/{component}")
