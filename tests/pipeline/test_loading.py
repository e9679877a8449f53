"""Loading real presets from a local folder and from the Hugging Face cache, offline."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel
from safetensors.torch import load_file, save_file

from fastsvd.errors import FastSVDError, ModelNotAvailable
from fastsvd.hooks import Stage
from fastsvd.pipeline import tiny
from fastsvd.pipeline.core import VideoPipeline
from fastsvd.pipeline.device import choose
from fastsvd.pipeline.loading import load_pipeline, load_pretrained, load_single_file
from fastsvd.pipeline.presets import (
    ANIMATE_LCM,
    FEW_STEP,
    STANDARD,
    SVD_XT_1_1,
    TINY,
    Capability,
)
from fastsvd.runner import params_of
from fastsvd.schema import FewStepTextToVideoInput, TextToVideoInput
from fastsvd.settings import Settings
from tests.support.commands import run_cli

REQUEST = TextToVideoInput(prompt="a rocket", video_size={"width": 64, "height": 64}, steps=2)
FEW_STEP_REQUEST = FewStepTextToVideoInput(
    prompt="a rocket", video_size={"width": 64, "height": 64}
)
CPU = choose("cpu", "fp32")
STANDARD_MODELS = Capability(STANDARD, text=True).models  # the 20-step family's
FEW_STEP_MODELS = Capability(FEW_STEP, text=True).models
LCM_FILE = "AnimateLCM-SVD-xt-1.1.safetensors"
LIGHTNING_FILE = "sdxl_lightning_4step_unet.safetensors"


@pytest.fixture(scope="module")
def saved_models(tiny_pipeline: VideoPipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models saved in the Hugging Face folder layout, as real weights would be."""
    root = tmp_path_factory.mktemp("weights")
    tiny_pipeline.video.save_pretrained(root / "video")
    tiny_pipeline.first_frame.save_pretrained(root / "first-frame")
    # the distilled U-Nets as their authors publish them: one safetensors file each
    assert tiny_pipeline.model(FEW_STEP, Stage.video) is not None
    assert tiny_pipeline.model(FEW_STEP, Stage.first_frame)
    (root / "lcm").mkdir()
    save_file(tiny_pipeline.model(FEW_STEP, Stage.video).unet.state_dict(), root / "lcm" / LCM_FILE)
    (root / "lightning").mkdir()
    save_file(
        tiny_pipeline.model(FEW_STEP, Stage.first_frame).unet.state_dict(),
        root / "lightning" / LIGHTNING_FILE,
    )
    return root


