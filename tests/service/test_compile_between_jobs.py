"""Compilation in a serving worker, through the real job path (a ``Worker`` on SQLite, the tiny
preset's models, ``FASTSVD_COMPILE=1``): the first request runs eagerly, the pause after it
compiles and swaps the compiled graphs in (``ModelRunner.idle``), and then

- the same request (same seed) gives the same frames as before the swap, within the compiled
  tolerance;
- requests at 30+ distinct sizes all succeed, and none of them compiles anything: sizes other
  than the warmed one never reach dynamo, so its recompile limit cannot fail a request.

The graphs are compiled by dynamo with a backend that runs each captured graph as it is, as
dynamo's ``eager`` backend does (the graphs, guards and recompiles of any backend, without
inductor's code generation; inductor's own output is checked in
``tests/pipeline/test_compile.py``), and counts them. The few-step image-to-video endpoint
alone is served (one warm-up request: the cheapest real warm-up), warmed at 64x64, with
2-frame videos (the preset's 25 would only make each of the 30+ requests slower).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import av
import numpy as np
import pytest
import torch

from fastsvd import constants as c
from fastsvd.endpoints import configured
from fastsvd.hooks import NO_HOOKS, Hooks
from fastsvd.inputs import image_loader
from fastsvd.pipeline import compile as compiling
from fastsvd.pipeline import presets
from fastsvd.pipeline.compile import CompileOptions, GraphState, Guarded
from fastsvd.pipeline.core import Video, VideoPipeline, VideoStream
from fastsvd.runner import ModelRunner
from fastsvd.services import Services
from fastsvd.settings import Settings
from fastsvd.store.jobs import Job, JobState
from fastsvd.worker import Worker
from tests.service.test_few_step import picture_uri
from tests.support.servers import wait_for

# a cold trace of the U-Net, then 32 requests through the real pipeline
pytestmark = pytest.mark.slow

ENDPOINT = c.FEW_STEP_IMAGE_TO_VIDEO_ENDPOINT
WARM_UP_SIZE = (64, 64)
FRAMES = 2
# dynamo's eager backend runs the very ATen ops the eager code runs: the same numbers, so the
# frames must not change at all (inductor's kernels would differ in the last bits)
COMPILED_TOLERANCE = 0  # levels of 255
Options = CompileOptions | None


class Backend:
    """Runs the graph dynamo captured as it is (dynamo's ``eager`` backend), counting graphs;
    ``refuse``: compiling is an error (a guard turns eager on it, with its warning)."""

    def __init__(self) -> None:
        self.graphs = 0
        self.refuse = False

    def __call__(self, graph: torch.fx.GraphModule, _inputs: list[torch.Tensor]) -> Any:
        if self.refuse:
            raise RuntimeError("a graph compiled after the swap")
        self.graphs += 1
        return graph.forward


SEED = 7


@dataclass
class Served:
    """A worker serving in a thread, its first request run eagerly and its graphs swapped in."""

    services: Services
    worker: Worker
    pipeline: VideoPipeline
    videos: list[Video]  # every request's frames, in the order they were encoded
    first: Job  # the request run before the swap
    eager: Video  # its frames
    backend: Backend


def request(width: int, height: int) -> dict[str, object]:
    return {
        "image_url": picture_uri(),
        "video_size": {"width": width, "height": height},
        "steps": 1,
        "seed": SEED,
        "num_frames": FRAMES,  # one segment of the patched preset's length
    }


def submit(services: Services, width: int, height: int) -> str:
    job, _new = services.jobs.submit(key_id="k", endpoint=ENDPOINT, input=request(width, height))
    return job.id


def finished(services: Services, job_id: str) -> Job | None:
    job = services.jobs.get(job_id)
    assert job is not None
    return job if job.state is JobState.completed else None


def wait_done(services: Services, job_id: str) -> Job:
    wait_for(lambda: finished(services, job_id), f"job {job_id}")
    job = finished(services, job_id)
    assert job is not None
    assert job.error is None, job.error
    return job


def video_size(services: Services, job: Job) -> tuple[int, int]:
    """The width and height of the job's stored MP4."""
    assert job.output is not None
    file_id = job.output["video"]["url"].split("/")[2]  # /files/<id>/<name>
    with av.open(io.BytesIO(services.storage.read(file_id))) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height


def guards(pipeline: VideoPipeline) -> list[Guarded]:
    assert pipeline.compiled is not None
    return pipeline.compiled.guards


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("compile-between-jobs"),
        auth=False,
        idle_poll_s=0.05,
        preset="tiny",
        device="cpu",
        compile="1",
        endpoints=(ENDPOINT,),
    )
    parse = compiling.parse
    backend = Backend()

    def eager_backend(value: str | None, device: torch.device, *, serving: bool) -> Options:
        options = parse(value, device, serving=serving)
        return None if options is None else replace(options, backend=backend)

    videos: list[Video] = []
    to_mp4 = VideoPipeline.to_mp4

    def recorded(self: VideoPipeline, video: Video | VideoStream, hooks: Hooks = NO_HOOKS) -> bytes:
        if isinstance(video, VideoStream):  # a worker's: made as it is encoded
            frames = np.stack(list(video.frames()))
            video = Video(frames, video.first_frame, video.seed, video.fps, video.timings_s)
        videos.append(video)
        return to_mp4(self, video, hooks)

    threads = torch.get_num_threads()
    # one thread: tiny tensors gain nothing from more, and on a busy machine the thread pool's
    # waits make every request many times slower
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiling, "parse", eager_backend)
        patch.setitem(presets.PRESETS, "tiny", replace(presets.TINY, num_frames=FRAMES))
        patch.setattr(VideoPipeline, "to_mp4", recorded)
        services = Services.from_settings(settings)
        first = submit(services, *WARM_UP_SIZE)  # queued before the worker starts: run first
        runner = ModelRunner(
            settings,
            image_loader(services.files, services.storage),
            configured(settings).needs(),
            warm_up_size=WARM_UP_SIZE,
        )
        marker = runner._warmed_marker()
        worker = Worker.build(settings, services=services, runner=runner, name="compiling-worker")
        thread = threading.Thread(target=worker.serve, daemon=True)
        thread.start()
        try:
            job = wait_done(services, first)
            # the cold trace of the U-Net: ~20 s on an idle machine, a few times that on a busy one
            wait_for(marker.exists, "the warm-up between jobs and the swap", timeout_s=240)
            pipeline = runner._pipeline
            assert isinstance(pipeline, VideoPipeline)
            (eager,) = videos  # the first request, run before the warm-up
            yield Served(services, worker, pipeline, videos, job, eager, backend)
        finally:
            worker.drain()
            thread.join()
            services.close()
            torch._dynamo.reset()
            torch.set_num_threads(threads)


