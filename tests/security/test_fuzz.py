"""Schema fuzzing: schemathesis generates requests, valid and invalid, for every operation of
the server's own /openapi.json and sends them with a key. Nothing may answer 5xx, and every
answer must be one the schema documents, with the documented body and headers.

Bounded: ``FASTSVD_FUZZ_EXAMPLES`` cases per operation and mode (default 60), about a minute
on 2 CPUs. Set it higher for a longer hunt; ``-s`` prints the tally (see docs/security.md).

Then what no schema generates: the bodies Python's JSON parser accepts and strict JSON (RFC 8259)
forbids, in every field of every route that takes a JSON body. Each must be a 422 naming it.
"""

from __future__ import annotations

import collections
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.support.servers import Server

pytestmark = pytest.mark.process  # starts server processes

FUZZ_EXAMPLES = int(os.environ.get("FASTSVD_FUZZ_EXAMPLES", "60"))
# "Schema-valid data is accepted" cannot hold for fastsvd: a well-formed URL can still name a
# private address or a host that does not resolve, and is rightly refused with 422. Every other
# check runs, invalid data being rejected among them.
SEMANTIC = [positive_data_acceptance]
REQUEST_ROUTE = re.compile(r"^/[^/]+/[^/]+/requests")


def started_late(response: Any) -> bool:
    """The 504 of a request that did not start within the start deadline this test itself sends
    (fal's answer to it, documented on the result routes): the one 5xx that is not a fault."""
    return response.status_code == 504 and b'"error_type":"request_timeout"' in response.content


def no_server_error(_ctx: object, response: Any, _case: schemathesis.Case) -> bool | None:
    """No 5xx, but for a request that started late."""
    assert response.status_code < 500 or started_late(response), (
        response.status_code,
        response.content[:300],
    )
    return None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_operation_holds_to_its_schema(served_target: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{served_target.url}/openapi.json")
    # Each app's request routes (status, stream, result, cancel, history) are one handler made
    # once per app with the same parameters; they are fuzzed under the first app only.
    operations, request_routes = [], set()
    for result in schema.get_all_operations():
        operation = result.ok()
        route = REQUEST_ROUTE.sub("/{app}/requests", operation.path)
        if route != operation.path:
            if (operation.method, route) in request_routes:
                continue
            request_routes.add((operation.method, route))
        operations.append(operation)
    # A start deadline keeps the fuzzer's queued requests from piling up behind the one worker:
    # what has not started within it ends (504), so synchronous runs never wait long.
    headers = {"Authorization": f"Key {served_target.key}", "X-Fal-Request-Timeout": "3"}
    codes: collections.Counter[tuple[str, int]] = collections.Counter()
    faults: list[tuple[str, int, bytes]] = []
    started = time.monotonic()

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode, headers=headers))
            @settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case: schemathesis.Case) -> None:
                response = case.call_and_validate(
                    base_url=served_target.url,
                    excluded_checks=[*SEMANTIC, not_a_server_error],
                    additional_checks=[no_server_error],
                    timeout=60,
                )
                codes[(case.operation.label, response.status_code)] += 1
                if response.status_code >= 500 and not started_late(response):
                    faults.append((case.operation.label, response.status_code, response.content))

            try:
                fuzz()
            except Unsatisfiable:
                # nothing of this operation can be made invalid (free-form strings, no body)
                assert mode == GenerationMode.NEGATIVE, operation.label

    sent = sum(codes.values())
    print(
        f"\nfuzzed {len(operations)} operations, {sent} requests in "
        f"{time.monotonic() - started:.0f} s"
    )
    for (label, code), count in sorted(codes.items()):
        print(f"  {label}  {code}: {count}")
    assert len(operations) >= 23  # every route of the registry, the files, admin and operations
    assert not faults, faults[:5]


