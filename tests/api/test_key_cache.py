"""Verified keys are cached for ``KEY_CACHE_S`` (constants): a revoked key works until its entry
expires, and not after. The cache's clock is replaced by one the test moves, so no test waits
it out."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from fastsvd import constants as c
from fastsvd.api import auth
from fastsvd.api.app import create_app
from fastsvd.services import Services
from fastsvd.settings import Settings
from tests.support.bodies import T2V_PATH


def test_a_revoked_key_stops_working_when_its_cache_entry_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(auth, "time", SimpleNamespace(monotonic=lambda: now[0]))
    services = Services.from_settings(Settings(data_dir=tmp_path, submits_per_minute=0))
    try:
        key, info = services.keys.create("ci")
        headers = {"Authorization": f"Key {key}"}
        with TestClient(create_app(services)) as client:
            assert client.post(T2V_PATH, json={"prompt": "a"}, headers=headers).is_success
            assert services.keys.revoke(info.key_id)
            now[0] += c.KEY_CACHE_S - 0.1
            cached = client.post(T2V_PATH, json={"prompt": "b"}, headers=headers)
            assert cached.is_success  # within the cache's time: still known good
            now[0] += 0.2
            revoked = client.post(T2V_PATH, json={"prompt": "c"}, headers=headers)
            assert revoked.status_code == 401
    finally:
        services.close()
