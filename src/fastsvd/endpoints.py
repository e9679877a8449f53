"""fal's endpoints as data: one ``Endpoint`` value each, in one ordered registry.

What an endpoint is lives here and nowhere else: its fal id (and so its paths), its input and
output models, its summary, and the capability a runner must have to run it: for the model, a
``Capability`` (which family's models, with or without its first-frame model), data the runner
reads without knowing the endpoint. The HTTP edge makes its queue and sync routes and its OpenAPI
entries from the registry, a worker claims the ids its runner can run and hands the runner their
capabilities, and the CLI, the playground and the history list read it. A new endpoint is one
entry here plus, if it needs a new family, that family in ``pipeline/presets.py``
(docs/architecture.md, "Add an endpoint").
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass

from pydantic import BaseModel

from fastsvd import constants as c
from fastsvd.errors import FastSVDError
from fastsvd.pipeline.presets import FEW_STEP, STANDARD, Capability
from fastsvd.schema import (
    FewStepImageToVideoInput,
    FewStepTextToVideoInput,
    ImageToVideoInput,
    TextToVideoInput,
    VideoOutput,
)
from fastsvd.settings import Settings

# Capabilities: what a runner can do. An endpoint names the one it needs.
TEXT_TO_VIDEO = Capability(STANDARD, text=True)  # prompt -> first frame (SDXL) -> SVD-XT
IMAGE_TO_VIDEO = Capability(STANDARD, text=False)  # picture -> video (SVD-XT)
# the few-step family: SDXL-Lightning first frame, AnimateLCM-distilled SVD-XT
FEW_STEP_TEXT_TO_VIDEO = Capability(FEW_STEP, text=True)
FEW_STEP_IMAGE_TO_VIDEO = Capability(FEW_STEP, text=False)


@dataclass(frozen=True)
class Endpoint:
    """One fal endpoint: ``owner/app[/path]``, what it takes and gives, and what runs it."""

    id: str  # fal's endpoint id, e.g. "fal-ai/fast-svd/text-to-video"
    input: type[BaseModel]
    # what runs it: a ``Capability`` for the model runner; any other token for a stand-in's own
    capability: Hashable
    summary: str  # a few words, for OpenAPI ("Submit <summary>", "Run <summary>")
    title: str  # the playground's tab
    output: type[BaseModel] = VideoOutput
    image_field: str | None = None  # an input field holding a picture's URL, checked at submit

    def __post_init__(self) -> None:
        parts = self.id.split("/")
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"endpoint id {self.id!r} is not owner/app[/path]")

    @property
    def app(self) -> str:
        """``owner/app``: the part of the id that request URLs live under."""
        return app_of(self.id)

    @property
    def path(self) -> str:
        """The queue submit path, ``/owner/app[/path]``; the sync run is ``/run`` + this."""
        return f"/{self.id}"

    @property
    def app_path(self) -> str:
        """``/owner/app``: where ``requests/{id}`` (status, stream, result, cancel) live."""
        return f"/{self.app}"


def app_of(endpoint_id: str) -> str:
    """``owner/app`` of an endpoint id, registered or not (a stored job's, or one a client
    names): fal's rule, status, result and cancel live under its first two path segments."""
    return "/".join(endpoint_id.strip("/").split("/")[:2])


class Registry:
    """Endpoints by id, in the order they were given (routes, OpenAPI and lists keep it)."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self._by_id: dict[str, Endpoint] = {}
        for endpoint in endpoints:
            if endpoint.id in self._by_id:
                raise ValueError(f"endpoint {endpoint.id} is registered twice")
            self._by_id[endpoint.id] = endpoint

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __getitem__(self, endpoint_id: str) -> Endpoint:
        return self._by_id[endpoint_id]

    def ids(self) -> list[str]:
        return list(self._by_id)

    def apps(self) -> list[str]:
        """The distinct ``owner/app`` prefixes, in order."""
        return list(dict.fromkeys(e.app for e in self))

    def select(self, ids: Iterable[str]) -> Registry:
        """The endpoints named by ``ids`` (in registry order); an unknown id is an error."""
        wanted = list(dict.fromkeys(ids))
        unknown = [i for i in wanted if i not in self._by_id]
        if unknown:
            raise FastSVDError(
                f"unknown endpoint {unknown[0]!r}; known: {', '.join(self.ids())} "
                "(FASTSVD_ENDPOINTS)"
            )
        return Registry(e for e in self if e.id in wanted)

    def capabilities(self) -> frozenset[Hashable]:
        """What a runner needs to run every endpoint here."""
        return frozenset(e.capability for e in self)

    def needs(self) -> dict[str, Hashable]:
        """Each endpoint's capability, by id: what a model runner is given to serve."""
        return {e.id: e.capability for e in self}

    def with_capabilities(self, capabilities: Iterable[Hashable]) -> list[Endpoint]:
        """The endpoints a runner with ``capabilities`` can run."""
        have = set(capabilities)
        return [e for e in self if e.capability in have]

    def plus(self, *endpoints: Endpoint) -> Registry:
        """A copy with ``endpoints`` added (tests; embedding applications)."""
        return Registry([*self, *endpoints])


ENDPOINTS = Registry(
    [
        Endpoint(
            id=c.TEXT_TO_VIDEO_ENDPOINT,
            input=TextToVideoInput,
            capability=TEXT_TO_VIDEO,
            summary="text-to-video",
            title="Text to video",
        ),
        Endpoint(
            id=c.IMAGE_TO_VIDEO_ENDPOINT,
            input=ImageToVideoInput,
            capability=IMAGE_TO_VIDEO,
            summary="image-to-video",
            title="Image to video",
            image_field="image_url",
        ),
        Endpoint(
            id=c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT,
            input=FewStepTextToVideoInput,
            capability=FEW_STEP_TEXT_TO_VIDEO,
            summary="few-step text-to-video",
            title="Text to video, 4 steps",
        ),
        Endpoint(
            id=c.FEW_STEP_IMAGE_TO_VIDEO_ENDPOINT,
            input=FewStepImageToVideoInput,
            capability=FEW_STEP_IMAGE_TO_VIDEO,
            summary="few-step image-to-video",
            title="Image to video, 4 steps",
            image_field="image_url",
        ),
    ]
)


def configured(settings: Settings) -> Registry:
    """The endpoints ``FASTSVD_ENDPOINTS`` names (default: all): what a worker serves and loads
    models for. An unknown id is an error naming the known ones."""
    return ENDPOINTS.select(settings.endpoints) if settings.endpoints else ENDPOINTS
