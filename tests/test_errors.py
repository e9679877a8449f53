"""The error tree: a job's failure record is built from its exception, with the table's status."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError

from fastsvd import errors
from fastsvd.errors import (
    Cancelled,
    Failure,
    FastSVDError,
    GenerationCancelled,
    OutOfMemory,
    RequestTimeout,
    WorkerLost,
    http_status,
)
from fastsvd.schema import TextToVideoInput


@pytest.mark.parametrize(
    ("exc", "record"),
    [
        (Cancelled(), Failure("Request cancelled", "cancelled", 499)),
        # where the pipeline stopped is for the log; the caller reads that it was cancelled
        (GenerationCancelled("cancelled before video step 3"), Failure.of(Cancelled())),
        (RequestTimeout(), Failure("Request start timeout exceeded", "request_timeout", 504)),
        (WorkerLost("it stopped"), Failure("it stopped", "runner_disconnected", 500)),
        (OutOfMemory("out of memory"), Failure("out of memory", "out_of_memory", 503)),
        (ValueError("a secret path"), Failure("internal error: ValueError", "internal_error", 500)),
    ],
)
def test_a_failure_is_recorded_from_its_exception(exc: BaseException, record: Failure) -> None:
    assert Failure.of(exc) == record


def test_a_validation_error_is_recorded_as_the_invalid_field() -> None:
    with pytest.raises(ValidationError) as caught:
        TextToVideoInput.model_validate({"prompt": "x", "steps": 0})
    failure = Failure.of(caught.value)
    assert (failure.error_type, failure.http_status) == ("validation_error", 422)
    assert failure.message.startswith("steps: ")


def test_a_class_answers_as_its_instances_and_the_tree_draws_every_class() -> None:
    assert http_status(GenerationCancelled) == http_status(Cancelled()) == 499
    classes = [
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, FastSVDError | errors.ClientError)
    ]
    drawing = (errors.__doc__ or "").split("Each class")[0]
    assert [name for name in classes if f" {name} " not in drawing] == []
