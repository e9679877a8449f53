"""Videos longer than the model's 25 frames: segments chained in one request.

SVD-XT animates one picture into a fixed number of frames (``segment_frames``, 25). A longer
video is made of segments: the first animated from the first frame, each next one from the
previous segment's last frame. The first frame of a segment reproduces its conditioning frame,
which the previous segment already shows, so it is dropped: each segment after the first adds
``segment_frames - 1`` frames, and the last one is cut to make exactly ``num_frames``
(241 = 25 + 9 x 24: ten segments).

Before its last frame conditions the next segment, each segment after the first is
colour-matched to the first one (``colour.py``), so that drift does not accumulate along the
chain. The conditioning is a picture, not latents: SVD conditions on the image through CLIP
image embeddings and through the VAE latents of the noise-augmented picture (noise added in
pixel space, as the model was trained), so a pixel frame is needed; the frame is the decoded
output frame itself, and the only extra work per join is the one VAE encode (and CLIP encode)
that any conditioning image costs.

Segment 1 runs with the request's seed, so a video of the model's length is exactly what it
was without chaining; segment ``k`` with a seed derived from the request's seed and ``k``, so
the same request gives the same video. A text-to-video request draws its first frame once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
from PIL import Image

from fastsvd.hooks import Hooks, Segment, StepEvent
from fastsvd.pipeline import colour

# one segment: (conditioning frame, seed, hooks) -> its frames, [segment_frames, H, W, 3] uint8
Animate = Callable[[Image.Image, int, Hooks], np.ndarray]


def segment_count(num_frames: int, segment_frames: int) -> int:
    """How many segments make ``num_frames`` frames: each after the first adds one frame less
    than the model makes (the join is not repeated)."""
    if num_frames <= segment_frames:
        return 1
    added = segment_frames - 1
    return 1 + -(-(num_frames - segment_frames) // added)


def segment_seed(seed: int, index: int) -> int:
    """The seed of segment ``index`` (0-based): the request's for the first, then a hash of
    both (63 bits, as the request's own seed may be)."""
    if index == 0:
        return seed
    digest = hashlib.sha256(f"fastsvd-segment:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _tagged(hooks: Hooks, index: int, count: int) -> Hooks:
    """``hooks`` whose step events name segment ``index`` of ``count``."""

    def on_step(event: StepEvent) -> None:
        hooks.on_step(replace(event, segment=index, segments=count))

    return replace(hooks, on_step=on_step)


def chain(
    animate: Animate,
    first_frame: Image.Image,
    *,
    num_frames: int,
    segment_frames: int,
    seed: int,
    color_match: bool,
    hooks: Hooks,
) -> Iterator[np.ndarray]:
    """The video's frames, a segment at a time as each is made ([n, H, W, 3] uint8; ``num_frames``
    in all). ``hooks.on_segment`` hears each segment's conditioning frame and seed before it is
    animated; its steps report their segment. Only one segment's frames are held at a time."""
    count = segment_count(num_frames, segment_frames)
    image, left = first_frame, num_frames
    reference: colour.ColourStats | None = None  # the first segment's colours
    for index in range(count):
        seed_k = segment_seed(seed, index)
        hooks.on_segment(Segment(index + 1, count, seed_k, image))
        frames = animate(image, seed_k, _tagged(hooks, index + 1, count) if count > 1 else hooks)
        if color_match and count > 1:
            if reference is None:
                reference = colour.stats_of(frames)
            else:
                frames = colour.match(frames, reference)
        image = Image.fromarray(frames[-1])  # the next segment's conditioning frame
        # frame 0 of a later segment repeats its conditioning frame, already shown
        new = frames if index == 0 else frames[1:]
        new = new[:left]
        left -= len(new)
        yield new
