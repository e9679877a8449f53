"""Schema fuzzing: schemathesis generates requests, valid and invalid, for every operation of
the server's own /openapi.json and sends them with a key. Nothing may answer 5xx, and every
answer must be one the schema documents, with the documented body and headers.

Bounded: ``FASTSVD_FUZZ_EXAMPLES`` cases per operation and mode (default 100), under a minute
on 2 CPUs. Set it higher for a longer hunt; ``-s`` prints the tally (see docs/security.md).
"""

from __future__ import annotations

import collections
import os
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.service.conftest import Server

FUZZ_EXAMPLES = int(os.environ.get("FASTSVD_FUZZ_EXAMPLES", "100"))
# "Schema-valid data is accepted" cannot hold for fastsvd: a well-formed URL can still name a
# private address or a host that does not resolve, and is rightly refused with 422. Every other
# check runs, invalid data being rejected among them.
SEMANTIC = [positive_data_acceptance]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_operation_holds_to_its_schema(target: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{target.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # A start deadline keeps the fuzzer's queued requests from piling up behind the one worker:
    # what has not started within it ends (504), so synchronous runs never wait long.
    headers = {"Authorization": f"Key {target.key}", "X-Fal-Request-Timeout": "3"}
    codes: collections.Counter[tuple[str, int]] = collections.Counter()
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
                    base_url=target.url, excluded_checks=SEMANTIC, timeout=60
                )
                codes[(case.operation.label, response.status_code)] += 1

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
    assert len(operations) >= 19
    assert not any(code >= 500 for _label, code in codes)