def test_the_swap_between_jobs_changes_no_frame(served: Served) -> None:
    eager = served.eager
    graphs = guards(served.pipeline)
    assert graphs
    assert {g.state for g in graphs} == {GraphState.compiled}  # swapped in, none failed
    assert all(g.shapes for g in graphs)  # each compiled at the warm-up's shapes
    eager_calls = [g.eager_calls for g in graphs]
    again = wait_done(served.services, submit(served.services, *WARM_UP_SIZE))
    assert again.id != served.first.id
    compiled = served.videos[-1]
    # it ran the compiled graphs, not the eager code
    assert [g.eager_calls for g in graphs] == eager_calls
    assert compiled.frames.shape == eager.frames.shape == (FRAMES, 64, 64, 3)
    difference = np.abs(compiled.frames.astype(int) - eager.frames.astype(int))
    assert difference.max() <= COMPILED_TOLERANCE


def test_31_distinct_sizes_in_one_worker_all_succeed(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # any graph compiled from now on is an error: a size that reached dynamo would turn its
    # graph eager for good, with a warning (and take a cold trace first)
    monkeypatch.setattr(served.backend, "refuse", True)
    graphs = guards(served.pipeline)
    compiled = served.backend.graphs
    assert compiled  # the warm-up's
    unit = c.SIZE_MULTIPLE
    # the 31 smallest sizes, the warmed one (compiled) among them: up to 12 times its pixels
    sides = [(w * unit, h * unit) for w in range(1, 12) for h in range(1, 12)]
    sizes = sorted(sides, key=lambda size: (size[0] * size[1], size))[:31]
    assert WARM_UP_SIZE in sizes
    with caplog.at_level("WARNING", logger="fastsvd.compile"):
        jobs = [submit(served.services, *size) for size in sizes]
        for job_id, size in zip(jobs, sizes, strict=True):
            job = wait_done(served.services, job_id)
            assert video_size(served.services, job) == size
    # every other size ran eagerly: dynamo never saw one, and no graph was given up
    assert served.backend.graphs == compiled
    assert {g.state for g in graphs} == {GraphState.compiled}
    assert not [r for r in caplog.records if r.name == "fastsvd.compile"]
