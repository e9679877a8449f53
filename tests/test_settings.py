"""Settings come from FASTSVD_* variables once; flags override them."""

from __future__ import annotations

import pytest

from fastsvd.errors import FastSVDError
from fastsvd.settings import Settings


def test_defaults_without_environment() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings().preset == "svd-xt-1.1"


def test_environment_and_overrides() -> None:
    env = {
        "FASTSVD_PRESET": "tiny",
        "FASTSVD_DEVICE": "cpu",
        "FASTSVD_VIDEO_MODEL": " /w ",
        "FASTSVD_DTYPE": "",
    }
    got = Settings.from_env(env)
    assert (got.preset, got.device, got.video_model, got.dtype) == ("tiny", "cpu", "/w", None)
    assert got.with_overrides(preset="svd-xt", device=None).preset == "svd-xt"
    assert got.with_overrides(preset=None).preset == "tiny"


def test_limits_from_the_environment() -> None:
    got = Settings.from_env(
        {
            "FASTSVD_MAX_ACTIVE_PER_KEY": "7",
            "FASTSVD_SUBMITS_PER_MINUTE": "0",
            "FASTSVD_REQUESTS_PER_S": "2.5",
            "FASTSVD_AUTH_FAILURES_PER_S": "0.5",
        }
    )
    assert (got.max_active_per_key, got.submits_per_minute) == (7, 0)
    assert (got.requests_per_s, got.auth_failures_per_s) == (2.5, 0.5)
    assert Settings().submits_per_minute == 120


@pytest.mark.model  # builds the model runner, which imports torch
def test_the_few_step_family_and_the_endpoints_a_worker_serves() -> None:
    from fastsvd import constants as c
    from fastsvd.endpoints import (
        ENDPOINTS,
        FEW_STEP_IMAGE_TO_VIDEO,
        FEW_STEP_TEXT_TO_VIDEO,
        configured,
    )
    from fastsvd.runner import ModelRunner, data_uri_only

    env = {
        "FASTSVD_ENDPOINTS": (
            f" {c.FEW_STEP_IMAGE_TO_VIDEO_ENDPOINT} ,{c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT}"
        ),
        "FASTSVD_FEW_STEP_GUIDANCE": "1.0",
        "FASTSVD_FEW_STEP_VIDEO_MODEL": "me/lcm/file.safetensors",
        "FASTSVD_DEVICE": "cpu",  # a real preset runs on the CPU only when asked
    }
    got = Settings.from_env(env)
    assert got.few_step_guidance == 1.0
    assert got.few_step_video_model == "me/lcm/file.safetensors"
    served = configured(got)
    assert served.ids() == [c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT, c.FEW_STEP_IMAGE_TO_VIDEO_ENDPOINT]
    runner = ModelRunner(got, data_uri_only, served.needs())
    assert runner.capabilities == {FEW_STEP_TEXT_TO_VIDEO, FEW_STEP_IMAGE_TO_VIDEO}  # few-step only
    assert configured(Settings()) is ENDPOINTS  # default: all of them


def test_an_unknown_endpoint_or_guidance_out_of_range_is_refused() -> None:
    from fastsvd.endpoints import configured

    with pytest.raises(FastSVDError, match=r"unknown endpoint 'fal-ai/nope'.*FASTSVD_ENDPOINTS"):
        configured(Settings.from_env({"FASTSVD_ENDPOINTS": "fal-ai/nope"}))
    with pytest.raises(ValueError, match=r"FASTSVD_FEW_STEP_GUIDANCE must be 1\.0-2\.0"):
        Settings.from_env({"FASTSVD_FEW_STEP_GUIDANCE": "3"})


def test_the_housekeeping_interval_must_be_positive() -> None:
    got = Settings.from_env({"FASTSVD_HOUSEKEEPING_INTERVAL_S": "0.2"})
    assert got.housekeeping_interval_s == 0.2
    assert Settings().housekeeping_interval_s == 5.0
    for value in ("0", "0.0"):  # negatives: refused as every number setting is (below)
        with pytest.raises(ValueError, match="FASTSVD_HOUSEKEEPING_INTERVAL_S must be more than 0"):
            Settings.from_env({"FASTSVD_HOUSEKEEPING_INTERVAL_S": value})


def test_fps_conditioning_is_preset_or_request() -> None:
    assert Settings.from_env({}).fps_conditioning == "preset"
    env = {"FASTSVD_FPS_CONDITIONING": "Request"}
    assert Settings.from_env(env).fps_conditioning == "request"
    with pytest.raises(ValueError, match="FASTSVD_FPS_CONDITIONING must be preset or request"):
        Settings.from_env({"FASTSVD_FPS_CONDITIONING": "fps-1"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FASTSVD_LEASE_S", "abc"),
        ("FASTSVD_OUTAGE_WAIT_S", "-5"),
        ("FASTSVD_RETENTION_S", "nan"),
        ("FASTSVD_MAX_QUEUED", "inf"),
        ("FASTSVD_DRAIN_S", "-1"),
        ("FASTSVD_GPU_MEMORY_GB", "0.5"),
    ],
)
def test_a_bad_number_setting_is_refused_naming_it(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be a number .*, not {value}$"):
        Settings.from_env({name: value})


def test_each_model_of_each_family_is_overridden_by_its_own_variable() -> None:
    from fastsvd.pipeline.presets import FAMILIES, MODEL_STAGES, env_var, model_key

    for family in FAMILIES:
        for stage in MODEL_STAGES:
            got = Settings.from_env({env_var(family, stage): "/models/x"})
            for other_family in FAMILIES:
                for other_stage in MODEL_STAGES:
                    same = (other_family, other_stage) == (family, stage)
                    want = "/models/x" if same else None
                    assert got.model_reference(model_key(other_family, other_stage)) == want


def test_a_yes_no_setting_is_read_one_way() -> None:
    from fastsvd.settings import flag

    assert [flag(v) for v in ("1", " Yes", "TRUE", "on")] == [True] * 4
    assert [flag(v) for v in ("0", "no", "False", "OFF")] == [False] * 4
    assert flag(None) is None
    assert flag(" ") is None
    with pytest.raises(ValueError, match="FASTSVD_AUTH must be 1, true, yes or on"):
        Settings.from_env({"FASTSVD_AUTH": "maybe"})
    assert Settings.from_env({"FASTSVD_ALLOW_PRIVATE_URLS": "on"}).allow_private_urls
