"""The fastsvd command run as a user runs it: a process of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m fastsvd.cli ARGS`` in ``cwd`` with exactly ``env``; its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "fastsvd.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
