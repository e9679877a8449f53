"""MP4 export: H.264 yuv420p at the requested fps, decodable back to the same frames."""

from __future__ import annotations

import io
from collections.abc import Iterator

import av
import numpy as np
import pytest

from fastsvd.pipeline.encode import encode_mp4


def decode(data: bytes) -> tuple[list[np.ndarray], av.video.stream.VideoStream, str]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream, container.format.name


def gradient_frames(count: int = 25, height: int = 64, width: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([(x * 2 + i * 4) % 256, (y * 3) % 256, np.full_like(x, 128)], axis=-1)
        for i in range(count)
    ]
    return np.asarray(frames, dtype=np.uint8)


@pytest.mark.parametrize("fps", [1, 10, 24])
def test_encoded_video_decodes_to_the_same_frames_at_the_same_rate(fps: int) -> None:
    frames = gradient_frames()
    data = encode_mp4(frames, fps)
    decoded, stream, format_name = decode(data)
    assert "mp4" in format_name
    assert stream.codec_context.name == "h264"
    assert stream.codec_context.pix_fmt == "yuv420p"
    assert stream.average_rate == fps
    assert len(decoded) == 25
    assert decoded[0].shape == (64, 128, 3)
    error = np.abs(np.asarray(decoded, dtype=np.int16) - frames.astype(np.int16)).mean()
    assert error < 4.0  # lossy, but close on smooth content
    assert data[4:8] == b"ftyp"
    assert data.index(b"moov") < data.index(b"mdat")  # faststart: playable while downloading


def test_wrong_frame_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(gradient_frames().astype(np.float32), 10)


def test_frames_are_encoded_as_they_arrive() -> None:
    events: list[str] = []

    def made() -> Iterator[np.ndarray]:
        for i, frame in enumerate(gradient_frames(count=5)):
            events.append(f"made {i}")
            yield frame

    data = encode_mp4(made(), 10, after_frame=lambda i: events.append(f"encoded {i}"))
    # each frame goes to the encoder before the next one is made: none waits in memory
    assert events == [e for i in range(5) for e in (f"made {i}", f"encoded {i}")]
    assert len(decode(data)[0]) == 5
    with pytest.raises(ValueError, match="no frames"):
        encode_mp4(iter([]), 10)
