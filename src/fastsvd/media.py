"""Pictures in: decoding, orientation, colour mode and size made ready for the video model.

PIL only, no torch. Everything a caller can get wrong is an ``InvalidInput`` naming the field.
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.parse
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from fastsvd import constants as c
from fastsvd.errors import InvalidInput

# Formats read: the common photo and web ones. Pillow can open many more (EPS through
# Ghostscript, PSD, FITS...), each more parser exposed to anyone who can send a file.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
FORMAT_NAMES = "PNG, JPEG, WebP, GIF, BMP, TIFF or AVIF"
_TOO_LARGE = f"the picture is too large; at most {c.IMAGE_PIXELS_MAX:,} pixels are accepted"


def check_image(data: bytes, field: str = "image_url") -> Image.Image:
    """Bytes of a picture, opened (header read, pixels not decoded) and its size checked.

    The content type a sender declares is not trusted: the bytes decide the format.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(field, _TOO_LARGE) from None
    except UnidentifiedImageError:
        raise InvalidInput(field, f"not a picture this server reads ({FORMAT_NAMES})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # corrupt headers
        raise InvalidInput(field, f"the picture could not be decoded ({exc})") from None
    if image.width * image.height > c.IMAGE_PIXELS_MAX:
        raise InvalidInput(
            field,
            f"the picture is {image.width}x{image.height}; at most "
            f"{c.IMAGE_PIXELS_MAX:,} pixels are accepted",
        )
    return image


def decode_image(data: bytes, field: str = "image_url") -> Image.Image:
    """Bytes of a PNG, JPEG, WebP... as a loaded PIL image; size checked before decoding.

    An animated picture gives its first frame.
    """
    image = check_image(data, field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(field, _TOO_LARGE) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt files
        raise InvalidInput(field, f"the picture could not be decoded ({exc})") from None
    return image


def decode_data_uri(uri: str, field: str = "image_url") -> tuple[str, bytes]:
    """``data:[type][;base64],payload`` as (content type, bytes), capped in size."""
    header, sep, payload = uri.partition(",")
    if not sep or not header.lower().startswith("data:"):
        raise InvalidInput(field, "a data: URI needs the form data:<type>;base64,<data>")
    params = header[5:].split(";")
    content_type = params[0] or "text/plain"
    if len(payload) > c.DATA_URI_MAX_BYTES * 4 // 3 + 4:
        raise InvalidInput(field, f"data: URIs are limited to {c.DATA_URI_MAX_BYTES:,} bytes")
    try:
        if "base64" in (p.lower() for p in params[1:]):
            data = base64.b64decode(payload, validate=True)
        else:
            data = urllib.parse.unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        raise InvalidInput(field, "the data: URI's base64 payload is malformed") from None
    if len(data) > c.DATA_URI_MAX_BYTES:
        raise InvalidInput(field, f"data: URIs are limited to {c.DATA_URI_MAX_BYTES:,} bytes")
    return content_type, data


def decode_data_uri_image(uri: str, field: str = "image_url") -> Image.Image:
    """A picture given as a ``data:`` URI."""
    return decode_image(decode_data_uri(uri, field)[1], field)


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB: EXIF rotation applied, alpha composited over white, any mode converted."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I"):
        # 16/32-bit greyscale: scale to 8 bits rather than clip
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale ``image`` to cover ``width`` x ``height`` and crop the centre (no distortion)."""
    return ImageOps.fit(to_rgb(image), (width, height), method=Image.Resampling.LANCZOS)


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """``image`` as JPEG bytes (previews)."""
    out = io.BytesIO()
    to_rgb(image).save(out, format="JPEG", quality=quality)
    return out.getvalue()
