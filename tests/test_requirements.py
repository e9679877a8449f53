"""The package's requirements: the torch the code needs (dynamo's ``recompile_limit``, which
``pipeline/compile.py`` sets, exists from torch 2.7) and ``accelerate`` (diffusers loads weights
with ``low_cpu_mem_usage`` only with it); each named once."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import torch._dynamo

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements() -> dict[str, str]:
    """Each dependency's name and version specifier."""
    listed = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    named = [re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?(.*)", spec) for spec in listed]
    names = [m.group(1).lower() for m in named if m]
    assert len(names) == len(set(names)) == len(listed), listed  # each named once
    return {m.group(1).lower(): m.group(2).strip() for m in named if m}


def test_torch_from_2_7_and_accelerate_are_required() -> None:
    required = requirements()
    assert required["torch"] == ">=2.7"
    assert "accelerate" in required
    assert hasattr(torch._dynamo.config, "recompile_limit")  # what 2.7 brought, used here
