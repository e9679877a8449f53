"""The wire types of fal's ``fast-svd`` endpoints: inputs, outputs and the ``File`` object.

Field names, types and defaults follow fal exactly, because fal's clients depend on them. Where fal
publishes no bound, the bound is ours and is documented on the field. This module imports no web
framework and no torch: the server, the client, the CLI and the pipeline all share it.
"""

from __future__ import annotations

import enum
import secrets
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from fastsvd import constants as c

VIDEO_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    # name: (width, height), fal's presets
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}


class DeepCache(enum.StrEnum):
    """How much deep U-Net work is reused between denoising steps (docs/deepcache.md)."""

    none = "none"  # every step runs the whole U-Net: the stock result
    minimum = "minimum"  # a full step every 2nd step
    medium = "medium"  # a full step every 3rd step
    high = "high"  # a full step every 3rd step, shallowest cut: fastest, lowest quality


def _number_only(value: Any) -> Any:
    """JSON numbers only: pydantic would otherwise read true as 1 and "5" as 5."""
    if isinstance(value, bool | str):
        raise PydanticCustomError("number_type", "Input should be a number")
    return value


class ImageSize(BaseModel):
    """A video size in pixels; also accepts one of fal's preset names."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(
        512,
        description=(
            f"The width of the video in pixels: a multiple of {c.SIZE_MULTIPLE}, "
            f"{c.SIDE_MIN_PX}-{c.SIDE_MAX_PX}."
        ),
    )
    height: int = Field(
        512,
        description=(
            f"The height of the video in pixels: a multiple of {c.SIZE_MULTIPLE}, "
            f"{c.SIDE_MIN_PX}-{c.SIDE_MAX_PX}."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _from_preset(cls, data: Any) -> Any:
        if isinstance(data, str):
            if data not in VIDEO_SIZE_PRESETS:
                raise PydanticCustomError(
                    "enum",
                    "Input should be one of {expected} or an object with width and height",
                    {"expected": ", ".join(VIDEO_SIZE_PRESETS)},
                )
            width, height = VIDEO_SIZE_PRESETS[data]
            return {"width": width, "height": height}
        return data

    _numbers = field_validator("width", "height", mode="before")(_number_only)

    @field_validator("width", "height")
    @classmethod
    def _check_side(cls, value: int) -> int:
        if not c.SIDE_MIN_PX <= value <= c.SIDE_MAX_PX:
            raise PydanticCustomError(
                "range",
                "Input should be between {min} and {max} pixels",
                {"min": c.SIDE_MIN_PX, "max": c.SIDE_MAX_PX},
            )
        if value % c.SIZE_MULTIPLE:
            raise PydanticCustomError(
                "multiple_of",
                "Input should be a multiple of {multiple_of}",
                {"multiple_of": c.SIZE_MULTIPLE},
            )
        return value

    @model_validator(mode="after")
    def _check_budget(self) -> ImageSize:
        if self.width * self.height > c.PIXELS_MAX:
            raise PydanticCustomError(
                "pixel_budget",
                "width x height is {pixels} pixels; at most {max} are allowed",
                {"pixels": self.width * self.height, "max": c.PIXELS_MAX},
            )
        return self


class _PresetOrImageSize:
    """Documents ``video_size`` as fal does: a preset name or an ``ImageSize`` object."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "anyOf": [
                {"type": "string", "enum": list(VIDEO_SIZE_PRESETS), "title": "VideoSizePreset"},
                handler(core_schema),
            ]
        }


VideoSize = Annotated[ImageSize, _PresetOrImageSize]


