"""File bytes in any S3-compatible object store (AWS S3, MinIO, Ceph, R2), shared by many
machines."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastsvd import constants as c
from fastsvd.errors import FastSVDError, RangeNotSatisfiable, StorageUnavailable
from fastsvd.storage.objects import CHUNK_BYTES, Download, check_id

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

TOTAL_ATTEMPTS = 3  # botocore's own quick retries of one call (throttling, a reset connection)


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
        self.url = f"s3://{self.bucket}/{self.prefix}"
        config = Config(
            retries={"total_max_attempts": TOTAL_ATTEMPTS, "mode": "standard"},
            connect_timeout=c.S3_CONNECT_TIMEOUT_S,
            read_timeout=c.S3_READ_TIMEOUT_S,
            tcp_keepalive=True,  # a dropped link under a pooled connection is noticed
            max_pool_connections=32,
        )
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    def key(self, file_id: str) -> str:
        """The object key of ``file_id``."""
        return self.prefix + check_id(file_id)

    def put(self, file_id: str, data: bytes, content_type: str = "") -> None:
        """Store ``data`` (an S3 PUT is atomic: readers see all of it or nothing)."""
        extra = {"ContentType": content_type} if content_type else {}
        with self.reachable():
            self.client.put_object(Bucket=self.bucket, Key=self.key(file_id), Body=data, **extra)

    def exists(self, file_id: str) -> bool:
        """Whether the object exists."""
        try:
            with self.reachable():
                self.client.head_object(Bucket=self.bucket, Key=self.key(file_id))
        except self.client.exceptions.ClientError as exc:
            if _status(exc) == 404:
                return False
            raise
        return True

    def read(self, file_id: str) -> bytes:
        """The object's bytes."""
        with self.reachable():
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(file_id))["Body"]
            return bytes(body.read())

    def delete(self, file_id: str) -> None:
        """Remove the object (a missing one is not an error)."""
        with self.reachable():
            self.client.delete_object(Bucket=self.bucket, Key=self.key(file_id))

    def download(self, file_id: str, range_header: str | None) -> Download | None:
        """The object (or the single byte range asked for), streamed; None if missing."""
        extra: dict[str, str] = {}
        if range_header and _RANGE.match(range_header.strip()):
            extra["Range"] = range_header.strip()  # one range; others get the whole object
        try:
            with self.reachable():
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

    def local_path(self, file_id: str) -> Path | None:
        """None: the bytes are in the bucket, and the server proxies them (``download``)."""
        return None

    def check(self) -> None:
        """Fail now, with the reason, if the bucket cannot be reached."""
        try:
            with self.reachable():
                self.client.head_bucket(Bucket=self.bucket)
        except StorageUnavailable:
            raise
        except self.client.exceptions.ClientError as exc:
            if _status(exc) == 404:  # HEAD answers have no error code to tell more
                raise StorageUnavailable(f"the object store {self.url} has no bucket") from exc
            raise FastSVDError(f"storage bucket {self.bucket!r} is not reachable: {exc}") from exc
        except Exception as exc:
            raise FastSVDError(f"storage bucket {self.bucket!r} is not reachable: {exc}") from exc

    @contextmanager
    def reachable(self) -> Iterator[None]:
        """The storage's boundary: a store that cannot be reached, answers 5xx or has lost its
        bucket (a server restarted empty) becomes ``StorageUnavailable``; other errors pass."""
        from botocore.exceptions import ClientError, HTTPClientError, ResponseStreamingError
        from botocore.exceptions import ConnectionError as NoConnection

        try:
            yield
        except (NoConnection, HTTPClientError, ResponseStreamingError) as exc:
            raise StorageUnavailable(f"the object store {self.url} is unavailable: {exc}") from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if _status(exc) < 500 and code != "NoSuchBucket":
                raise
            raise StorageUnavailable(f"the object store {self.url} is unavailable: {exc}") from exc


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
