"""Storage on a real S3-protocol server and on local disk: the same behaviour."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastsvd.errors import FastSVDError, RangeNotSatisfiable, StorageUnavailable
from fastsvd.services import Services
from fastsvd.settings import Settings
from fastsvd.storage import Storage, open_storage
from fastsvd.storage.local import LocalStorage
from fastsvd.storage.s3 import S3Storage
from tests.objectstore import CREDENTIALS, ObjectStore, free_port, s3_server

pytestmark = pytest.mark.process  # starts an S3-protocol server (moto)


@pytest.fixture(scope="module")
def s3() -> Iterator[ObjectStore]:
    with s3_server() as server:
        yield server


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, s3: ObjectStore) -> Storage:
    if request.param == "local":
        return open_storage(None, tmp_path)
    return open_storage(f"s3://{s3.new_bucket()}/out", tmp_path, endpoint_url=s3.endpoint)


def test_put_read_exists_delete(storage: Storage) -> None:
    assert not storage.exists("abc123")
    storage.put("abc123", b"video bytes", "video/mp4")
    assert storage.exists("abc123")
    assert storage.read("abc123") == b"video bytes"
    storage.put("abc123", b"replaced", "video/mp4")
    assert storage.read("abc123") == b"replaced"
    got = storage.download("abc123", None)
    assert got is not None
    assert got.status == 200
    assert b"".join(got.chunks) == b"replaced"
    assert got.headers["content-length"] == "8"
    storage.delete("abc123")
    assert storage.download("abc123", None) is None
    storage.delete("abc123")  # deleting twice is fine
    assert not storage.exists("abc123")


def test_ids_cannot_escape_the_folder_or_prefix(storage: Storage) -> None:
    for bad in ("../x", "a/b", "", "x.mp4"):
        with pytest.raises(ValueError, match="alphanumeric"):
            storage.put(bad, b"", "")


def test_s3_objects_live_under_the_prefix_and_ranges_pass_through(
    s3: ObjectStore, tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    storage = open_storage(f"s3://{bucket}/a/b", tmp_path, endpoint_url=s3.endpoint)
    assert isinstance(storage, S3Storage)
    storage.put("f00d", bytes(range(100)), "video/mp4")
    listed = s3.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["a/b/f00d"]
    whole = storage.download("f00d", None)
    assert whole is not None
    assert (whole.status, b"".join(whole.chunks)) == (200, bytes(range(100)))
    part = storage.download("f00d", "bytes=10-19")
    assert part is not None
    assert (part.status, part.headers["content-range"]) == (206, "bytes 10-19/100")
    assert b"".join(part.chunks) == bytes(range(10, 20))
    with pytest.raises(RangeNotSatisfiable):
        storage.download("f00d", "bytes=500-600")
    assert storage.download("0ther", None) is None


def test_storage_urls(tmp_path: Path, s3: ObjectStore) -> None:
    assert isinstance(open_storage(f"file://{tmp_path}/x", tmp_path), LocalStorage)
    with pytest.raises(FastSVDError, match="expected s3://bucket"):
        open_storage("ftp://somewhere", tmp_path)
    missing = S3Storage("s3://no-such-bucket", endpoint_url=s3.endpoint)
    with pytest.raises(FastSVDError, match="no-such-bucket"):
        missing.check()


def test_an_object_store_that_is_away_or_lost_its_bucket_is_unavailable(s3: ObjectStore) -> None:
    """Waited out by the callers (``StorageUnavailable``), naming the store; not a bug."""
    away = S3Storage("s3://gone/out", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageUnavailable, match=r"object store s3://gone/out/ is unavailable"):
        away.put("ab", b"x")
    emptied = S3Storage("s3://no-such-bucket/out", endpoint_url=s3.endpoint)
    with pytest.raises(StorageUnavailable, match="no-such-bucket"):
        emptied.put("ab", b"x")
    with pytest.raises(StorageUnavailable, match="no-such-bucket"):
        emptied.check()


def test_a_process_started_while_the_object_store_is_down_waits_for_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker or the webhook deliverer starting during an outage waits, logged once, and goes
    on when the store is back: no exit, no traceback, no restart loop (a one-shot command is
    told the reason instead)."""
    port = free_port()
    down = ObjectStore(f"http://127.0.0.1:{port}")
    bucket = "started-during-an-outage"
    settings = Settings.from_env({**down.env(bucket), "FASTSVD_DATA_DIR": str(tmp_path)})
    with pytest.raises(StorageUnavailable, match="is unavailable"):
        Services.from_settings(settings)  # a one-shot command: the reason, at once

    opened: list[Services] = []
    waiting = threading.Thread(target=lambda: opened.append(open_waiting(settings)))
    with caplog.at_level(logging.WARNING, logger="fastsvd.retry"):
        waiting.start()
        deadline = time.monotonic() + 30
        while "waiting for it" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "waiting for it" in caplog.text
        assert waiting.is_alive()
        assert not opened
        with s3_server(port) as store:
            store.client().create_bucket(Bucket=bucket)
            waiting.join(30)
    assert opened, "the process did not go on once the object store was back"
    opened[0].close()
    assert "back after" in caplog.text


def open_waiting(settings: Settings) -> Services:
    return Services.from_settings(settings, wait=True)
