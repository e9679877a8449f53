"""The progress lines a worker writes into a request's log, and their reading: one pair each.

fal's clients show the log as it is; fastsvd's CLI and playground turn these lines back into
progress bars and a preview of the first frame.
"""

from __future__ import annotations

import re

from fastsvd.hooks import Stage, StepEvent

FIRST_FRAME_PREFIX = "first_frame: image "  # + the picture's URL, once it exists
_STEP = re.compile(r"^(\w+): (?:segment (\d+)/(\d+), )?step (\d+)/(\d+)$")


def step_line(event: StepEvent) -> str:
    """``video: step 3/20``; in a chained video ``video: segment 2/4, step 3/20``."""
    segment = f"segment {event.segment}/{event.segments}, " if event.segments > 1 else ""
    return f"{event.stage}: {segment}step {event.step}/{event.total}"


def parse_step_line(line: str) -> StepEvent | None:
    """The step a ``step_line`` reports, or None for any other line."""
    match = _STEP.match(line)
    if match is None or match.group(1) not in Stage.__members__:
        return None
    stage, segment, segments, step, total = match.groups()
    return StepEvent(Stage(stage), int(step), int(total), int(segment or 1), int(segments or 1))


def first_frame_line(url: str) -> str:
    """The line that hands out the first frame's URL while the video is still being made."""
    return FIRST_FRAME_PREFIX + url


def parse_first_frame_line(line: str) -> str | None:
    """The URL of a ``first_frame_line``, or None for any other line."""
    return line.removeprefix(FIRST_FRAME_PREFIX) if line.startswith(FIRST_FRAME_PREFIX) else None
