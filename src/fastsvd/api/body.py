"""JSON request bodies: one strict parse for every route, and error answers that always encode.

Python's ``json`` module reads more than strict JSON (RFC 8259): ``NaN`` and ``Infinity``, numbers
that overflow to infinity (``1e309``), lone surrogate escapes (``"\\ud800"``), a key given twice
(the last one wins), integers of any size, nesting as deep as the interpreter's recursion limit.
None of it can be stored, echoed in an error or handed to the model, so ``parse`` refuses it all
with a 422 whose ``loc`` names the field where it sits:

    refused                           type                 loc
    NaN, Infinity, -Infinity          finite_number        the field
    a number that overflows a double  finite_number        the field
    an integer outside 64 bits        int_parsing_size     the field
    a lone surrogate (value or key)   string_unicode       the field (a key: escaped)
    a key given twice                 duplicate_key        the key
    nesting deeper than MAX_DEPTH     too_deep             the path to where the limit was hit
    not JSON, or not UTF-8            json_invalid         the body (and the offset)

``StrictJSONRoute`` makes every JSON body route parse this way, before FastAPI reads the body, and
``safe_detail`` makes any validation error's echo of the input encodable, whatever it holds.
"""

from __future__ import annotations

import email.message
import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

MAX_DEPTH = 32  # containers inside containers; fastsvd's own bodies nest 2 deep
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # integers must fit a signed 64-bit integer
_INT_MAX_CHARS = len(str(INT_MIN))  # longer literals are refused before being converted
_INT_ECHO_MAX_BITS = 4000 * 3  # well within Python's 4,300-digit limit on int to str
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]')  # strings skipped whole, and structure

Loc = tuple[str | int, ...]


class _Refused:
    """A value the parse hooks met and strict JSON forbids; the walk reports where it sits."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message


class _Duplicates(dict[str, Any]):
    """An object with a key given twice: ``key`` is the first such key."""

    key: str


def _constant(name: str) -> _Refused:
    return _Refused("finite_number", f"{name} is not a JSON number")


def _float(text: str) -> float | _Refused:
    value = float(text)
    if math.isfinite(value):
        return value
    return _Refused("finite_number", f"{text} is out of range for a number")


def _int(text: str) -> int | _Refused:
    value = int(text) if len(text) <= _INT_MAX_CHARS else None
    if value is not None and INT_MIN <= value <= INT_MAX:
        return value
    return _Refused("int_parsing_size", f"integers must be within {INT_MIN} and {INT_MAX}")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) == len(pairs):
        return found
    duplicates, seen = _Duplicates(found), set()
    for key, _value in pairs:
        if key in seen:
            duplicates.key = key
            break
        seen.add(key)
    return duplicates


_DECODER = json.JSONDecoder(
    parse_constant=_constant, parse_float=_float, parse_int=_int, object_pairs_hook=_object
)


def _refuse(loc: Loc, kind: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", *loc), "msg": message, "type": kind}])


def _printable(text: str) -> str:
    """``text`` with any lone surrogate written as its escape, so that it can be encoded."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check(value: Any, loc: Loc) -> None:
    """Raise for the first value under ``value`` that strict JSON forbids, naming its path."""
    if isinstance(value, str):
        if not _unicode(value):
            raise _refuse(loc, "string_unicode", "strings must not hold lone surrogates")
    elif isinstance(value, _Refused):
        raise _refuse(loc, value.kind, value.message)
    elif isinstance(value, dict | list):
        if len(loc) >= MAX_DEPTH:
            raise _refuse(loc, "too_deep", f"bodies may nest at most {MAX_DEPTH} levels deep")
        if isinstance(value, list):
            for index, item in enumerate(value):
                _check(item, (*loc, index))
            return
        for key, item in value.items():
            if not _unicode(key):
                message = "keys must not hold lone surrogates"
                raise _refuse((*loc, _printable(key)), "string_unicode", message)
            _check(item, (*loc, key))
        if isinstance(value, _Duplicates):
            raise _refuse((*loc, value.key), "duplicate_key", "this key is given more than once")


def _deep_path(raw: bytes) -> Loc:
    """The path at which ``raw`` (JSON too deep to parse) first nests deeper than MAX_DEPTH."""
    path: list[str | int] = []
    kinds: list[bytes] = []
    key_next = False
    for match in _TOKENS.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            if len(kinds) >= MAX_DEPTH:
                break
            kinds.append(token)
            path.append(0)
            key_next = token == b"{"
        elif token in (b"]", b"}"):
            kinds.pop()
            path.pop()
        elif token == b",":
            key_next = kinds[-1] == b"{"
            if not key_next:
                path[-1] = int(path[-1]) + 1
        elif token.startswith(b'"') and key_next:
            path[-1] = _printable(json.loads(token.decode("utf-8", "surrogatepass")))
            key_next = False
    return tuple(path)


def parse(raw: bytes) -> Any:
    """``raw`` read as strict JSON; ``RequestValidationError`` naming the field otherwise."""
    try:
        # surrogatepass: a surrogate sent as raw UTF-8 bytes is named like its escape
        text = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise _refuse((), "json_invalid", "the body is not valid UTF-8") from exc
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        error = {"loc": ("body", exc.pos), "msg": "JSON decode error", "type": "json_invalid"}
        raise RequestValidationError([{**error, "ctx": {"error": exc.msg}}]) from exc
    except RecursionError as exc:  # deeper than the interpreter can parse at all
        message = f"bodies may nest at most {MAX_DEPTH} levels deep"
        raise _refuse(_deep_path(raw), "too_deep", message) from exc
    _check(value, ())
    return value


def _json_content(content_type: str | None) -> bool:
    """Whether FastAPI reads a body of ``content_type`` as JSON (its own test, repeated)."""
    if not content_type:
        return False  # FastAPI's strict content type: no header, no JSON
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class StrictJSONRequest(Request):
    """A request whose ``json()`` is ``parse``."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose JSON body, if it takes one, is read by ``parse`` before anything else.

    The body is parsed here, outside FastAPI's own parse (which turns any error but a syntax
    error into a bare 400), so that a refusal reaches the validation-error handler; FastAPI then
    finds the parsed body already cached on the request.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        takes_json = self.body_field is not None

        async def strict_handler(request: Request) -> Response:
            request = StrictJSONRequest(request.scope, request.receive)
            content_type = request.headers.get("content-type")
            if takes_json and _json_content(content_type) and await request.body():
                await request.json()  # refuses here; FastAPI's own read finds it cached
            return await handle(request)

        return strict_handler


def _safe(value: Any) -> Any:
    """``value`` with what JSON cannot encode written out: non-finite numbers as text, lone
    surrogates as escapes, bytes decoded with escapes."""
    if isinstance(value, str):
        return value if _unicode(value) else _printable(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, int) and value.bit_length() > _INT_ECHO_MAX_BITS:
        return f"an integer of {value.bit_length()} bits"  # too long for str() to write
    if isinstance(value, dict):
        return {_safe(str(k)): _safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe(item) for item in value]
    return value


def safe_detail(errors: Any) -> Any:
    """Validation errors as JSON can always encode them, echoed inputs included."""
    try:
        return _safe(jsonable_encoder(_safe(errors)))
    except (TypeError, ValueError):  # an input no encoder knows: the errors without echoes
        return [
            {"loc": _safe(list(e.get("loc", ()))), "msg": str(e.get("msg")), "type": e.get("type")}
            for e in errors
        ]
