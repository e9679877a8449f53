"""Servers for the attack tests, with the fake model, one worker and no rate limits (the fuzzer
sends many requests quickly, with and without a key): in this process for the tests that only
talk to the API, as a real ``fastsvd serve`` process for those that reach its socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.inprocess import InProcessServer, start_in_process
from tests.support.servers import Server, start_server, stop_server

TARGET_ENV = {
    "FASTSVD_AUTH_FAILURES_PER_S": "0",
    "FAKE_STEP_S": "0.005",
    "FASTSVD_MAX_QUEUED": "100000",
    "FASTSVD_MAX_ACTIVE_PER_KEY": "100000",
}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    """The app, a worker and the deliverer in this process, on the embedded backend."""
    running = start_in_process(tmp_path_factory.mktemp("target"), **TARGET_ENV)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def served_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server process on the embedded backend, for the tests that send raw HTTP."""
    running = start_server(tmp_path_factory.mktemp("target"), **TARGET_ENV)
    try:
        yield running
    finally:
        stop_server(running)
