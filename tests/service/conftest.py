"""The service tests' fixtures: real fastsvd server processes on each backend, a webhook
receiver, an S3-protocol server. What they are built from is in ``tests/support``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.objectstore import ObjectStore, s3_server
from tests.support.servers import (
    BACKENDS,
    Server,
    backend_env,
    start_server,
    stop_server,
)


@pytest.fixture(scope="session")
def object_store() -> Iterator[ObjectStore]:
    """One S3-protocol server (moto) for the whole session; each user takes its own bucket."""
    with s3_server() as store:
        yield store


# the distributed backend starts an S3-protocol server (moto): not in the fast tier
BACKEND_PARAMS = [
    pytest.param(kind, marks=[pytest.mark.process] if kind == "distributed" else [])
    for kind in BACKENDS
]


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """A fresh backend of each kind, shared by a test module."""
    with backend_env(request.param, request, tmp_path_factory.mktemp("db")) as env:
        yield env


@pytest.fixture(params=BACKEND_PARAMS)
def fresh_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A fresh backend of each kind for one test."""
    with backend_env(request.param, request, tmp_path / "db") as env:
        yield env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: dict[str, str]) -> Iterator[Server]:
    """One server (fake model, one worker) shared by a test module, on each backend."""
    running = start_server(tmp_path_factory.mktemp("server"), **backend)
    try:
        yield running
    finally:
        stop_server(running)
