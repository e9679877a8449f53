"""Loading the real models: a Hugging Face id, a local folder, or the Hugging Face cache.

``huggingface_hub`` decides where weights come from: a folder path is read as it is; an id is
looked up in the cache (``HF_HOME`` / ``HF_HUB_CACHE``) and downloaded when missing, unless
``HF_HUB_OFFLINE=1``. Every way this can fail becomes one ``ModelNotAvailable`` naming the model
and saying how to provide it.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import DiffusionPipeline
from diffusers.configuration_utils import ConfigMixin

from fastsvd.errors import ModelNotAvailable

P = TypeVar("P", bound=DiffusionPipeline)
M = TypeVar("M", bound=torch.nn.Module)


def load_pretrained(
    cls: type[P],
    model: str,
    *,
    dtype: torch.dtype,
    role: str,
    env_var: str,
    components: dict[str, Any] | None = None,
) -> P:
    """``cls.from_pretrained(model)`` in ``dtype``; half-precision weight files preferred.
    ``components`` are used as given and not loaded (e.g. a distilled U-Net in place of the
    repo's own)."""
    attempts: list[dict[str, Any]] = [{}]
    if dtype != torch.float32 and not os.path.isdir(model):
        attempts.insert(0, {"variant": "fp16"})  # half the download, same numbers in bf16/fp16
    error: Exception | None = None
    for extra in attempts:
        try:
            pipe: P = cls.from_pretrained(model, dtype=dtype, **extra, **(components or {}))
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


def weights_file(reference: str, default_file: str) -> Path:
    """The local path of a single-file weights ``reference``: a ``.safetensors`` file, a folder
    holding ``default_file``, or ``owner/name[/file]`` on the Hugging Face hub (the cache first;
    downloaded unless ``HF_HUB_OFFLINE=1``). Raises OSError or ValueError when it is not there."""
    local = Path(reference).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        path = local / default_file
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        return path
    parts = reference.split("/")
    if len(parts) < 2 or not all(parts):
        raise FileNotFoundError(f"no file or folder {reference} (nor is it owner/name[/file])")
    from huggingface_hub import hf_hub_download

    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or default_file
    return Path(hf_hub_download(repo, filename))


def load_single_file(
    cls: type[M],
    config: dict[str, Any],
    reference: str,
    *,
    default_file: str,
    dtype: torch.dtype,
    role: str,
    env_var: str,
) -> M:
    """A ``cls`` of ``config`` with the full state dict in ``reference``'s safetensors file,
    loaded strictly (every key of the architecture, no other), in ``dtype``."""
    from huggingface_hub.errors import HfHubHTTPError
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        path = weights_file(reference, default_file)
        state = load_file(path)
    except (OSError, ValueError, HfHubHTTPError, SafetensorError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        parts = reference.split("/")
        fetch = (
            f"`hf download {'/'.join(parts[:2])} {'/'.join(parts[2:]) or default_file}`"
            if len(parts) >= 2 and not Path(reference).exists()
            else "it"
        )
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise ModelNotAvailable(
            f"{role} weights '{reference}' are not available ({textwrap.shorten(reason, 160)}). "
            f"Download {fetch}{', then run again; offline mode is on' if offline else ''}; "
            f"or set {env_var} to a local .safetensors file or a folder holding {default_file}; "
            "or try everything without weights on the tiny preset (--preset tiny)."
        ) from exc
    assert issubclass(cls, ConfigMixin)
    with torch.device("meta"):
        module = cls.from_config(config)
    try:  # assign: the file's tensors become the parameters, no second copy is made
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())
        raise ModelNotAvailable(
            f"{role} weights {path} do not fit {cls.__name__} ({textwrap.shorten(first, 200)}); "
            f"{env_var} must name a full state dict of that model"
        ) from exc
    left = [name for name, t in module.state_dict(keep_vars=True).items() if t.is_meta]
    if left:  # a tensor of the architecture the file did not give (not in its state dict)
        raise ModelNotAvailable(f"{role} weights {path} leave {left[0]} unset")
    loaded: M = module.to(dtype=dtype)
    return loaded
