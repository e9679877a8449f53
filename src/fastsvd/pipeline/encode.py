"""Frames to an H.264 MP4 in memory, with PyAV (no ffmpeg process)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from fastsvd import constants as c


def encode_mp4(
    frames: np.ndarray,
    fps: int,
    *,
    crf: int = c.VIDEO_CRF,
    before_frame: Callable[[int], None] | None = None,
    after_frame: Callable[[int], None] | None = None,
) -> bytes:
    """Encode ``frames`` ([frames, height, width, 3] uint8 RGB) as H.264 yuv420p MP4 bytes.

    The MP4 keeps its index at the front (``faststart``) so players can start and seek while
    it downloads. ``before_frame``/``after_frame`` get the 0-based frame index.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [F, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    # faststart rewrites the file in a second pass, which needs a real file, not a buffer
    with tempfile.TemporaryDirectory(prefix="fastsvd-encode-") as folder:
        path = Path(folder) / "video.mp4"
        _write(path, frames, fps, crf, before_frame, after_frame)
        return path.read_bytes()


def _write(
    path: Path,
    frames: np.ndarray,
    fps: int,
    crf: int,
    before_frame: Callable[[int], None] | None,
    after_frame: Callable[[int], None] | None,
) -> None:
    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for i, frame in enumerate(frames):
            if before_frame is not None:
                before_frame(i)
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(video_frame))
            if after_frame is not None:
                after_frame(i)
        container.mux(stream.encode(None))
