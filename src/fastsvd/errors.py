"""Every error a user or an operator of fastsvd can see: one tree, one table.

    FastSVDError                  every error fastsvd raises on purpose (500 internal_error)
    ├── InvalidInput              a request field is wrong; names the field       422
    ├── Unauthorized              no valid API key                                401
    ├── Forbidden                 a valid key whose scope does not allow this     403
    ├── NotFound                  no such request, file or upload for the caller  404
    ├── TooLarge                  a body over its size limit                      413
    ├── RangeNotSatisfiable       a Range header outside the file                 416
    ├── TooManyRequests           come back after ``retry_after_s``               429
    │   ├── RateLimited           too many calls from one caller
    │   └── QueueFull             the queue, or a key's share of it, is full
    ├── Unavailable               a dependency cannot be reached right now        503
    │   ├── StoreUnavailable      the job store's database
    │   └── StorageUnavailable    the file storage (object store or disk; a full disk too)
    ├── ProxyRefused              a proxied call fastsvd does not serve           403
    │   ├── BadProxyTarget        no x-fal-target-url, or not a URL               400
    │   └── ProxyMethodNotAllowed a method the proxy route does not take          405
    ├── ModelNotAvailable         weights are missing and cannot be fetched       500
    ├── CannotRunHere             a worker cannot run on this machine as set up   500
    │   ├── NoUsableGpu           a real preset, and no usable CUDA GPU
    │   └── DoesNotFit            the endpoints do not fit the GPU's memory
    ├── GenerationCancelled       the cancel hook asked the pipeline to stop      499
    ├── GpuFault                  the GPU failed (its CUDA context is unusable)   503
    └── GenerationFailed          the model ran and failed                        500
        └── OutOfMemory           the accelerator ran out of memory               503

Each class carries the fal ``error_type`` it reports; ``HTTP_STATUS`` gives its HTTP status, and
``http_status`` looks an error up along its class hierarchy (as Starlette's exception handlers
do), so a subclass answers like its parent unless the table names it. The HTTP edge has one
handler for the whole tree (``fastsvd.api.errors``), and a worker records a failed job's status
from the same table. Library errors (torch, diffusers, PyAV, OS, the database driver) are
translated where they cross into fastsvd, with ``raise ... from exc``: the store turns an
unreachable database into ``StoreUnavailable`` at its boundary (``fastsvd.store.db``), and each
storage backend turns an object store it cannot reach, or a disk without room, into
``StorageUnavailable`` (``fastsvd.storage``).
"""

from __future__ import annotations

import math


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


class Unauthorized(FastSVDError):
    """The request carries no valid key."""

    error_type = "unauthorized"


class Forbidden(FastSVDError):
    """The key is valid but its scope does not allow this."""

    error_type = "forbidden"


class NotFound(FastSVDError):
    """A request id, file or upload that does not exist for this caller."""

    error_type = "not_found"


class TooLarge(FastSVDError):
    """A body over its size limit."""

    error_type = "payload_too_large"


class RangeNotSatisfiable(FastSVDError):
    """A Range header outside the object; ``size`` is the object's, when known."""

    error_type = "range_not_satisfiable"

    def __init__(self, message: str, size: int | None = None) -> None:
        super().__init__(message)
        self.size = size


class TooManyRequests(FastSVDError):
    """Come back later: after ``retry_after_s`` seconds (whole, at least 1)."""

    error_type = "rate_limited"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, math.ceil(retry_after_s))


class RateLimited(TooManyRequests):
    """Too many requests from one caller (a key, or an address with failing keys)."""


class QueueFull(TooManyRequests):
    """The queue (or this key's share of it) is at its cap."""

    error_type = "queue_full"


class Unavailable(FastSVDError):
    """A service fastsvd depends on cannot be reached right now; retrying later may work."""

    error_type = "service_unavailable"
    retry_after_s = 2


class StoreUnavailable(Unavailable):
    """The job store's database cannot be reached right now; retrying later may work."""

    error_type = "store_unavailable"


class StorageUnavailable(Unavailable):
    """The file storage (an object store, or a disk that is full) cannot take or give bytes
    right now; retrying later may work."""

    error_type = "storage_unavailable"


class ProxyRefused(FastSVDError):
    """A call through fal's proxy route to a URL fastsvd does not serve (it never forwards)."""

    error_type = "proxy_refused"


class BadProxyTarget(ProxyRefused):
    """No ``x-fal-target-url``, several, or one that is not a well-formed URL."""


class ProxyMethodNotAllowed(ProxyRefused):
    """A method other than those the proxy route takes."""


class ModelNotAvailable(FastSVDError):
    """Model weights are missing locally and cannot be downloaded."""

    error_type = "model_not_available"


class CannotRunHere(FastSVDError):
    """A worker cannot run on this machine as set up: restarting it would not help."""


class NoUsableGpu(CannotRunHere):
    """A preset of real weights, and no usable CUDA GPU (nor FASTSVD_DEVICE=cpu)."""


class DoesNotFit(CannotRunHere):
    """The endpoints asked for do not fit the GPU's memory (the memory plan, or out of memory
    at load or warm-up); the message names settings that would fit."""


class GenerationCancelled(FastSVDError):
    """The cancel hook asked the pipeline to stop; raised at the next step boundary."""

    error_type = "cancelled"


class GpuFault(FastSVDError):
    """The GPU failed under a request (illegal access, Xid, ECC): the worker hands it back."""

    error_type = "gpu_fault"


class GenerationFailed(FastSVDError):
    """The model ran and failed."""

    error_type = "generation_failed"


class OutOfMemory(GenerationFailed):
    """The accelerator ran out of memory for this request."""

    error_type = "out_of_memory"


HTTP_STATUS: dict[type[FastSVDError], int] = {
    FastSVDError: 500,
    InvalidInput: 422,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    TooLarge: 413,
    RangeNotSatisfiable: 416,
    TooManyRequests: 429,
    Unavailable: 503,
    ProxyRefused: 403,
    BadProxyTarget: 400,
    ProxyMethodNotAllowed: 405,
    GenerationCancelled: 499,  # fal's status for a cancelled request's result
    OutOfMemory: 503,  # the request may fit later, or on another worker
    GpuFault: 503,  # another worker (or this one, restarted) runs it
}


def http_status(exc: FastSVDError) -> int:
    """The HTTP status of ``exc``: its class's entry, or its nearest ancestor's."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500
