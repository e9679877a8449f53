"""The pipeline's tests run the real diffusers classes on the tiny preset (torch on the CPU):
every test here is marked ``model``, outside the fast tier."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.model)
