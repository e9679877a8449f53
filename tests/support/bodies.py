"""The endpoints tests submit to, and the small request bodies they send."""

from __future__ import annotations

import base64
import io

from PIL import Image

from fastsvd import constants as c

T2V = c.TEXT_TO_VIDEO_ENDPOINT  # an endpoint id, as the clients name it
I2V = c.IMAGE_TO_VIDEO_ENDPOINT
T2V_PATH = f"/{T2V}"  # its submit path on a server
I2V_PATH = f"/{I2V}"

SIZE_64 = {"video_size": {"width": 64, "height": 64}}  # the default steps: the longest fake job
SMALL = {**SIZE_64, "steps": 3}  # a few progress lines
ONE_STEP = {**SIZE_64, "steps": 1}  # the quickest job
SMALL_ARGS = ["--video-size", "64x64", "--steps", "3"]  # SMALL, as the CLI's options
REQUESTS_PATH = f"/{I2V}/requests"  # the app's request routes (status, result, cancel)


def picture_uri() -> str:
    """A 64x64 red PNG as a data: URI, for image-to-video requests."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