@pytest.fixture(scope="module")
def saved_fp16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models as ``hf download <repo> --include "*.fp16.safetensors" "*.json"`` leaves
    a folder: configs and fp16 variant weights only."""
    root = tmp_path_factory.mktemp("fp16")
    half = load_pipeline(TINY, choose("cpu", "fp16"), models=STANDARD_MODELS)
    assert half.first_frame is not None
    half.first_frame.save_pretrained(root / "first-frame", variant="fp16")
    half.video.save_pretrained(root / "video", variant="fp16")
    weights = sorted(p.name for p in root.rglob("*.safetensors"))
    assert weights
    assert all(name.endswith(".fp16.safetensors") for name in weights)
    return root


def test_fp16_variant_folder_loads_straight_into_the_target_dtype(saved_fp16: Path) -> None:
    loaded = load_pipeline(
        SVD_XT_1_1,
        choose("cpu", "bf16"),
        models=STANDARD_MODELS,
        settings=Settings(
            video_model=str(saved_fp16 / "video"), first_frame_model=str(saved_fp16 / "first-frame")
        ),
    )
    for pipe, folder in ((loaded.video, "video"), (loaded.first_frame, "first-frame")):
        assert pipe is not None
        for name, module in pipe.components.items():
            if not isinstance(module, torch.nn.Module):
                continue
            file = next((saved_fp16 / folder / name).glob("*.fp16.safetensors"))
            saved = load_file(file)
            state = module.state_dict()
            assert {t.dtype for t in state.values()} == {torch.bfloat16}, name
            assert all(torch.equal(state[k], v.to(torch.bfloat16)) for k, v in saved.items())


def test_real_preset_loads_from_local_folders(
    tiny_pipeline: VideoPipeline, saved_models: Path
) -> None:
    placement = choose("cpu", "fp32")
    loaded = load_pipeline(
        SVD_XT_1_1,
        placement,
        settings=Settings(
            video_model=str(saved_models / "video"),
            first_frame_model=str(saved_models / "first-frame"),
            few_step_video_model=str(saved_models / "lcm"),  # a folder holding the default file
            few_step_first_frame_model=str(saved_models / "lightning" / LIGHTNING_FILE),  # a file
        ),
    )
    for ours, theirs in (
        (loaded.video, tiny_pipeline.video),
        (loaded.first_frame, tiny_pipeline.first_frame),
        (loaded.model(FEW_STEP, Stage.video), tiny_pipeline.model(FEW_STEP, Stage.video)),
        (
            loaded.model(FEW_STEP, Stage.first_frame),
            tiny_pipeline.model(FEW_STEP, Stage.first_frame),
        ),
    ):
        assert ours is not None
        assert theirs is not None
        for name, module in theirs.components.items():
            if isinstance(module, torch.nn.Module):
                got_state = ours.components[name].state_dict()
                assert all(torch.equal(got_state[k], v) for k, v in module.state_dict().items())
    # the distilled U-Nets run on the 20-step family's components: one VAE, one image encoder
    assert loaded.model(FEW_STEP, Stage.video) is not None
    assert loaded.model(FEW_STEP, Stage.first_frame) is not None
    assert loaded.model(FEW_STEP, Stage.video).vae is loaded.video.vae
    assert (
        loaded.model(FEW_STEP, Stage.first_frame).text_encoder_2
        is loaded.first_frame.text_encoder_2
    )
    same_weights = VideoPipeline(SVD_XT_1_1, placement, dict(tiny_pipeline.models))
    for request in (REQUEST, FEW_STEP_REQUEST):
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
        models=FEW_STEP_MODELS,
        settings=Settings(
            video_model=str(saved_models / "video"),
            first_frame_model=str(saved_models / "first-frame"),
            few_step_video_model=str(saved_models / "lcm" / LCM_FILE),
            few_step_first_frame_model=str(saved_models / "lightning"),
        ),
    )
    assert loaded.model(STANDARD, Stage.video) is None
    assert loaded.first_frame is None
    assert loaded.model(FEW_STEP, Stage.video) is not None
    assert loaded.model(FEW_STEP, Stage.first_frame) is not None
    video = loaded.generate(params_of(FEW_STEP_REQUEST, seed=1))
    assert video.frames.shape == (25, 64, 64, 3)
    with pytest.raises(FastSVDError, match="loaded without the 20-step video model"):
        loaded.generate(params_of(REQUEST, seed=1))


def test_missing_few_step_file_names_it_and_how_to_get_it(saved_models: Path) -> None:
    with pytest.raises(ModelNotAvailable) as caught:
        load_single_file(
            UNetSpatioTemporalConditionModel,
            tiny.video_unet_config(),
            str(saved_models / "video"),  # a folder without the file
            CPU,
            default_file=LCM_FILE,
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
            CPU,
            default_file=LCM_FILE,
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
            CPU,
            default_file=LCM_FILE,
            role="few-step video (AnimateLCM-SVD-xt)",
            env_var="FASTSVD_FEW_STEP_VIDEO_MODEL",
        )


def test_missing_local_folder_names_the_model() -> None:
    from diffusers import StableVideoDiffusionPipeline

    with pytest.raises(ModelNotAvailable) as caught:
        load_pretrained(
            StableVideoDiffusionPipeline,
            "/no/such/folder",
            CPU,
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


def generates(env: dict[str, str], cwd: Path, output: str, *flags: str) -> None:
    """``fastsvd generate`` makes a video at 64x64 (one step unless ``flags`` say otherwise)."""
    out = run_cli(
        "generate", "a rocket", "--video-size", "64x64", "--steps", "1", "--seed", "1", *flags,
        "-q", "-o", output, env=env, cwd=cwd,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (cwd / output).stat().st_size > 0


@pytest.mark.slow
def test_cli_loads_fp16_folders_and_hub_ids_from_the_cache_offline(
    saved_models: Path, saved_fp16: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "hub"
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "FASTSVD_DEVICE": "cpu",
        "FASTSVD_VIDEO_MODEL": str(saved_fp16 / "video"),
        "FASTSVD_FIRST_FRAME_MODEL": str(saved_fp16 / "first-frame"),
    }
    env.pop("FASTSVD_PRESET", None)  # the default preset, its models in local fp16 folders
    generates(env, tmp_path, "folders.mp4")
    # hub ids in the cache: fp16 variant files for the video model, plain ones for SDXL
    put_in_hf_cache(cache, "example/tiny-svd", saved_fp16 / "video")
    put_in_hf_cache(cache, "example/tiny-sdxl", saved_models / "first-frame")
    env["FASTSVD_VIDEO_MODEL"] = "example/tiny-svd"
    env["FASTSVD_FIRST_FRAME_MODEL"] = "example/tiny-sdxl"
    generates(env, tmp_path, "cached.mp4")
    # the few-step family: a repo id alone (its default file) and a repo id with a file
    put_in_hf_cache(cache, "example/tiny-lcm", saved_models / "lcm")
    put_in_hf_cache(cache, "example/tiny-lightning", saved_models / "lightning")
    env["FASTSVD_FEW_STEP_VIDEO_MODEL"] = "example/tiny-lcm"
    env["FASTSVD_FEW_STEP_FIRST_FRAME_MODEL"] = f"example/tiny-lightning/{LIGHTNING_FILE}"
    generates(env, tmp_path, "few.mp4", "--few-step", "--steps", "2")


@pytest.mark.slow
def test_cli_without_weights_says_which_model_and_how_to_get_it(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    env.pop("FASTSVD_VIDEO_MODEL", None)
    env["FASTSVD_DEVICE"] = "cpu"  # past the platform check, to the weights
    out = run_cli("generate", "a rocket", "-q", env=env, cwd=tmp_path)
    assert out.returncode == 1
    # a line per missing model (text-to-video needs two) with its minimal download command
    head, video, first_frame, advice = out.stderr.strip().splitlines()
    assert head.startswith("error: model weights are missing")
    repo = "stabilityai/stable-video-diffusion-img2vid-xt-1-1"
    assert video.startswith(f"video (SVD-XT 1.1) '{repo}' is missing")
    assert f"hf download {repo} --include model_index.json" in video
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in video
    assert f"gated: accept its licence at https://huggingface.co/{repo}" in video
    assert first_frame.startswith("first-frame (SDXL) 'stabilityai/stable-diffusion-xl-base-1.0'")
    assert "--preset tiny" in advice
    assert "Traceback" not in out.stderr


def gated(status: int) -> Exception:
    """The hub's own error for a gated repo, as ``huggingface_hub`` raises it for ``status``."""
    import httpx
    from huggingface_hub.errors import GatedRepoError

    repo = SVD_XT_1_1.base.video_model
    url = f"https://huggingface.co/api/models/{repo}/revision/main"
    response = httpx.Response(
        status, request=httpx.Request("GET", url), headers={"x-request-id": "Root=1-abc"}
    )
    explanation = (
        f"Access to model {repo} is restricted. You must have access to it and be authenticated"
        " to access it. Please log in."
        if status == 401
        else f"Access to model {repo} is restricted and you are not in the authorized list. "
        f"Visit https://huggingface.co/{repo} to ask for access."
    )
    return GatedRepoError(
        f"{status} Client Error. (Request ID: Root=1-abc)\n\nCannot access gated repo for url "
        f"{url}.\n{explanation}",
        response=response,
    )


@pytest.mark.parametrize(
    ("status", "token", "says"),
    [
        (401, None, "this model is gated: accept its licence at {page}, then set HF_TOKEN"),
        (403, "hf_example", "your token has no access to {repo}: accept the licence at {page}"),
    ],
)
def test_gated_repo_says_where_to_accept_the_licence(
    monkeypatch: pytest.MonkeyPatch, status: int, token: str | None, says: str
) -> None:
    import huggingface_hub

    def refuse(*_args: object, **_kwargs: object) -> str:
        raise gated(status)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(ModelNotAvailable) as caught:
        load_pipeline(SVD_XT_1_1, CPU, models=frozenset({(STANDARD, Stage.video)}))
    repo = SVD_XT_1_1.base.video_model
    message = caught.value.message
    assert says.format(repo=repo, page=f"https://huggingface.co/{repo}") in message
    # the hub's explanation is kept whole, not its "401 Client Error (Request ID...)" prefix
    assert "Request ID" not in message
    assert str(gated(status)).splitlines()[-1] in message
    assert "\n" not in message
