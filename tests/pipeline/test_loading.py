"""Loading real presets from a local folder and from the Hugging Face cache, offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel
from safetensors.torch import save_file

from fastsvd.errors import FastSVDError, ModelNotAvailable
from fastsvd.pipeline import tiny
from fastsvd.pipeline.core import Models, VideoPipeline, load_pipeline
from fastsvd.pipeline.device import choose
from fastsvd.pipeline.loading import load_pretrained, load_single_file
from fastsvd.pipeline.presets import ANIMATE_LCM, SVD_XT_1_1
from fastsvd.runner import params_of
from fastsvd.schema import FewStepTextToVideoInput, TextToVideoInput

REQUEST = TextToVideoInput(prompt="a rocket", video_size={"width": 64, "height": 64}, steps=2)
FEW_STEP = FewStepTextToVideoInput(prompt="a rocket", video_size={"width": 64, "height": 64})
LCM_FILE = "AnimateLCM-SVD-xt-1.1.safetensors"
LIGHTNING_FILE = "sdxl_lightning_4step_unet.safetensors"


@pytest.fixture(scope="module")
def saved_models(tiny_pipeline: VideoPipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models saved in the Hugging Face folder layout, as real weights would be."""
    root = tmp_path_factory.mktemp("weights")
    tiny_pipeline.video.save_pretrained(root / "video")
    tiny_pipeline.first_frame.save_pretrained(root / "first-frame")
    # the distilled U-Nets as their authors publish them: one safetensors file each
    assert tiny_pipeline.few_step_video is not None
    assert tiny_pipeline.few_step_first_frame
    (root / "lcm").mkdir()
    save_file(tiny_pipeline.few_step_video.unet.state_dict(), root / "lcm" / LCM_FILE)
    (root / "lightning").mkdir()
    save_file(
        tiny_pipeline.few_step_first_frame.unet.state_dict(), root / "lightning" / LIGHTNING_FILE
    )
    return root


def test_real_preset_loads_from_local_folders(
    tiny_pipeline: VideoPipeline, saved_models: Path
) -> None:
    placement = choose("cpu", "fp32")
    loaded = load_pipeline(
        SVD_XT_1_1,
        placement,
        video_model=str(saved_models / "video"),
        first_frame_model=str(saved_models / "first-frame"),
        few_step_video_model=str(saved_models / "lcm"),  # a folder holding the default file
        few_step_first_frame_model=str(saved_models / "lightning" / LIGHTNING_FILE),  # a file
    )
    for ours, theirs in (
        (loaded.video, tiny_pipeline.video),
        (loaded.first_frame, tiny_pipeline.first_frame),
        (loaded.few_step_video, tiny_pipeline.few_step_video),
        (loaded.few_step_first_frame, tiny_pipeline.few_step_first_frame),
    ):
        assert ours is not None
        assert theirs is not None
        for name, module in theirs.components.items():
            if isinstance(module, torch.nn.Module):
                got_state = ours.components[name].state_dict()
                assert all(torch.equal(got_state[k], v) for k, v in module.state_dict().items())
    # the distilled U-Nets run on the 20-step family's components: one VAE, one image encoder
    assert loaded.few_step_video is not None
    assert loaded.few_step_first_frame is not None
    assert loaded.few_step_video.vae is loaded.video.vae
    assert loaded.few_step_first_frame.text_encoder_2 is loaded.first_frame.text_encoder_2
    same_weights = VideoPipeline(
        SVD_XT_1_1,
        placement,
        tiny_pipeline.video,
        tiny_pipeline.first_frame,
        few_step_video=tiny_pipeline.few_step_video,
        few_step_first_frame=tiny_pipeline.few_step_first_frame,
    )
    for request in (REQUEST, FEW_STEP):
        got = loaded.generate(params_of(request, seed=3))
        want = same_weights.generate(params_of(request, seed=3))
        assert np.array_equal(np.asarray(got.first_frame), np.asarray(want.first_frame))
        # Weights read back from safetensors sit at other addresses; oneDNN's kernels may then
        # round differently in the last float bit, which can flip a pixel by one level.
        assert np.abs(got.frames.astype(np.int16) - want.frames).max() <= 1


def test_few_step_family_alone_loads_no_20_step_unet(saved_models: Path) -> None:
    loaded = load_pipeline(
        SVD_XT_1_1,
        choose("cpu", "fp32"),
        models=Models(video=False, first_frame=False),
        video_model=str(saved_models / "video"),
        first_frame_model=str(saved_models / "first-frame"),
        few_step_video_model=str(saved_models / "lcm" / LCM_FILE),
        few_step_first_frame_model=str(saved_models / "lightning"),
    )
    assert loaded._video is None
    assert loaded.first_frame is None
    assert loaded.few_step_video is not None
    assert loaded.few_step_first_frame is not None
    video = loaded.generate(params_of(FEW_STEP, seed=1))
    assert video.frames.shape == (25, 64, 64, 3)
    with pytest.raises(FastSVDError, match="loaded without the 20-step video model"):
        loaded.generate(params_of(REQUEST, seed=1))


