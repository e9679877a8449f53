"""A request's inputs, read where the job runs.

An ``image_url`` is one of three things: a ``data:`` URI (decoded), a file uploaded to this
server (read from the file storage, never fetched), or a public URL (fetched through the network
guard). ``uploaded_file_id`` is the one rule for "uploaded here"; the submit-time check
(``api/files.check_image_url``) reads URLs with it too.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable

from PIL import Image

from fastsvd import media
from fastsvd.errors import InvalidInput
from fastsvd.net.fetch import fetch
from fastsvd.storage import Storage
from fastsvd.store.files import FileStore


def uploaded_file_id(url: str, field: str = "image_url") -> str | None:
    """The id of the file uploaded here that ``url`` names (``.../files/<id>/<name>``), or
    None for any other URL. ``InvalidInput`` naming ``field`` when it is not a URL at all."""
    try:
        parts = urllib.parse.urlsplit(url).path.split("/")
    except ValueError:
        raise InvalidInput(field, "not a valid URL") from None
    if len(parts) >= 3 and parts[1] == "files" and parts[2].isalnum():
        return parts[2]
    return None


def image_loader(
    files: FileStore, storage: Storage, *, allow_private: bool = False
) -> Callable[[str], Image.Image]:
    """Reads ``image_url``: a data: URI, a file uploaded to this server, or a public URL."""

    def load(url: str) -> Image.Image:
        if url.startswith("data:"):
            return media.decode_data_uri_image(url)
        file_id = uploaded_file_id(url)
        if file_id is not None:
            record = files.get(file_id)
            if record is not None and storage.exists(record.id):
                return media.decode_image(storage.read(record.id))
        _content_type, data = fetch(url, "image_url", allow_private=allow_private)
        return media.decode_image(data)

    return load
