"""A worker's start with compilation on: with the persisted cache's warmed marker (a finished
warm-up of these very models) ``load`` warms up before it returns, so the worker reports ready
compiled; without it ``load`` returns at once and the warm-up waits for the pauses between jobs
(``ModelRunner.idle``). The warm-up itself is recorded, not run (its compile is the device
run's to measure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fastsvd import constants as c
from fastsvd.endpoints import ENDPOINTS, IMAGE_TO_VIDEO
from fastsvd.errors import DoesNotFit, OutOfMemory
from fastsvd.pipeline.core import VideoPipeline
from fastsvd.runner import ModelRunner
from fastsvd.settings import Settings


@pytest.mark.parametrize("warmed", [True, False])
def test_a_restart_with_the_warmed_cache_is_ready_compiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warmed: bool
) -> None:
    warm_ups: list[VideoPipeline] = []

    def warm_up(self: VideoPipeline, size: tuple[int, int] = (0, 0)) -> float:
        warm_ups.append(self)
        self.swap_in()
        return 0.0

    monkeypatch.setattr(VideoPipeline, "warm_up", warm_up)
    settings = Settings(data_dir=tmp_path, preset="tiny", device="cpu", compile="1")
    runner = ModelRunner(
        settings,
        lambda _url: Image.new("RGB", (64, 64)),
        {c.IMAGE_TO_VIDEO_ENDPOINT: IMAGE_TO_VIDEO},
        explicit=True,
    )
    marker = runner._warmed_marker()
    if warmed:
        marker.parent.mkdir(parents=True)
        marker.write_text("a finished warm-up\n")
    runner.load()
    pipeline = runner._pipeline
    assert isinstance(pipeline, VideoPipeline)
    assert pipeline.compiled is not None
    states = {guard.state.value for guard in pipeline.compiled.guards}
    if warmed:  # warmed up and swapped in before ready; nothing left for the pauses
        assert warm_ups == [pipeline]
        assert states == {"compiled"}
        assert runner._warm_up == []
    else:  # ready eagerly; the warm-up steps wait for the pauses between jobs
        assert warm_ups == []
        assert states == {"eager"}
        assert len(runner._warm_up) == len(pipeline.warm_up_steps())


def test_out_of_memory_in_the_warm_up_between_jobs_is_fatal_naming_settings_that_fit(
    tmp_path: Path, tiny_pipeline: VideoPipeline
) -> None:
    settings = Settings(data_dir=tmp_path, preset="tiny", device="cpu", compile="1")
    runner = ModelRunner(settings, lambda _url: Image.new("RGB", (64, 64)), ENDPOINTS.needs())
    runner._pipeline = tiny_pipeline  # loaded once for the session

    def warm_up_step() -> None:  # what a warm-up request raises when the GPU runs out
        raise OutOfMemory("CUDA out of memory. Tried to allocate 4.00 GiB")

    runner._warm_up = [warm_up_step]
    with pytest.raises(DoesNotFit, match=r"while warming up.*FASTSVD_ENDPOINTS"):
        runner.idle()  # the worker's serve lets it out: the worker command exits 4
    assert not runner._warmed_marker().exists()  # nothing claims a finished warm-up
