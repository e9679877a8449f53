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
    ├── Cancelled                 the request was cancelled                       499
    │   └── GenerationCancelled   the cancel hook asked the pipeline to stop
    ├── RequestTimeout            it did not start before its start deadline      504
    ├── WorkerLost                its worker stopped, and it is not run again     500
    ├── GpuFault                  the GPU failed (its CUDA context is unusable)   503
    └── GenerationFailed          the model ran and failed                        500
        └── OutOfMemory           the accelerator ran out of memory               503

and, its own root, the one error of fastsvd's client (``fastsvd.client``):

    ClientError                   a server refused or failed a call (its status and error_type)

Each class carries the fal ``error_type`` it reports; ``HTTP_STATUS`` gives its HTTP status, and
``http_status`` looks an error up along its class hierarchy (as Starlette's exception handlers
do), so a subclass answers like its parent unless the table names it. The HTTP edge has one
handler for the whole tree (``fastsvd.api.errors``), and a job that ends without an output is
recorded as ``Failure.of(exc)``, from the same table: by its worker, and by the job store for the
endings it decides itself (cancelled while queued, start deadline passed, worker lost).

Library errors (torch, diffusers, PyAV, OS, the database driver) are translated where they cross
into fastsvd, with ``raise ... from exc``: the store turns an unreachable database into
``StoreUnavailable`` at its boundary (``fastsvd.store.db``), and each storage backend turns an
object store it cannot reach, or a disk without room, into ``StorageUnavailable``
(``fastsvd.storage``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from fastsvd import constants as c
from fastsvd.schema import field_errors


class ClientError(Exception):
    """The server refused or failed a request of ``fastsvd.client``; ``str()`` is one line
    naming what went wrong. Its own root: it relays what a server said, it is not one of the
    errors below, which fastsvd raises about its own work (and a server maps to HTTP answers).

    ``status_code`` is the HTTP status, ``detail`` the server's ``detail``, ``error_type`` the
    failure's type (``cancelled``, ``validation_error``...), and ``fields`` the fields a 422 names.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        detail: Any = None,
        error_type: str | None = None,
        fields: list[tuple[str, str]] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail
        self.error_type = error_type
        self.fields = fields or []
        self.retry_after_s = retry_after_s


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
    retry_after_s = c.UNAVAILABLE_RETRY_AFTER_S


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


class Cancelled(FastSVDError):
    """The request was cancelled: by its caller, or its caller went away."""

    error_type = "cancelled"

    def __init__(self, message: str = "Request cancelled") -> None:
        super().__init__(message)


class GenerationCancelled(Cancelled):
    """The cancel hook asked the pipeline to stop; raised at the next step boundary. Its message
    says where it stopped, for the worker's log; the request's record says only ``Cancelled``'s."""


class RequestTimeout(FastSVDError):
    """The request did not start before its start deadline (``x-fal-request-timeout``)."""

    error_type = "request_timeout"

    def __init__(self, message: str = "Request start timeout exceeded") -> None:
        super().__init__(message)


class WorkerLost(FastSVDError):
    """The worker running the request stopped, and the request is not run again (its attempts
    are used, or its submitter asked for no retry)."""

    error_type = "runner_disconnected"


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
    Cancelled: 499,  # fal's status for a cancelled request's result
    RequestTimeout: 504,
    OutOfMemory: 503,  # the request may fit later, or on another worker
    GpuFault: 503,  # another worker (or this one, restarted) runs it
}


def http_status(error: FastSVDError | type[FastSVDError]) -> int:
    """The HTTP status of an error (or of an error class): its class's entry, or its nearest
    ancestor's."""
    kind = error if isinstance(error, type) else type(error)
    return next(HTTP_STATUS[cls] for cls in kind.__mro__ if cls in HTTP_STATUS)


@dataclass(frozen=True)
class Failure:
    """Why a job ended without an output, as it is stored and as fal reports it."""

    message: str
    error_type: str
    http_status: int

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        """The record of a job that ended with ``exc``: an error of the tree as itself (a
        cancelled generation as ``Cancelled``), a pydantic validation error as the
        ``InvalidInput`` of its first field, anything else as an internal error that names only
        its class (the caller logs it)."""
        if isinstance(exc, GenerationCancelled):
            exc = Cancelled()  # where it stopped is for the log, not the caller
        elif isinstance(exc, ValidationError):
            exc = InvalidInput(*field_errors(exc)[0])
        elif not isinstance(exc, FastSVDError):
            exc = FastSVDError(f"internal error: {type(exc).__name__}")
        return cls(exc.message, exc.error_type, http_status(exc))
