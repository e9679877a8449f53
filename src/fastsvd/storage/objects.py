"""What every storage backend shares: file ids and streamed downloads (apart from the package,
so that the backends the package opens do not import it back)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

CHUNK_BYTES = 256 * 1024


def check_id(file_id: str) -> str:
    """``file_id``, which must be alphanumeric (it becomes a path or an object key)."""
    if not file_id.isalnum():
        raise ValueError("file ids are alphanumeric")
    return file_id


@dataclass(frozen=True)
class Download:
    """Some or all of an object's bytes, as an HTTP answer needs them."""

    status: int  # 200, or 206 for a satisfiable Range
    chunks: Iterator[bytes]
    headers: dict[str, str]  # content-length, content-range, accept-ranges, etag
