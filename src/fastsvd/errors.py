"""The errors fastsvd raises, one small tree.

    FastSVDError                  every error fastsvd raises on purpose
    ├── InvalidInput              a request field is wrong (names the field)
    ├── ModelNotAvailable         weights are missing and cannot be fetched
    ├── GenerationCancelled       the cancel hook asked the pipeline to stop
    └── GenerationFailed          the model ran and failed (out of memory, bad weights)
        └── OutOfMemory           the accelerator ran out of memory

Each class carries the fal ``error_type`` it maps to; the HTTP edge maps classes to status codes
in one table. Library errors (torch, diffusers, PyAV, OS) are translated where they cross into
fastsvd, with ``raise ... from exc``.
"""

from __future__ import annotations


class FastSVDError(Exception):
    """Base class of every error fastsvd raises on purpose."""

    error_type = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(FastSVDError):
    """A request field is wrong; ``field`` names it as a dotted path."""

    error_type = "validation_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class ModelNotAvailable(FastSVDError):
    """Model weights are missing locally and cannot be downloaded."""

    error_type = "model_not_available"


class GenerationCancelled(FastSVDError):
    """The cancel hook asked the pipeline to stop; raised at the next step boundary."""

    error_type = "cancelled"


class GenerationFailed(FastSVDError):
    """The model ran and failed."""

    error_type = "generation_failed"


class OutOfMemory(GenerationFailed):
    """The accelerator ran out of memory for this request."""

    error_type = "out_of_memory"
