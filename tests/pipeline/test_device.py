"""Where the models run: the CPU in float32 unless a dtype is chosen, CUDA only where there is
one."""

from __future__ import annotations

import pytest
import torch

from fastsvd.errors import FastSVDError
from fastsvd.pipeline.device import choose


def test_cpu_runs_float32_and_dtypes_can_be_chosen() -> None:
    assert choose("cpu").dtype == torch.float32
    assert choose("cpu", "bf16").dtype == torch.bfloat16
    assert str(choose("cpu", "fp16")) == "cpu float16"


@pytest.mark.parametrize(("device", "dtype"), [("cpu", "int8"), ("tpu", None)])
def test_unknown_device_or_dtype_is_refused(device: str, dtype: str | None) -> None:
    with pytest.raises(FastSVDError):
        choose(device, dtype)


def test_cuda_is_used_only_where_there_is_one() -> None:
    if torch.cuda.is_available():
        assert choose().device.type == "cuda"
        assert choose().dtype in (torch.bfloat16, torch.float16)
    else:
        assert choose().device.type == "cpu"
        with pytest.raises(FastSVDError, match="no usable CUDA GPU"):
            choose("cuda")
