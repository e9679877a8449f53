"""A single safetensors file (a distilled U-Net as its authors publish it): where it is, and
its tensors read one at a time, straight into their dtype and device."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from fastsvd.pipeline.device import Placement


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
    if len(parts) < 2 or not all(parts) or local.is_absolute():
        raise FileNotFoundError(f"no file or folder {reference} (nor is it owner/name[/file])")
    from huggingface_hub import hf_hub_download

    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or default_file
    return Path(hf_hub_download(repo, filename))


# safetensors' dtype names
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_tensors(path: Path, placement: Placement) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a safetensors file, one at a time, each read with plain reads (not
    mapped: a mapped file's pages would count in the host's memory until it is closed) and
    cast and moved to ``placement`` before the next is read. The format: a little-endian u64
    header size, a JSON header of names, dtypes, shapes and byte offsets, then the data."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > 100_000_000:
            raise ValueError(f"{path} is not a safetensors file (header of {size} bytes)")
        header = json.loads(f.read(size))
        start = 8 + size
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _DTYPES:
                raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
            begin, end = info["data_offsets"]
            buffer = bytearray(end - begin)
            f.seek(start + begin)
            if f.readinto(buffer) != len(buffer):
                raise ValueError(f"{path} is truncated (tensor {name})")
            dtype = _DTYPES[info["dtype"]]
            tensor = (
                torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
            )
            # (the tensor keeps its buffer alive when the cast is no copy)
            target = placement.dtype if tensor.is_floating_point() else dtype
            yield name, tensor.reshape(info["shape"]).to(device=placement.device, dtype=target)
