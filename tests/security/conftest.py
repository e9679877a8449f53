"""Servers for the attack tests: real ``fastsvd serve`` processes with the fake model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import Server, start_server, stop_server


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on the embedded backend with one worker and no rate limits: the fuzzer sends
    many requests quickly, with and without a key."""
    running = start_server(
        tmp_path_factory.mktemp("target"),
        FASTSVD_AUTH_FAILURES_PER_S="0",
        FAKE_STEP_S="0.005",
        FASTSVD_MAX_QUEUED="100000",
        FASTSVD_MAX_ACTIVE_PER_KEY="100000",
    )
    try:
        yield running
    finally:
        stop_server(running)
