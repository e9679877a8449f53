"""Where file bytes live: a folder on this machine (the embedded default), or any S3-compatible
object store (``FASTSVD_STORAGE_URL=s3://bucket/prefix``) shared by many machines.

Files are addressed by an unguessable id; their metadata (name, type, size, expiry) is in the
``files`` table (``store.files``), written only after the bytes are stored, so a record always
has its bytes. A local write goes to a temporary name first and is renamed into place; an object
store's PUT is atomic by itself. Either way a crash never leaves half a file under a real id.
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastsvd.errors import FastSVDError, RangeNotSatisfiable

CHUNK_BYTES = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _check_id(file_id: str) -> str:
    if not file_id.isalnum():
        raise ValueError("file ids are alphanumeric")
    return file_id


class LocalStorage:
    """Files under ``root``, two levels of fan-out by id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, file_id: str) -> Path:
        """Where ``file_id`` is (or would be) stored."""
        _check_id(file_id)
        return self.root / file_id[:2] / file_id

    def put(self, file_id: str, data: bytes, content_type: str = "") -> None:
        """Store ``data`` under ``file_id`` atomically."""
        target = self.path(file_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def exists(self, file_id: str) -> bool:
        """Whether ``file_id`` has bytes stored."""
        return self.path(file_id).is_file()

    def read(self, file_id: str) -> bytes:
        """The bytes of ``file_id``."""
        return self.path(file_id).read_bytes()

    def delete(self, file_id: str) -> None:
        """Remove ``file_id``'s bytes, if any."""
        self.path(file_id).unlink(missing_ok=True)


@dataclass(frozen=True)
class Download:
    """Some or all of an object's bytes, as an HTTP answer needs them."""

    status: int  # 200, or 206 for a satisfiable Range
    chunks: Iterator[bytes]
    headers: dict[str, str]  # content-length, content-range, accept-ranges, etag


class S3Storage:
    """Objects ``<prefix><id>`` in one bucket of any S3-compatible store.

    Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY``, a profile, an instance role); ``endpoint_url`` points at MinIO,
    Ceph, R2 or another store instead of AWS.
    """

    def __init__(
        self, url: str, *, endpoint_url: str | None = None, region: str | None = None
    ) -> None:
        import boto3
        from botocore.config import Config

        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise FastSVDError(f"storage URL {url!r}: expected s3://bucket[/prefix]")
        self.bucket = parts.netloc
        prefix = parts.path.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=32,
        )
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    def key(self, file_id: str) -> str:
        """The object key of ``file_id``."""
        return self.prefix + _check_id(file_id)

    def put(self, file_id: str, data: bytes, content_type: str = "") -> None:
        """Store ``data`` (an S3 PUT is atomic: readers see all of it or nothing)."""
        extra = {"ContentType": content_type} if content_type else {}
        self.client.put_object(Bucket=self.bucket, Key=self.key(file_id), Body=data, **extra)

    def exists(self, file_id: str) -> bool:
        """Whether the object exists."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(file_id))
        except self.client.exceptions.ClientError as exc:
            if _status(exc) == 404:
                return False
            raise
        return True

    def read(self, file_id: str) -> bytes:
        """The object's bytes."""
        body = self.client.get_object(Bucket=self.bucket, Key=self.key(file_id))["Body"]
        return bytes(body.read())

    def delete(self, file_id: str) -> None:
        """Remove the object (a missing one is not an error)."""
        self.client.delete_object(Bucket=self.bucket, Key=self.key(file_id))

    def download(self, file_id: str, range_header: str | None) -> Download | None:
        """The object (or the single byte range asked for), streamed; None if missing."""
        extra: dict[str, str] = {}
        if range_header and _RANGE.match(range_header.strip()):
            extra["Range"] = range_header.strip()  # one range; others get the whole object
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key(file_id), **extra)
        except self.client.exceptions.ClientError as exc:
            status = _status(exc)
            if status == 404:
                return None
            if status == 416:
                raise RangeNotSatisfiable(f"range {range_header} is outside the file") from exc
            raise
        headers = {
            "content-length": str(answer["ContentLength"]),
            "accept-ranges": "bytes",
        }
        if answer.get("ContentRange"):
            headers["content-range"] = answer["ContentRange"]
        if answer.get("ETag"):
            headers["etag"] = answer["ETag"]
        status = 206 if "content-range" in headers else 200
        return Download(status, answer["Body"].iter_chunks(CHUNK_BYTES), headers)

    def check(self) -> None:
        """Fail now, with the reason, if the bucket cannot be reached."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise FastSVDError(f"storage bucket {self.bucket!r} is not reachable: {exc}") from exc


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


Storage = LocalStorage | S3Storage


def open_storage(
    url: str | None, data_dir: Path, *, endpoint_url: str | None = None, region: str | None = None
) -> Storage:
    """The storage ``url`` names: ``s3://bucket/prefix``, ``file:///folder``, or (None) the
    ``files`` folder under ``data_dir``."""
    if url is None:
        return LocalStorage(data_dir / "files")
    if url.startswith("s3://"):
        return S3Storage(url, endpoint_url=endpoint_url, region=region)
    if url.startswith("file://"):
        return LocalStorage(Path(urllib.parse.urlsplit(url).path))
    raise FastSVDError(f"storage URL {url!r}: expected s3://bucket[/prefix] or file:///folder")
