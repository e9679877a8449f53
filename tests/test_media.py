"""Input pictures: data URIs, decoding failures, colour modes, orientation, fitting."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from fastsvd import constants as c
from fastsvd import media
from fastsvd.errors import InvalidInput


def png_bytes(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def test_base64_data_uri_round_trips() -> None:
    data = png_bytes(Image.new("RGB", (4, 3), (1, 2, 3)))
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    assert media.decode_data_uri(uri) == ("image/png", data)
    assert media.decode_data_uri_image(uri).size == (4, 3)


def test_percent_encoded_data_uri() -> None:
    assert media.decode_data_uri("data:,a%20b") == ("text/plain", b"a b")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("data:image/png;base64", "data:<type>;base64,<data>"),
        ("data:image/png;base64,@@@", "malformed"),
        ("data:image/png;base64," + "A" * (c.DATA_URI_MAX_BYTES * 2), "limited to"),
    ],
)
def test_bad_data_uris_name_the_field(uri: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        media.decode_data_uri(uri)
    assert caught.value.field == "image_url"
    assert message in caught.value.reason


@pytest.mark.parametrize(
    "data",
    [b"", b"not a picture", png_bytes(Image.new("RGB", (64, 64)))[:60]],
    ids=["empty", "text", "truncated"],
)
def test_unreadable_pictures_are_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInput) as caught:
        media.decode_image(data)
    assert caught.value.field == "image_url"


def test_huge_dimensions_are_refused_before_decoding() -> None:
    # a 1-bit 8000x8000 PNG is tiny on disk and 64 megapixels decoded
    data = png_bytes(Image.new("1", (8000, 8000)))
    assert len(data) < 100_000
    with pytest.raises(InvalidInput, match="at most 40,000,000 pixels"):
        media.decode_image(data)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (8, 8), (255, 0, 0, 0)),
        Image.new("LA", (8, 8), (0, 0)),
        Image.new("CMYK", (8, 8), (0, 0, 0, 0)),
        Image.new("I;16", (8, 8), 65535),
        Image.new("L", (8, 8), 255),
        Image.new("P", (8, 8), 0),
    ],
    ids=["rgba", "la", "cmyk", "16bit", "grey", "palette"],
)
def test_every_mode_becomes_rgb(image: Image.Image) -> None:
    rgb = media.to_rgb(image)
    assert rgb.mode == "RGB"
    assert rgb.size == (8, 8)


def test_transparent_pixels_become_white() -> None:
    assert media.to_rgb(Image.new("RGBA", (2, 2), (255, 0, 0, 0))).getpixel((0, 0)) == (
        255,
        255,
        255,
    )


def test_exif_rotation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    decoded = media.decode_image(png_bytes(image, "JPEG", exif=exif.tobytes()))
    assert media.to_rgb(decoded).size == (20, 40)


def test_fit_covers_and_crops_the_centre() -> None:
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 0, 255), (100, 0, 200, 100))  # blue centre third
    fitted = media.fit(image, 64, 64)
    assert fitted.size == (64, 64)
    assert fitted.getpixel((32, 32)) == (0, 0, 255)
