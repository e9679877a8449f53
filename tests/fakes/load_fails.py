"""A stand-in model whose ``load`` fails, as ``FAKE_LOAD_ERROR`` names: "model not available"
(weights missing), "does not fit" (out of GPU memory at load) or "gpu fault" (the GPU failed
while warming up). Each start of it appends its pid to the file ``FAKE_STARTS`` names, so a
test can count how often a supervisor started the worker."""

from __future__ import annotations

import os

from fastsvd.errors import DoesNotFit, FastSVDError, GpuFault, ModelNotAvailable
from tests.fakes import runner

ERRORS: dict[str, type[FastSVDError]] = {
    "model not available": ModelNotAvailable,
    "does not fit": DoesNotFit,
    "gpu fault": GpuFault,
}


class Runner(runner.Runner):
    def load(self) -> None:
        with open(os.environ["FAKE_STARTS"], "a", encoding="utf-8") as starts:
            starts.write(f"{os.getpid()}\n")
        name = os.environ["FAKE_LOAD_ERROR"]
        raise ERRORS[name](f"the fake model's load failed on purpose: {name}")