def test_missing_few_step_file_names_it_and_how_to_get_it(saved_models: Path) -> None:
    with pytest.raises(ModelNotAvailable) as caught:
        load_single_file(
            UNetSpatioTemporalConditionModel,
            tiny.video_unet_config(),
            str(saved_models / "video"),  # a folder without the file
            default_file=LCM_FILE,
            dtype=torch.float32,
            role="few-step video (AnimateLCM-SVD-xt)",
            env_var="FASTSVD_FEW_STEP_VIDEO_MODEL",
        )
    message = caught.value.message
    assert LCM_FILE in message
    assert "FASTSVD_FEW_STEP_VIDEO_MODEL" in message
    assert "\n" not in message


def test_hub_reference_offline_says_how_to_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotAvailable) as caught:
        load_single_file(
            UNetSpatioTemporalConditionModel,
            tiny.video_unet_config(),
            ANIMATE_LCM,
            default_file=LCM_FILE,
            dtype=torch.float32,
            role="few-step video (AnimateLCM-SVD-xt)",
            env_var="FASTSVD_FEW_STEP_VIDEO_MODEL",
        )
    message = caught.value.message
    assert f"`hf download wangfuyun/AnimateLCM-SVD-xt {LCM_FILE}`" in message
    assert "offline mode is on" in message


def test_a_file_of_another_model_is_refused_whole(saved_models: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="do not fit UNetSpatioTemporalConditionModel"):
        load_single_file(
            UNetSpatioTemporalConditionModel,
            tiny.video_unet_config(),
            str(saved_models / "lightning" / LIGHTNING_FILE),  # SDXL's U-Net, not SVD's
            default_file=LCM_FILE,
            dtype=torch.float32,
            role="few-step video (AnimateLCM-SVD-xt)",
            env_var="FASTSVD_FEW_STEP_VIDEO_MODEL",
        )


def test_missing_local_folder_names_the_model() -> None:
    from diffusers import StableVideoDiffusionPipeline

    with pytest.raises(ModelNotAvailable) as caught:
        load_pretrained(
            StableVideoDiffusionPipeline,
            "/no/such/folder",
            dtype=torch.float32,
            role="video (SVD-XT)",
            env_var="FASTSVD_VIDEO_MODEL",
        )
    message = caught.value.message
    assert "'/no/such/folder'" in message
    assert "FASTSVD_VIDEO_MODEL" in message
    assert "--preset tiny" in message


def put_in_hf_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay ``folder`` out as huggingface_hub caches a downloaded repo snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastsvd.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.slow
def test_cli_loads_hub_ids_from_the_cache_offline(saved_models: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    put_in_hf_cache(cache, "example/tiny-svd", saved_models / "video")
    put_in_hf_cache(cache, "example/tiny-sdxl", saved_models / "first-frame")
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "FASTSVD_VIDEO_MODEL": "example/tiny-svd",
        "FASTSVD_FIRST_FRAME_MODEL": "example/tiny-sdxl",
        "FASTSVD_DEVICE": "cpu",  # a real preset runs on the CPU only when asked
    }
    out = run_cli(
        "generate", "a rocket", "--video-size", "64x64", "--steps", "1", "--seed", "1",
        "-q", "-o", "cached.mp4", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "cached.mp4").stat().st_size > 0
    # the few-step family: a repo id alone (its default file) and a repo id with a file
    put_in_hf_cache(cache, "example/tiny-lcm", saved_models / "lcm")
    put_in_hf_cache(cache, "example/tiny-lightning", saved_models / "lightning")
    env["FASTSVD_FEW_STEP_VIDEO_MODEL"] = "example/tiny-lcm"
    env["FASTSVD_FEW_STEP_FIRST_FRAME_MODEL"] = f"example/tiny-lightning/{LIGHTNING_FILE}"
    out = run_cli(
        "generate", "a rocket", "--few-step", "--video-size", "64x64", "--steps", "2",
        "-q", "-o", "few.mp4", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "few.mp4").stat().st_size > 0


@pytest.mark.slow
def test_cli_without_weights_says_which_model_and_how_to_get_it(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    env.pop("FASTSVD_VIDEO_MODEL", None)
    env["FASTSVD_DEVICE"] = "cpu"  # past the platform check, to the weights
    out = run_cli("generate", "a rocket", "-q", env=env, cwd=tmp_path)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: video (SVD-XT) model ")
    assert "stabilityai/stable-video-diffusion-img2vid-xt-1-1" in lines[0]
    assert "hf download" in lines[0]
    assert "--preset tiny" in lines[0]
    assert "Traceback" not in out.stderr