# Raw JSON texts that Python's json module reads and strict JSON forbids, or that no field of
# fastsvd can hold: (case, raw value). Each is put into one field at a time.
NOT_STRICT_JSON: list[tuple[str, bytes]] = [
    ("NaN", b"NaN"),
    ("Infinity", b"Infinity"),
    ("-Infinity", b"-Infinity"),
    ("overflow to inf", b"1e309"),
    ("overflow to -inf", b"-1e400"),
    ("huge exponent", b"1E+99999"),
    ("lone high surrogate", b'"\\ud800"'),
    ("lone low surrogate", b'"\\udfff"'),
    ("surrogate inside text", b'"a\\udbffb"'),
    ("reversed surrogate pair", b'"\\udc00\\ud800"'),
    ("raw surrogate bytes", b'"\xed\xa0\x80"'),
    ("integer over 64 bits", b"1" + b"0" * 30),
    ("integer over the digit limit", b"9" * 5000),
    ("negative integer over 64 bits", b"-" + b"9" * 30),
    ("nested 100 deep", b"[" * 100 + b"]" * 100),
    ("nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000),
    ("objects nested 100,000 deep", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
]


def body_routes(spec: dict[str, Any]) -> Iterator[tuple[str, str, list[list[str]]]]:
    """(method, path, field paths) for every operation of ``spec`` with a JSON body: the
    top-level properties of its schema and those of the objects they hold."""
    schemas = spec["components"]["schemas"]

    def resolve(schema: dict[str, Any]) -> list[dict[str, Any]]:
        if "$ref" in schema:
            return resolve(schemas[schema["$ref"].rsplit("/", 1)[1]])
        options = schema.get("anyOf", []) + schema.get("allOf", []) + schema.get("oneOf", [])
        return [schema] + [found for option in options for found in resolve(option)]

    def properties(schema: dict[str, Any]) -> dict[str, Any]:
        return {k: v for s in resolve(schema) for k, v in s.get("properties", {}).items()}

    for path, item in spec["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            top = properties(content["application/json"]["schema"]) or {"anything": {}}
            fields = [[name] for name in top]
            fields += [[name, inner] for name, sub in top.items() for inner in properties(sub)]
            yield method.upper(), path, fields


def answer_detail(response: httpx.Response) -> Any:
    """The ``detail`` of a JSON answer; None for any other answer (a bare 500 among them)."""
    try:
        return response.json().get("detail")
    except ValueError:
        return None


def with_value(field: list[str], raw: bytes) -> bytes:
    """A body holding ``raw`` at ``field`` (a path of object keys)."""
    body = raw
    for name in reversed(field):
        body = b'{"' + name.encode() + b'":' + body + b"}"
    return body


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bodies_strict_json_forbids_are_422_naming_the_field(served_target: Server) -> None:
    headers = {
        "Authorization": f"Key {served_target.key}",
        "Content-Type": "application/json",
        "X-Fal-Request-Timeout": "3",  # a body wrongly accepted by a sync run ends quickly
    }
    codes: collections.Counter[int] = collections.Counter()
    wrong: list[str] = []
    with httpx.Client(base_url=served_target.url, headers=headers, timeout=60) as client:
        routes = list(body_routes(client.get("/openapi.json").json()))
        for method, path, fields in routes:
            url = path.replace("{file_id}", "x")
            cases = [
                (field, case, with_value(field, raw))
                for field in fields
                for case, raw in NOT_STRICT_JSON
            ]
            # a key given twice (the value itself is fine), and a key that is a lone surrogate
            cases += [
                (
                    field,
                    "duplicate key",
                    with_value(
                        field[:-1], b'{"%s":1,"%s":2}' % (field[-1].encode(), field[-1].encode())
                    ),
                )
                for field in fields
            ]
            cases.append((["\\ud800"], "lone surrogate in a key", b'{"\\ud800": 1}'))
            for field, case, body in cases:
                try:
                    response = client.request(method, url, content=body)
                except httpx.TransportError as exc:  # the server dropped the connection
                    codes[599] += 1
                    wrong.append(f"{method} {path} {'.'.join(field)} ({case}): no answer, {exc}")
                    continue
                codes[response.status_code] += 1
                detail = answer_detail(response)
                locs = [e.get("loc") for e in detail] if isinstance(detail, list) else []
                named = any(
                    isinstance(loc, list) and loc[: len(field) + 1] == ["body", *field]
                    for loc in locs
                )
                if response.status_code != 422 or not named or not detail[0].get("msg"):
                    wrong.append(
                        f"{method} {path} {'.'.join(field)} ({case}): "
                        f"{response.status_code} {response.text[:160]}"
                    )
    print(f"\n{sum(codes.values())} bodies to {len(routes)} routes: {dict(codes)}")
    for line in wrong[:40]:
        print("  " + line)
    assert {path for _m, path, _f in routes} >= {
        "/fal-ai/fast-svd/text-to-video",
        "/fal-ai/fast-svd",
        "/run/fal-ai/fast-svd/text-to-video",
        "/run/fal-ai/fast-svd",
        "/storage/upload/initiate",
        "/admin/keys",
    }
    assert not any(code >= 500 for code in codes), dict(codes)
    assert not wrong, f"{len(wrong)} of {sum(codes.values())} not a 422 naming the field"


@pytest.mark.slow
def test_bodies_that_are_not_json_are_422_whatever_their_content_type(
    served_target: Server,
) -> None:
    """Bytes that are not UTF-8, sent as JSON, as text or with no content type: the error's echo
    of them must still encode."""
    headers = {"Authorization": f"Key {served_target.key}"}
    with httpx.Client(base_url=served_target.url, headers=headers, timeout=60) as client:
        routes = list(body_routes(client.get("/openapi.json").json()))
        for method, path, _fields in routes:
            for content_type in (
                None,
                "text/plain",
                "application/octet-stream",
                "application/json",
            ):
                for body in (b"\xff\xfe", b'{"prompt": "\xff"}', b"\xed\xa0\x80"):
                    sent = {"content-type": content_type} if content_type else {}
                    response = client.request(method, path, content=body, headers=sent)
                    assert response.status_code == 422, (method, path, content_type, body)
                    assert response.json()["detail"][0]["loc"][0] == "body"