class _VideoParams(BaseModel):
    """The SVD inputs every endpoint has: how the video moves, its seed and its playback rate."""

    # fal's apps ignore fields they do not know; clients of newer schemas rely on that. So do
    # fields of a sibling endpoint: a few-step request's negative_prompt or deep_cache is ignored.
    model_config = ConfigDict(extra="ignore")

    _numbers = field_validator(
        "motion_bucket_id",
        "cond_aug",
        "seed",
        "steps",
        "fps",
        "num_frames",
        mode="before",
        check_fields=False,
    )(_number_only)

    motion_bucket_id: int = Field(
        c.DEFAULT_MOTION_BUCKET_ID,
        ge=c.MOTION_BUCKET_ID_MIN,
        le=c.MOTION_BUCKET_ID_MAX,
        description=(
            "The motion bucket id determines the motion of the generated video. "
            "The higher the number, the more motion there will be."
        ),
    )
    cond_aug: float = Field(
        c.DEFAULT_COND_AUG,
        ge=c.COND_AUG_MIN,
        le=c.COND_AUG_MAX,
        allow_inf_nan=False,
        description=(
            "The conditoning augmentation determines the amount of noise that will be added "
            "to the conditioning frame. The higher the number, the more noise there will be, "
            "and the less the video will look like the initial image. Increase it for more "
            "motion."
        ),
    )
    seed: int | None = Field(
        None,
        ge=c.SEED_MIN,
        le=c.SEED_MAX,
        description=(
            "The same seed and the same prompt given to the same version of Stable Diffusion "
            "will output the same image every time."
        ),
    )
    fps: int = Field(
        c.DEFAULT_FPS,
        ge=c.FPS_MIN,
        le=c.FPS_MAX,
        description=(
            "The FPS of the generated video. The higher the number, the faster the video will "
            "play. Total video length is num_frames frames."
        ),
    )
    # fastsvd's extensions: fal's schema has neither field (fal's apps ignore unknown fields,
    # so a request that sends them to fal gets a 25-frame video there)
    num_frames: int = Field(
        c.NUM_FRAMES,
        ge=c.NUM_FRAMES_MIN,
        le=c.NUM_FRAMES_MAX,
        description=(
            f"The number of frames of the video (fastsvd's extension; fal makes {c.NUM_FRAMES}). "
            f"Above {c.NUM_FRAMES}, the video is made of chained segments of {c.NUM_FRAMES} "
            "frames, each one animated from the previous one's last frame."
        ),
    )
    color_match: bool = Field(
        True,
        strict=True,  # JSON true or false, not "yes" or 1
        description=(
            "Match the colours of each chained segment to the first one's, so that colour and "
            "saturation do not drift along a long video (fastsvd's extension; only matters "
            f"above {c.NUM_FRAMES} frames)."
        ),
    )


_STEPS_DESCRIPTION = (
    "The number of steps to run the model for. The higher the number the better "
    "the quality and longer it will take to generate."
)


class _StandardParams(_VideoParams):
    """``fal-ai/fast-svd``'s family: SVD-XT, 20 steps by default, with DeepCache."""

    steps: int = Field(
        c.DEFAULT_STEPS, ge=c.STEPS_MIN, le=c.STEPS_MAX, description=_STEPS_DESCRIPTION
    )
    deep_cache: DeepCache = Field(
        DeepCache.none,
        description=(
            "Enabling DeepCache will make the execution faster, but might sometimes degrade "
            "overall quality. The higher the setting, the faster the execution will be, but "
            "the more quality might be lost."
        ),
    )


class _FewStepParams(_VideoParams):
    """``fal-ai/fast-svd-lcm``'s family: SVD-XT distilled with AnimateLCM, 4 steps by default."""

    steps: int = Field(
        c.DEFAULT_FEW_STEP_STEPS,
        ge=c.STEPS_MIN,
        le=c.FEW_STEP_STEPS_MAX,
        description=_STEPS_DESCRIPTION,
    )


