"""The fal wire types: fal's names and defaults, our bounds, errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from fastsvd.schema import (
    VIDEO_SIZE_PRESETS,
    DeepCache,
    File,
    ImageSize,
    ImageToVideoInput,
    TextToVideoInput,
    VideoOutput,
    closest_preset,
    field_errors,
    resolve_seed,
)


def errors_of(model: type[Any], data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return field_errors(caught.value)


def test_defaults_are_fals() -> None:
    got = TextToVideoInput(prompt="A rocket flying that is about to take off")
    assert got.model_dump(mode="json") == {
        "prompt": "A rocket flying that is about to take off",
        "negative_prompt": (
            "unrealistic, saturated, high contrast, big nose, painting, drawing, sketch, "
            "cartoon, anime, manga, render, CG, 3d, watermark, signature, label"
        ),
        "motion_bucket_id": 127,
        "cond_aug": 0.02,
        "seed": None,
        "steps": 20,
        "deep_cache": "none",
        "fps": 10,
        "video_size": {"width": 1024, "height": 576},
        # fastsvd's extensions, whose defaults make what fal makes
        "num_frames": 25,
        "color_match": True,
    }


@pytest.mark.parametrize(("name", "size"), list(VIDEO_SIZE_PRESETS.items()))
def test_presets_map_to_fals_pixel_sizes(name: str, size: tuple[int, int]) -> None:
    got = TextToVideoInput(prompt="x", video_size=name).video_size  # type: ignore[arg-type]
    assert (got.width, got.height) == size


@pytest.mark.parametrize(
    ("field", "value", "path", "message"),
    [
        ("prompt", "", "prompt", "at least 1 character"),
        ("prompt", "   ", "prompt", "must not be blank"),
        ("prompt", "x" * 2001, "prompt", "at most 2000 characters"),
        ("motion_bucket_id", 0, "motion_bucket_id", "greater than or equal to 1"),
        ("motion_bucket_id", 256, "motion_bucket_id", "less than or equal to 255"),
        ("motion_bucket_id", "lots", "motion_bucket_id", "a number"),
        ("seed", True, "seed", "a number"),
        ("cond_aug", -0.1, "cond_aug", "greater than or equal to 0"),
        ("cond_aug", 10.5, "cond_aug", "less than or equal to 10"),
        ("cond_aug", float("nan"), "cond_aug", "finite number"),
        ("seed", -1, "seed", "greater than or equal to 0"),
        ("seed", 2**63, "seed", "less than or equal to"),
        ("steps", 0, "steps", "greater than or equal to 1"),
        ("steps", 51, "steps", "less than or equal to 50"),
        ("fps", 0, "fps", "greater than or equal to 1"),
        ("fps", 101, "fps", "less than or equal to 100"),
        ("deep_cache", "max", "deep_cache", "'none', 'minimum', 'medium' or 'high'"),
        ("video_size", "huge", "video_size", "one of square_hd"),
        ("video_size", {"width": 100, "height": 64}, "video_size.width", "multiple of 64"),
        ("video_size", {"width": 64, "height": 32}, "video_size.height", "between 64 and 2048"),
        ("video_size", {"width": 2048, "height": 1024}, "video_size", "at most 1048576"),
        (
            "video_size",
            {"width": 64, "height": 64, "depth": 3},
            "video_size.depth",
            "not permitted",
        ),
        ("video_size", 7, "video_size", "valid dictionary"),
    ],
)
def test_bad_values_are_refused_naming_the_field(
    field: str, value: object, path: str, message: str
) -> None:
    data = {"prompt": "x", field: value}
    got = errors_of(TextToVideoInput, data)
    assert got[0][0] == path
    assert message in got[0][1]


def test_prompt_is_required() -> None:
    assert errors_of(TextToVideoInput, {}) == [("prompt", "Field required")]


def test_custom_sizes_within_the_budget_are_accepted() -> None:
    got = TextToVideoInput(prompt="x", video_size={"width": 1280, "height": 768})  # type: ignore[arg-type]
    assert (got.video_size.width, got.video_size.height) == (1280, 768)
    assert ImageSize(width=64, height=64).width == 64


def test_unknown_fields_are_ignored_as_fal_does() -> None:
    got = TextToVideoInput.model_validate({"prompt": "x", "motion_bucket": 14})
    assert not hasattr(got, "motion_bucket")


def test_numbers_must_be_json_numbers() -> None:
    # the schema says number: "4" and true are refused (pydantic alone would read 4 and 1)
    got = errors_of(TextToVideoInput, {"prompt": "x", "steps": "4", "fps": False})
    assert sorted(field for field, _ in got) == ["fps", "steps"]
    assert TextToVideoInput.model_validate({"prompt": "x", "steps": 4.0}).steps == 4


@pytest.mark.parametrize(
    "url",
    ["https://example.com/a.png", "http://example.com/a.png", "data:image/png;base64,AAAA"],
)
def test_image_url_schemes_accepted(url: str) -> None:
    assert ImageToVideoInput(image_url=url).video_size is None


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/y.png", "/tmp/a.png", "gopher://x"])
def test_image_url_other_schemes_refused(url: str) -> None:
    assert errors_of(ImageToVideoInput, {"image_url": url})[0][0] == "image_url"


def test_image_to_video_has_no_prompt_and_needs_an_image() -> None:
    assert errors_of(ImageToVideoInput, {"prompt": "x"}) == [("image_url", "Field required")]


@pytest.mark.parametrize(
    ("size", "preset"),
    [
        ((1920, 1080), "landscape_16_9"),
        ((1080, 1920), "portrait_16_9"),
        ((1000, 1000), "square_hd"),
        ((800, 600), "landscape_4_3"),
        ((600, 800), "portrait_4_3"),
    ],
)
def test_closest_preset_follows_the_aspect_ratio(size: tuple[int, int], preset: str) -> None:
    got = closest_preset(*size)
    assert (got.width, got.height) == VIDEO_SIZE_PRESETS[preset]


def test_output_is_fals_shape() -> None:
    out = VideoOutput(
        video=File(url="http://h/v.mp4", content_type="video/mp4", file_name="v.mp4", file_size=3),
        seed=7,
    )
    assert out.model_dump() == {
        "video": {
            "url": "http://h/v.mp4",
            "content_type": "video/mp4",
            "file_name": "v.mp4",
            "file_size": 3,
        },
        "seed": 7,
    }


def test_seed_is_kept_or_drawn() -> None:
    assert resolve_seed(5) == 5
    assert resolve_seed(0) == 0
    drawn = {resolve_seed(None) for _ in range(20)}
    assert len(drawn) > 1
    assert all(0 <= s < 2**32 for s in drawn)


def test_json_schema_documents_video_size_as_preset_or_object() -> None:
    schema = TextToVideoInput.model_json_schema()
    video_size = schema["properties"]["video_size"]
    assert video_size["default"] == "landscape_16_9"
    kinds = video_size["anyOf"]
    assert kinds[0]["enum"] == list(VIDEO_SIZE_PRESETS)
    assert kinds[1] == {"$ref": "#/$defs/ImageSize"}
    assert schema["required"] == ["prompt"]
    assert schema["properties"]["deep_cache"]["$ref"] == "#/$defs/DeepCache"
    assert [d.value for d in DeepCache] == ["none", "minimum", "medium", "high"]
