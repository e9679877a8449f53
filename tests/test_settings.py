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
    from fastsvd.endpoints import ENDPOINTS, FEW_STEP, configured
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
    assert ModelRunner(got, data_uri_only).capabilities == FEW_STEP  # loads the few-step only
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
