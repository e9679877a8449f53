"""The memory plan and the platform checks, with the GPU injected (``device.Platform``, a total
memory): the plan chosen for each card size, what does not fit and what is said about it, the
dtype below compute capability 8.0, a real preset without usable CUDA, the start line, and
out-of-memory at load and inside a request."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from fastsvd import constants as c
from fastsvd.endpoints import ENDPOINTS, IMAGE_TO_VIDEO
from fastsvd.errors import DoesNotFit, InvalidInput, NoUsableGpu, OutOfMemory
from fastsvd.hooks import NO_HOOKS, Stage
from fastsvd.pipeline import core, loading, memory
from fastsvd.pipeline.core import VideoPipeline
from fastsvd.pipeline.device import Platform, choose
from fastsvd.pipeline.presets import FAMILIES, FEW_STEP, STANDARD
from fastsvd.runner import ModelRunner, data_uri_only
from fastsvd.schema import ImageToVideoInput
from fastsvd.settings import Settings

GiB = 1024**3
ALL = {
    c.TEXT_TO_VIDEO_ENDPOINT: frozenset({(STANDARD, Stage.first_frame), (STANDARD, Stage.video)}),
    c.IMAGE_TO_VIDEO_ENDPOINT: frozenset({(STANDARD, Stage.video)}),
    c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT: frozenset(
        {(FEW_STEP, Stage.first_frame), (FEW_STEP, Stage.video)}
    ),
    c.FEW_STEP_IMAGE_TO_VIDEO_ENDPOINT: frozenset({(FEW_STEP, Stage.video)}),
}


def gpu(total_gib: float = 80, capability: tuple[int, int] = (9, 0)) -> Platform:
    return Platform(
        torch_version="2.7.1",
        cuda_build="12.8",
        cuda_usable=True,
        gpu_name="NVIDIA Test GPU",
        total_bytes=int(total_gib * GiB),
        capability=capability,
        driver="570.86",
        driver_cuda="12.8",
    )


def plan(total_gib: float, **kwargs: object) -> memory.Plan:
    return memory.choose(int(total_gib * GiB), ALL, dtype_bytes=2, preset_chunk=8, **kwargs)  # type: ignore[arg-type]


def test_the_weights_are_counted_on_the_bundled_configs() -> None:
    parts = memory.part_parameters()
    assert set(parts) == set(memory.PARTS)
    # the distilled U-Nets keep their teachers' architectures
    assert parts["few_step_video_unet"] == parts["video_unet"]
    assert parts["few_step_first_frame_unet"] == parts["first_frame_unet"]
    assert parts["first_frame_unet"] > parts["video_unet"] > parts["image_encoder"]
    # bf16: all four endpoints' models come to about 18.3 GiB
    assert 18.0 < sum(memory.weight_bytes(2).values()) / GiB < 18.6


@pytest.mark.parametrize(
    ("total_gib", "mode", "resident_gib"),
    [
        (16, "offload-unets", (1.2, 1.6)),  # only the image encoder and the video VAE stay
        (24, "offload-first-frame", (6.8, 7.3)),  # both video models stay, SDXL waits
        (40, "resident", (18.0, 18.6)),
        (80, "resident", (18.0, 18.6)),
        (141, "resident", (18.0, 18.6)),
    ],
)
def test_the_plan_for_each_card(
    total_gib: int, mode: str, resident_gib: tuple[float, float]
) -> None:
    chosen = plan(total_gib)
    assert chosen.mode == mode
    assert chosen.decode_chunk == 8
    assert chosen.endpoints == tuple(ALL)  # all four fit, the default size at least
    low, high = resident_gib
    assert low < chosen.resident_bytes / GiB < high
    assert chosen.peak_bytes < total_gib * GiB - memory.RESERVE_BYTES


def test_a_size_the_plan_has_no_room_for_is_a_422_saying_why() -> None:
    small = plan(16)
    small.check_size(1024, 576)  # fal's default always fits
    with pytest.raises(InvalidInput, match=r"video_size: 1024x1024 needs more GPU memory") as exc:
        small.check_size(1024, 1024)
    assert "at most" in exc.value.message
    plan(24).check_size(1024, 1024)


def test_what_does_not_fit_is_left_out_or_refused_with_settings_that_fit() -> None:
    # 10 GiB: not all four; unnamed endpoints narrow to those that fit, and say so
    narrowed = plan(10)
    assert narrowed.left_out
    assert set(narrowed.endpoints) | set(narrowed.left_out) == set(ALL)
    assert "left out" in narrowed.describe()
    # named ones (FASTSVD_ENDPOINTS) are not narrowed: the message says what would fit
    with pytest.raises(DoesNotFit, match=r"FASTSVD_ENDPOINTS=\S+ and FASTSVD_MEMORY_MODE="):
        plan(10, explicit=True)
    # a memory mode that cannot hold them names the one that can
    with pytest.raises(DoesNotFit, match="FASTSVD_MEMORY_MODE=offload-first-frame"):
        plan(20, mode="resident")
    with pytest.raises(Exception, match="FASTSVD_MEMORY_MODE must be auto or one of"):
        plan(24, mode="tight")


def test_the_decode_chunk_is_one_of_the_fixed_values() -> None:
    seen = {plan(gib).decode_chunk for gib in (10, 11, 12, 16, 24, 80)}
    assert seen <= set(memory.DECODE_CHUNKS)
    assert seen > {8}  # a small card decodes fewer frames per call, a large one the preset's


def test_an_fp16_card_counts_its_vaes_decoding_in_fp32(tmp_path: Path) -> None:
    # both bundled VAE configs set force_upcast: fp16 decodes in fp32 (video.vae_upcast, and
    # diffusers' SDXL pipeline for the first frame)
    assert memory.upcast_vaes() == {"video_vae", "first_frame_vae"}
    bf16, fp16 = plan(80), plan(80, fp16=True)
    assert (bf16.mode, bf16.decode_chunk) == (fp16.mode, fp16.decode_chunk) == ("resident", 8)
    # the peak is the decode's: the temporal VAE's weights twice over, its activations in fp32
    pixels = memory.DEFAULT_SIZE[0] * memory.DEFAULT_SIZE[1]
    activations = fp16.decode_chunk * memory.DECODE_BYTES_PER_PIXEL_BYTE * pixels
    vae = memory.weight_bytes(2)["video_vae"]
    assert fp16.peak_bytes - bf16.peak_bytes == vae + 2 * activations  # 4 bytes a number, not 2
    # a 24 GB card: 1024x1024 fits in bf16, not in fp16; 16 GB decodes fewer frames per call
    plan(24).check_size(1024, 1024)
    with pytest.raises(InvalidInput, match="1024x1024"):
        plan(24, fp16=True).check_size(1024, 1024)
    assert plan(16, fp16=True).decode_chunk < plan(16).decode_chunk
    # a worker plans so below compute capability 8.0 (fp16)
    settings = Settings(data_dir=tmp_path, gpu_memory_gb=24)
    turing = ModelRunner(settings, data_uri_only, ENDPOINTS.needs(), platform=gpu(24, (7, 5)))
    ampere = ModelRunner(settings, data_uri_only, ENDPOINTS.needs(), platform=gpu(24, (8, 6)))
    assert turing.plan == plan(24, fp16=True)
    assert ampere.plan == plan(24)


def test_fp16_below_compute_capability_8_and_bf16_from_it() -> None:
    assert choose(platform=gpu(capability=(7, 5))).dtype == torch.float16  # T4, RTX 20xx
    assert choose(platform=gpu(capability=(7, 0))).dtype == torch.float16  # V100
    assert choose(platform=gpu(capability=(8, 0))).dtype == torch.bfloat16  # A100
    assert choose(platform=gpu(capability=(7, 5)), dtype="bf16").dtype == torch.bfloat16


def test_a_real_preset_without_usable_cuda_refuses_naming_the_cause() -> None:
    mismatch = Platform(
        torch_version="2.7.1",
        cuda_build="12.8",
        cuda_usable=False,
        cuda_error="The NVIDIA driver on your system is too old (found version 11040)",
        driver="470.82",
        driver_cuda="11.4",
    )
    with pytest.raises(NoUsableGpu, match=r"driver 470.82 supports CUDA up to 11.4.*CUDA 12.8"):
        choose(real=True, platform=mismatch)
    cpu_torch = Platform(torch_version="2.7.1", cuda_build=None, cuda_usable=False)
    with pytest.raises(NoUsableGpu, match=r"CPU-only build.*FASTSVD_DEVICE=cpu"):
        choose(real=True, platform=cpu_torch)
    with pytest.raises(NoUsableGpu, match="no usable CUDA GPU"):
        choose("cuda", real=True, platform=cpu_torch)
    assert choose("cpu", real=True).device.type == "cpu"  # for those who mean it
    assert choose(real=False, platform=cpu_torch).device.type == "cpu"  # the tiny preset


def test_the_start_line_names_the_platform_dtype_and_plan(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, preset="tiny", gpu_memory_gb=24)
    runner = ModelRunner(settings, data_uri_only, ENDPOINTS.needs(), platform=gpu(80, (7, 5)))
    line = runner.describe()
    for words in ("NVIDIA Test GPU", "80.0 GiB", "compute 7.5", "float16", "torch 2.7.1",
                  "CUDA 12.8", "driver 570.86", "memory plan", "of 24.0 GiB"):  # fmt: skip
        assert words in line, (words, line)
    assert runner.plan.total_bytes == 24 * GiB  # FASTSVD_GPU_MEMORY_GB over the card's 80


def test_out_of_memory_at_load_names_settings_that_would_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path, preset="tiny", gpu_memory_gb=24, compile="0")
    runner = ModelRunner(settings, data_uri_only, ENDPOINTS.needs(), platform=gpu(24))

    def out_of_memory(*_args: object, **_kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loading, "load_pipeline", out_of_memory)
    with pytest.raises(DoesNotFit, match=r"while loading the models.*FASTSVD_MEMORY_MODE=.*"
                       "FASTSVD_ENDPOINTS"):  # fmt: skip
        runner.load()


def test_out_of_memory_in_a_request_fails_it_alone_and_lets_its_tensors_go(
    tiny_pipeline: VideoPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(*_args: object, **_kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(core, "animate", out_of_memory)
    settings = Settings(data_dir=tmp_path, preset="tiny", device="cpu")
    runner = ModelRunner(settings, picture, ENDPOINTS.needs())
    runner._pipeline = tiny_pipeline  # loaded once for the session
    request = ImageToVideoInput.model_validate(
        {"image_url": "data:,", "video_size": {"width": 64, "height": 64}, "steps": 1}
    )
    with pytest.raises(OutOfMemory, match="out of GPU memory: CUDA out of memory") as exc:
        runner.run(IMAGE_TO_VIDEO, request, 1, NO_HOOKS)
    # nothing holds the failed request's frames: its exception ended before this one began
    assert exc.value.__context__ is None
    assert exc.value.__cause__ is None


def picture(_url: str) -> Image.Image:
    return Image.new("RGB", (64, 64))


def test_endpoints_map_onto_the_models_they_load() -> None:
    assert {e.id: e.capability.models for e in ENDPOINTS} == ALL  # type: ignore[attr-defined]
    # their names, in the warm-up marker's key (a compile cache survives the upgrade)
    names = ["text_to_video", "image_to_video", "few_step_text_to_video", "few_step_image_to_video"]
    assert [str(e.capability) for e in ENDPOINTS] == names


def test_the_memory_settings_are_checked_by_name() -> None:
    with pytest.raises(ValueError, match="FASTSVD_GPU_MEMORY_GB must be a number"):
        Settings.from_env({"FASTSVD_GPU_MEMORY_GB": "lots"})
    with pytest.raises(ValueError, match="FASTSVD_MEMORY_MODE must be auto or one of"):
        Settings.from_env({"FASTSVD_MEMORY_MODE": "tight"})
    got = Settings.from_env({"FASTSVD_MEMORY_MODE": "Auto", "FASTSVD_GPU_MEMORY_GB": "24"})
    assert (got.memory_mode, got.gpu_memory_gb) == (None, 24.0)
    assert Settings.from_env({"FASTSVD_MEMORY_MODE": "offload-unets"}).memory_mode == (
        "offload-unets"
    )


def test_the_pipeline_refuses_a_size_beyond_its_plan_before_computing(
    tiny_pipeline: VideoPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny_pipeline, "plan", plan(16))  # a 16 GB card's: up to 900,095 px
    request = ImageToVideoInput.model_validate(
        {"image_url": "data:,", "video_size": {"width": 1024, "height": 1024}, "steps": 1}
    )
    from fastsvd.errors import Failure
    from fastsvd.runner import params_of

    with pytest.raises(InvalidInput, match="video_size: 1024x1024") as exc:
        tiny_pipeline.generate(params_of(request, 1, Image.new("RGB", (1024, 1024))))
    assert Failure.of(exc.value).http_status == 422  # what the worker records for the job


@pytest.mark.parametrize(
    ("mode", "on_cpu"),
    [
        ("resident", set()),
        ("offload-first-frame", {"unet", "text_encoder", "text_encoder_2", "vae"}),
        ("offload-unets", {"unet", "text_encoder", "text_encoder_2", "vae"}),
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_each_component_loads_straight_to_where_the_plan_keeps_it(
    mode: str, on_cpu: set[str], family: str
) -> None:
    cuda = choose("cuda", "bf16", platform=gpu())  # a device object: no GPU is touched
    chosen = plan(24, mode=mode)
    first = loading._placements(chosen, cuda, family, Stage.first_frame)
    video = loading._placements(chosen, cuda, family, Stage.video)
    assert isinstance(first, dict)
    assert isinstance(video, dict)
    cpu_first = {name for name, where in first.items() if where.device.type == "cpu"}
    assert cpu_first == on_cpu
    cpu_video = {name for name, where in video.items() if where.device.type == "cpu"}
    # the video stage's U-Nets wait on the CPU only in offload-unets; its encoder and VAE never
    assert cpu_video == ({"unet"} if mode == "offload-unets" else set())
    assert first[""] == video[""] == cuda
    assert all(where.dtype == torch.bfloat16 for where in (*first.values(), *video.values()))


def test_every_loaded_model_is_named_as_the_plan_names_its_part(
    tiny_pipeline: VideoPipeline,
) -> None:
    named = {id(module): name for name, module in tiny_pipeline._parts().values()}
    assert set(named.values()) == set(memory.PARTS)  # all four endpoints' models: every part
    assert named[id(tiny_pipeline.video.unet)] == "video_unet"
    assert tiny_pipeline.model(FEW_STEP, Stage.video) is not None
    assert named[id(tiny_pipeline.model(FEW_STEP, Stage.video).unet)] == "few_step_video_unet"
    # a component the few-step pipeline shares with the base one is counted once
    assert tiny_pipeline.model(FEW_STEP, Stage.video).vae is tiny_pipeline.video.vae
    assert named[id(tiny_pipeline.video.vae)] == "video_vae"