class _PromptInput(BaseModel):
    """A text-to-video input's prompt and size."""

    prompt: str = Field(
        ...,
        min_length=1,
        max_length=c.PROMPT_MAX_CHARS,
        description="The prompt to use as a starting point for the generation.",
        examples=["A rocket flying that is about to take off"],
    )
    video_size: VideoSize = Field(
        c.DEFAULT_VIDEO_SIZE,  # a preset name, validated into ImageSize
        validate_default=True,
        description="The size of the generated video.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("string_blank", "The prompt must not be blank")
        return value


class _ImageInput(BaseModel):
    """An image-to-video input's picture and size."""

    image_url: str = Field(
        ...,
        min_length=1,
        description=(
            "The URL of the image to use as a starting point for the generation: an https URL, "
            "a data: URI, or the URL of a file uploaded to this server."
        ),
        examples=["https://storage.googleapis.com/falserverless/model_tests/svd/rocket.png"],
    )
    video_size: VideoSize | None = Field(
        None,
        description=(
            "The size of the generated video. When absent, the preset whose aspect ratio is "
            "closest to the image's; the image is scaled to cover it and centre-cropped."
        ),
    )

    @field_validator("image_url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        scheme = value.split(":", 1)[0].lower() if ":" in value else ""
        if scheme not in ("http", "https", "data"):
            raise PydanticCustomError(
                "url_scheme", "URL scheme should be 'https', 'http' or 'data'"
            )
        if scheme != "data" and len(value) > c.URL_MAX_CHARS:
            raise PydanticCustomError(
                "url_too_long", "URLs are limited to {limit} characters", {"limit": c.URL_MAX_CHARS}
            )
        return value


class TextToVideoInput(_PromptInput, _StandardParams):
    """The input of ``fal-ai/fast-svd/text-to-video``."""

    negative_prompt: str = Field(
        c.DEFAULT_NEGATIVE_PROMPT,
        max_length=c.PROMPT_MAX_CHARS,
        description=(
            "The negative prompt to use as a starting point for the generation. "
            "It steers the first frame away from what it names."
        ),
    )


class ImageToVideoInput(_ImageInput, _StandardParams):
    """The input of ``fal-ai/fast-svd`` (image-to-video): SVD-XT alone, from a given first frame."""


class FewStepTextToVideoInput(_PromptInput, _FewStepParams):
    """The input of ``fal-ai/fast-svd-lcm/text-to-video``: a few-step first frame, then the
    few-step video model. fal's schema has no negative_prompt and no deep_cache here."""


class FewStepImageToVideoInput(_ImageInput, _FewStepParams):
    """The input of ``fal-ai/fast-svd-lcm`` (image-to-video): the few-step video model alone."""


PromptRequest = TextToVideoInput | FewStepTextToVideoInput
ImageRequest = ImageToVideoInput | FewStepImageToVideoInput
VideoRequest = PromptRequest | ImageRequest
FewStepRequest = FewStepTextToVideoInput | FewStepImageToVideoInput


class File(BaseModel):
    """A file the server made, served by URL (fal's ``File``)."""

    url: str = Field(..., description="The URL where the file can be downloaded from.")
    content_type: str | None = Field(None, description="The mime type of the file.")
    file_name: str | None = Field(None, description="The name of the file.")
    file_size: int | None = Field(None, description="The size of the file in bytes.")


class VideoOutput(BaseModel):
    """The output of every video endpoint: the video and the seed that made it."""

    video: File = Field(..., description="The generated video file.")
    seed: int = Field(
        ...,
        description=(
            "Seed of the generated Image. It will be the same value of the one passed in the "
            "input or the randomly generated that was used in case none was passed."
        ),
    )


def field_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """Each error of ``exc`` as (dotted field path, message), for one-line reports."""
    out = []
    for err in exc.errors():
        path = ".".join(str(part) for part in err["loc"]) or "input"
        out.append((path, err["msg"]))
    return out


def closest_preset(width: int, height: int) -> ImageSize:
    """The fal preset whose aspect ratio is closest to ``width:height`` (ties: the first)."""
    aspect = width / height
    name = min(
        VIDEO_SIZE_PRESETS,
        key=lambda n: abs(VIDEO_SIZE_PRESETS[n][0] / VIDEO_SIZE_PRESETS[n][1] - aspect),
    )
    return ImageSize.model_validate(name)


def resolve_seed(seed: int | None) -> int:
    """The seed a request runs with: its own, or a fresh random one (returned to the caller)."""
    return seed if seed is not None else secrets.randbelow(c.RANDOM_SEED_MAX + 1)


def absolute_output(output: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The stored output with its file URL made absolute for ``base_url``."""
    video = dict(output.get("video") or {})
    url = video.get("url")
    if isinstance(url, str) and url.startswith("/"):
        video["url"] = base_url + url
    return {**output, "video": video}


# --- the queue protocol's bodies: the API builds its answers, and the client reads them, with
# these models only, so /openapi.json documents what is sent ---


class RequestLog(BaseModel):
    """One log line of a request: one per step of each stage."""

    message: str
    level: Literal["STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"]
    source: Literal["USER"]
    timestamp: str = Field(..., description="ISO 8601, UTC.")


class RequestURLs(BaseModel):
    """Where to poll, fetch and cancel a request; fal's clients use them verbatim."""

    request_id: str
    response_url: str
    status_url: str
    cancel_url: str


class SubmitResponse(RequestURLs):
    """The answer to a submit."""

    status: Literal["IN_QUEUE"]
    gateway_request_id: str
    queue_position: int = Field(..., description="0-based: 0 means it starts next.")


class QueueStatus(RequestURLs):
    """A request's status. Failures and cancellations are ``COMPLETED`` with ``error``."""

    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    queue_position: int | None = Field(None, description="While IN_QUEUE: 0-based position.")
    logs: list[RequestLog] | None = Field(
        None, description="With ?logs=1 (or true): every line so far; null otherwise."
    )
    metrics: dict[str, float] | None = Field(
        None, description="When COMPLETED: inference_time in seconds."
    )
    error: str | None = None
    error_type: str | None = Field(
        None,
        description=(
            "cancelled, request_timeout, runner_disconnected, validation_error, "
            "generation_failed, out_of_memory, internal_error"
        ),
    )


class RequestSummary(BaseModel):
    """One request in a key's history (fastsvd's addition to fal's protocol)."""

    request_id: str
    endpoint: str = Field(..., description="Its endpoint id, e.g. fal-ai/fast-svd/text-to-video.")
    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    created_at: float = Field(..., description="When it was submitted, UNIX seconds.")
    input: dict[str, Any] = Field(..., description="The validated input, defaults filled in.")
    output: VideoOutput | None = Field(None, description="When it succeeded.")
    error: str | None = None
    error_type: str | None = None


class RequestHistory(BaseModel):
    """A key's newest requests, newest first."""

    requests: list[RequestSummary]


class ReadyResponse(BaseModel):
    """Whether a worker has its model loaded."""

    status: Literal["ready", "starting"]
    workers_ready: int
    endpoints: dict[str, int] = Field(
        ..., description="Each endpoint's ready workers; requests for one with 0 wait."
    )


class KeyRequest(BaseModel):
    """A new API key (admin scope needed)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200, description="A label, e.g. who the key is for.")
    scope: Literal["user", "admin"] = Field(
        "user", description="user: submit and read its own requests; admin: also manage keys."
    )


class KeySummary(BaseModel):
    """A key as listed: never its secret."""

    key_id: str
    name: str
    scope: Literal["user", "admin"]
    created_at: float = Field(..., description="UNIX seconds.")
    revoked_at: float | None = Field(None, description="UNIX seconds; null while it is live.")


class CreatedKey(KeySummary):
    """A key just made: the only time its secret is shown."""

    key: str = Field(..., description="Send as 'Authorization: Key <key>'. Shown once.")
    webhook_secret: str = Field(..., description="Verifies this key's webhook signatures.")


class KeyList(BaseModel):
    """Every key, oldest first."""

    keys: list[KeySummary]


class CancelResponse(BaseModel):
    """The answer to a cancel."""

    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]


class UploadedFile(BaseModel):
    """The answer to an upload (``POST /files/upload``, fal's CDN upload)."""

    access_url: str = Field(..., description="Where the file is served: usable as image_url.")
    content_type: str
    file_name: str


class ErrorResponse(BaseModel):
    """An error answer: ``detail`` is a message (or, for 422, fal's list of field errors)."""

    detail: str | list[dict[str, Any]]
    error_type: str | None = None


class WebhookBody(BaseModel):
    """What a ``fal_webhook`` receives once the request has finished. An ``OK`` body carries no
    ``error`` and no ``error_type`` (it is sent dumped with ``exclude_unset``)."""

    request_id: str
    gateway_request_id: str
    status: Literal["OK", "ERROR"]
    error: str | None = Field(
        default=None, description='With ERROR: "Invalid status code: <status>".'
    )
    error_type: str | None = None
    payload: dict[str, Any] | None = Field(
        ..., description="OK: the endpoint's output; ERROR: the result's error body (detail)."
    )
