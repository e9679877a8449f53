"""The weights manifest: minimal download commands, and which models are present or missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fastsvd.endpoints import FEW_STEP_IMAGE_TO_VIDEO, IMAGE_TO_VIDEO, TEXT_TO_VIDEO
from fastsvd.pipeline import weights
from fastsvd.pipeline.presets import PRESETS
from fastsvd.settings import Settings

SVD_1_1 = "stabilityai/stable-video-diffusion-img2vid-xt-1-1"


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def fp16_folder(root: Path, model: weights.ModelWeights) -> Path:
    """A folder as ``hf download`` leaves the manifest's files (empty stand-ins)."""
    for name in ("model_index.json", *(c.variant_file for c in model.components)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def test_download_command_asks_for_configs_and_fp16_files_only() -> None:
    video = weights.manifest(PRESETS["svd-xt-1.1"])["video"]
    assert video.gated
    assert video.page == f"https://huggingface.co/{SVD_1_1}"
    command = weights.download_command(video, local_dir="/models/svd")
    assert command.startswith(f"hf download {SVD_1_1} --include model_index.json ")
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in command
    assert "image_encoder/model.fp16.safetensors" in command
    assert command.endswith("--local-dir /models/svd")
    assert "onnx" not in command
    assert "openvino" not in command
    assert ".safetensors " not in command.replace(".fp16.safetensors", "")
    # about 4.5 GB: the three fp16 components (parameter counts x 2 bytes)
    assert 4.4e9 < video.bytes() < 4.6e9
    lcm = weights.manifest(PRESETS["svd-xt-1.1"])["few_step_video"]
    single = "hf download wangfuyun/AnimateLCM-SVD-xt AnimateLCM-SVD-xt-1.1.safetensors"
    assert weights.download_command(lcm) == single
    assert weights.manifest(PRESETS["tiny"]) == {}


def test_few_step_alone_needs_no_teacher_unet() -> None:
    settings = Settings()
    needed = {r.model.key: r for r in weights.requirements(settings, {FEW_STEP_IMAGE_TO_VIDEO})}
    assert set(needed) == {"video", "few_step_video"}
    assert "unet" not in needed["video"].components
    both = weights.requirements(settings, {IMAGE_TO_VIDEO, FEW_STEP_IMAGE_TO_VIDEO})
    assert "unet" in next(r for r in both if r.model.key == "video").components


def test_check_finds_folders_and_the_cache_and_lists_what_is_missing(
    tmp_path: Path, empty_cache: Path
) -> None:
    models = weights.manifest(PRESETS["svd-xt-1.1"])
    folder = fp16_folder(tmp_path / "svd", models["video"])
    settings = Settings(video_model=str(folder))
    report = weights.check(settings, {TEXT_TO_VIDEO})
    assert [p.location for p in report.present] == [folder]
    (missing,) = report.missing
    assert missing.requirement.model.key == "first_frame"
    line = report.message()
    assert line.startswith("first-frame (SDXL) 'stabilityai/stable-diffusion-xl-base-1.0'")
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0 --include" in line
    # the same files in the hub cache, under the released id
    snapshot = empty_cache / "models--stabilityai--stable-diffusion-xl-base-1.0" / "snapshots"
    fp16_folder(snapshot / ("0" * 40), models["first_frame"])
    (snapshot.parent / "refs").mkdir()
    (snapshot.parent / "refs" / "main").write_text("0" * 40)
    assert weights.check(settings, {TEXT_TO_VIDEO}).complete
    # a folder lacking a component names it, and the command fills that folder
    shutil.rmtree(folder / "image_encoder")
    (gone,) = weights.check(settings, {TEXT_TO_VIDEO}).missing
    assert "has no image_encoder weights" in gone.reason
    assert gone.command.endswith(f"--local-dir {folder}")


def test_missing_gated_model_says_where_to_accept_its_licence(empty_cache: Path) -> None:
    report = weights.check(Settings(), {IMAGE_TO_VIDEO})
    assert not report.complete
    assert report.message() == report.missing[0].line()
    assert f"gated: accept its licence at https://huggingface.co/{SVD_1_1}" in report.message()
    error = report.error().message
    assert "offline mode is on" in error
    assert "FASTSVD_VIDEO_MODEL" in error
