"""The strict JSON body parse and the safe echo of validation errors (fastsvd.api.body)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError

from fastsvd.api.body import MAX_DEPTH, parse, safe_detail


def refusal(raw: bytes) -> tuple[list[Any], str]:
    with pytest.raises(RequestValidationError) as caught:
        parse(raw)
    (error,) = caught.value.errors()
    return list(error["loc"]), error["type"]


@pytest.mark.parametrize(
    ("raw", "loc", "kind"),
    [
        (b'{"steps": NaN}', ["body", "steps"], "finite_number"),
        (b'{"seed": -Infinity}', ["body", "seed"], "finite_number"),
        (b'{"video_size": {"width": 1e309}}', ["body", "video_size", "width"], "finite_number"),
        (b'{"seed": 9223372036854775808}', ["body", "seed"], "int_parsing_size"),
        (b'{"seed": ' + b"9" * 5000 + b"}", ["body", "seed"], "int_parsing_size"),
        (b'{"prompt": "\\ud800"}', ["body", "prompt"], "string_unicode"),
        (b'{"prompt": "\xed\xa0\x80"}', ["body", "prompt"], "string_unicode"),
        (b'{"a": ["ok", "\\udfff"]}', ["body", "a", 1], "string_unicode"),
        (b'{"\\ud800": 1}', ["body", "\\ud800"], "string_unicode"),
        (b'{"steps": 1, "steps": 2}', ["body", "steps"], "duplicate_key"),
        (
            b'{"video_size": {"width": 64, "width": 128}}',
            ["body", "video_size", "width"],
            "duplicate_key",
        ),
        (b"\xff", ["body"], "json_invalid"),
        (b'{"prompt": ', ["body", 11], "json_invalid"),
    ],
)
def test_what_strict_json_forbids_is_refused_naming_the_field(
    raw: bytes, loc: list[Any], kind: str
) -> None:
    assert refusal(raw) == (loc, kind)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100, 100_000])
def test_deep_nesting_is_refused_at_the_path_where_the_limit_is_hit(depth: int) -> None:
    loc, kind = refusal(b'{"a": [{"b": ' + b"[" * depth + b"]" * depth + b"}]}")
    assert kind == "too_deep"
    assert loc == ["body", "a", 0, "b"] + [0] * (MAX_DEPTH - 3)


def test_strict_json_is_read_as_python_would() -> None:
    text = '{"a": [1, -2.5e3, "\\ud83d\\ude00", true, null], "n": -9223372036854775808}'
    assert parse(text.encode()) == json.loads(text)
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse(nested.encode()) == json.loads(nested)


def test_echoes_of_any_input_encode() -> None:
    errors = [
        {
            "loc": ("body", "x"),
            "msg": "bad",
            "type": "t",
            "input": {"n": float("nan"), "s": "\ud800", "b": b"\xff", "i": 10**5000},
        }
    ]
    detail = safe_detail(errors)
    json.dumps(detail, allow_nan=False).encode("utf-8")
    assert detail[0]["loc"] == ["body", "x"]
    assert detail[0]["input"]["n"] == "nan"
    assert detail[0]["input"]["s"] == "\\ud800"
