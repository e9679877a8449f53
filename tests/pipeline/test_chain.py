"""Videos longer than the model's 25 frames: the segments' arithmetic and seeds; on the tiny
preset, each segment animated from the previous one's last frame after colour matching, as the
pipeline's hooks report it, steps reporting their segment, and a cancel in the second segment;
the chain's joins and matching with a stand-in model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from fastsvd.errors import GenerationCancelled
from fastsvd.hooks import Hooks, Segment, Stage, StepEvent
from fastsvd.pipeline import chain, colour
from fastsvd.pipeline.core import VideoPipeline
from fastsvd.pipeline.params import GenerationParams
from fastsvd.progress import parse_step_line, step_line

PARAMS = GenerationParams(
    width=64,
    height=64,
    steps=2,
    fps=10,
    motion_bucket_id=127,
    noise_aug_strength=0.02,
    seed=11,
    prompt="a lighthouse",
)


@pytest.mark.parametrize(
    ("num_frames", "segments"), [(1, 1), (25, 1), (26, 2), (49, 2), (50, 3), (60, 3), (241, 10)]
)
def test_segments_add_24_frames_each(num_frames: int, segments: int) -> None:
    assert chain.segment_count(num_frames, 25) == segments


def test_the_first_segment_keeps_the_request_seed_the_others_derive_theirs() -> None:
    seeds = [chain.segment_seed(7, k) for k in range(10)]
    assert seeds[0] == 7
    assert len(set(seeds)) == 10
    assert seeds == [chain.segment_seed(7, k) for k in range(10)]  # the same every time
    assert chain.segment_seed(8, 1) != seeds[1]
    assert all(0 <= s < 2**63 for s in seeds)


def test_step_lines_name_the_segment_of_a_chained_video() -> None:
    event = StepEvent(Stage.video, 7, 20, segment=2, segments=4)
    assert step_line(event) == "video: segment 2/4, step 7/20"
    assert parse_step_line(step_line(event)) == event
    single = StepEvent(Stage.video, 7, 20)
    assert step_line(single) == "video: step 7/20"  # a 25-frame video's lines, as before
    assert parse_step_line("video: step 7/20") == single


def test_each_segment_is_animated_from_the_last_frame_before_it_after_matching(
    tiny_pipeline: VideoPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DeepCache chains too: minimum reuses the deep features on every 2nd step
    params = replace(PARAMS, num_frames=60, deep_cache="minimum")
    matched: list[tuple[np.ndarray, np.ndarray]] = []  # (a segment as made, as matched)
    real_match = colour.match

    def recording_match(frames: np.ndarray, reference: colour.ColourStats) -> np.ndarray:
        out = real_match(frames, reference)
        matched.append((frames, out))
        return out

    monkeypatch.setattr(colour, "match", recording_match)
    segments: list[Segment] = []
    steps: list[StepEvent] = []
    video = tiny_pipeline.generate(params, Hooks(on_step=steps.append, on_segment=segments.append))
    assert video.frames.shape == (60, 64, 64, 3)
    assert [(s.index, s.count) for s in segments] == [(1, 3), (2, 3), (3, 3)]
    assert [s.seed for s in segments] == [chain.segment_seed(11, k) for k in range(3)]
    # segment 1 from the first frame; segment 2 from segment 1's last frame (the reference,
    # unchanged), which is frame 24 of the video; segment 3 from segment 2's last frame after
    # matching, frame 48 (each join shown once)
    assert segments[0].image is video.first_frame
    assert np.array_equal(np.asarray(segments[1].image), video.frames[24])
    assert len(matched) == 2
    made, after = matched[0]
    assert np.array_equal(np.asarray(segments[2].image), after[-1])
    assert not np.array_equal(after[-1], made[-1])  # the matching changed it
    assert np.array_equal(video.frames[48], after[-1])
    assert np.array_equal(video.frames[25:49], after[1:])
    video_steps = [(e.segment, e.step) for e in steps if e.stage == Stage.video]
    assert video_steps == [(k, s) for k in (1, 2, 3) for s in (1, 2)]
    assert {e.segments for e in steps if e.stage in (Stage.video, Stage.decode)} == {3}


def fake_animate(made: list[np.ndarray]) -> chain.Animate:
    """Segments of 25 frames that start from their conditioning frame and turn bluer frame by
    frame (a drift), the first one's pixels from its seed."""

    def animate(image: Image.Image, seed: int, hooks: Hooks) -> np.ndarray:
        start = np.asarray(image, dtype=np.int16)
        drift = np.array([0, 0, 2])
        frames = np.stack([start + drift * i for i in range(25)]).clip(0, 255)
        made.append(frames.astype(np.uint8))
        return made[-1]

    return animate


def test_a_chain_shows_each_join_once_and_stops_at_num_frames() -> None:
    made: list[np.ndarray] = []
    first = Image.fromarray(np.random.default_rng(0).integers(0, 200, (8, 8, 3), np.uint8))
    segments: list[Segment] = []
    out = list(
        chain.chain(
            fake_animate(made),
            first,
            num_frames=60,
            segment_frames=25,
            seed=3,
            color_match=False,
            hooks=Hooks(on_segment=segments.append),
        )
    )
    assert [len(s) for s in out] == [25, 24, 11]
    video = np.concatenate(out)
    # unmatched: each segment as made, less its first frame (its conditioning frame again)
    assert np.array_equal(video, np.concatenate([made[0], made[1][1:], made[2][1:12]]))
    for segment, before in zip(segments[1:], made[:2], strict=True):
        assert np.array_equal(np.asarray(segment.image), before[-1])
    assert np.array_equal(np.asarray(segments[0].image), np.asarray(first))


def test_matching_holds_the_colours_of_the_first_segment() -> None:
    def blueness(frames: np.ndarray) -> float:
        return float(frames[..., 2].mean() - frames[..., :2].mean())

    runs = {}
    for match in (False, True):
        made: list[np.ndarray] = []
        first = Image.fromarray(np.random.default_rng(0).integers(0, 150, (8, 8, 3), np.uint8))
        args = {"num_frames": 97, "segment_frames": 25, "seed": 3, "hooks": Hooks()}
        runs[match] = list(chain.chain(fake_animate(made), first, color_match=match, **args))
    drifted, held = (blueness(runs[m][-1]) - blueness(runs[m][0]) for m in (False, True))
    assert drifted > 100  # four segments, each bluer than the last
    assert abs(held) < 5


def test_a_cancel_in_the_second_segment_stops_it(tiny_pipeline: VideoPipeline) -> None:
    seen: list[StepEvent] = []

    def should_cancel() -> bool:
        return any(e.segment == 2 for e in seen)

    hooks = Hooks(on_step=seen.append, should_cancel=should_cancel)
    picture = Image.new("RGB", (64, 64), (90, 120, 30))
    params = replace(PARAMS, prompt=None, image=picture, num_frames=241)
    stream = tiny_pipeline.stream(params, hooks)
    with pytest.raises(GenerationCancelled, match="video step 2"):
        tiny_pipeline.to_mp4(stream, hooks)
    assert seen[-1] == StepEvent(Stage.video, 1, 2, segment=2, segments=10)
