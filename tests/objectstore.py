"""A real S3-protocol server for the tests: moto's server mode, in a process of its own."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "fastsvd-test",
    "AWS_SECRET_ACCESS_KEY": "fastsvd-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ObjectStore:
    """A running S3 server: its endpoint and the environment a fastsvd process needs."""

    endpoint: str

    def new_bucket(self) -> str:
        """A fresh, empty bucket."""
        name = f"fastsvd-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def env(self, bucket: str, prefix: str = "fastsvd") -> dict[str, str]:
        """FASTSVD_* and AWS_* variables for a server that stores its files here."""
        return {
            **CREDENTIALS,
            "FASTSVD_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "FASTSVD_S3_ENDPOINT_URL": self.endpoint,
        }


@contextmanager
def s3_server(port: int | None = None) -> Iterator[ObjectStore]:
    """Start ``moto_server`` on ``port`` (by default a free one); stop it on exit."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **CREDENTIALS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the S3 test server (moto) did not start") from None
                time.sleep(0.1)
        yield ObjectStore(endpoint)
    finally:
        process.terminate()
        process.wait(10)
