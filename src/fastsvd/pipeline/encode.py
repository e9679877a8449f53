"""Frames to an H.264 MP4 in memory, with PyAV (no ffmpeg process), encoded as they arrive."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import av
import numpy as np

from fastsvd import constants as c


def encode_mp4(
    frames: Iterable[np.ndarray],
    fps: int,
    *,
    crf: int = c.VIDEO_CRF,
    before_frame: Callable[[int], None] | None = None,
    after_frame: Callable[[int], None] | None = None,
) -> bytes:
    """Encode ``frames`` (each [height, width, 3] uint8 RGB: an array of them, or an iterator
    that makes them as they are read) as H.264 yuv420p MP4 bytes. Each frame goes to the encoder
    as it arrives; none is kept.

    The MP4 keeps its index at the front (``faststart``) so players can start and seek while
    it downloads. ``before_frame``/``after_frame`` get the 0-based frame index.
    """
    # faststart rewrites the file in a second pass, which needs a real file, not a buffer
    with tempfile.TemporaryDirectory(prefix="fastsvd-encode-") as folder:
        path = Path(folder) / "video.mp4"
        _write(path, frames, fps, crf, before_frame, after_frame)
        return path.read_bytes()


def _check(frame: np.ndarray, size: tuple[int, int] | None) -> None:
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frames must be [H, W, 3] uint8, got {frame.shape} {frame.dtype}")
    if size is not None and frame.shape[:2] != size:
        raise ValueError(f"frames must all be {size}, got {frame.shape[:2]}")


def _write(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: int,
    crf: int,
    before_frame: Callable[[int], None] | None,
    after_frame: Callable[[int], None] | None,
) -> None:
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = None
        size: tuple[int, int] | None = None
        for i, frame in enumerate(frames):
            _check(frame, size)
            if stream is None:  # the first frame gives the video's size
                size = (frame.shape[0], frame.shape[1])
                stream = container.add_stream("libx264", rate=fps)
                stream.height, stream.width = size
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": "medium"}
            if before_frame is not None:
                before_frame(i)
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(video_frame))
            if after_frame is not None:
                after_frame(i)
        if stream is None:
            raise ValueError("no frames to encode")
        container.mux(stream.encode(None))
