"""Bad pictures: bombs, huge dimensions, truncated and corrupt files, wrong types, animations,
unusual colour modes and EXIF rotation. Each is read correctly or refused with a 422 that names
``image_url``, and reading them all fits in a small, fixed amount of memory.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from PIL import Image

from fastsvd import media
from fastsvd.errors import InvalidInput
from tests.support.inprocess import InProcessServer
from tests.support.servers import ROOT, wait_done

MEMORY_LIMIT_BYTES = 768 * 1024 * 1024  # address space of the process reading every case


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, extra: bytes = b"") -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (8-bit grey) over a tiny body."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + extra
        + png_chunk(b"IDAT", body)
        + png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG with its frame header rewritten to claim ``width`` x ``height``."""
    data = bytearray(encoded(Image.new("RGB", (16, 16), (200, 10, 10)), "JPEG"))
    at = data.index(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded(Image.new("P", (8, 8), 1), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen
    return bytes(data)


def text_bomb() -> bytes:
    """A PNG with a zTXt chunk that inflates to 200 MB."""
    payload = b"k\0\0" + zlib.compress(b"\0" * (200 * 1024 * 1024), 9)
    return png_claiming(8, 8, png_chunk(b"zTXt", payload))


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)


def cmyk_jpeg() -> bytes:
    return encoded(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG")  # red


def rotated_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(Image.new("RGB", (40, 20), (10, 200, 30)), "JPEG", exif=exif.tobytes())


def tiff_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded(Image.new("L", (8, 8)), "TIFF"))
    # rewrite the ImageWidth (256) and ImageLength (257) entries of the first directory
    offset = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[offset : offset + 2])[0]
    for i in range(count):
        at = offset + 2 + 12 * i
        tag, _kind = struct.unpack("<HH", data[at : at + 4])
        if tag in (256, 257):
            value = width if tag == 256 else height
            data[at + 2 : at + 4] = struct.pack("<H", 4)  # LONG
            data[at + 8 : at + 12] = struct.pack("<I", value)
    return bytes(data)


def sixteen_bit_png(value: int) -> bytes:
    return encoded(Image.new("I;16", (8, 8), value), "PNG")


good_png = encoded(Image.new("RGB", (64, 32), (0, 120, 240)))

# name: (bytes, expected) where expected is "refused: <words of the message>" or the RGB
# colour of the top-left pixel once read, with (width, height) after EXIF rotation.
CASES: dict[str, tuple[bytes, str | tuple[tuple[int, int, int], tuple[int, int]]]] = {
    "png 30000x30000 (bomb)": (png_claiming(30000, 30000), "refused: at most 40,000,000"),
    "png 1x2^31 (bomb)": (png_claiming(1, 2**31 - 1), "refused: at most 40,000,000"),
    "png 8000x8000 1-bit (bomb)": (
        encoded(Image.new("1", (8000, 8000))),
        "refused: at most 40,000,000",
    ),
    "png zTXt 200 MB (bomb)": (text_bomb(), "refused: could not be decoded"),
    "jpeg 65500x65500": (jpeg_claiming(65500, 65500), "refused: at most 40,000,000"),
    "gif 65535x65535": (gif_claiming(65535, 65535), "refused: at most 40,000,000"),
    "tiff 100000x100000": (tiff_claiming(100000, 100000), "refused: at most 40,000,000"),
    "png truncated": (good_png[: len(good_png) // 2], "refused: could not be decoded"),
    "jpeg truncated": (
        encoded(Image.effect_noise((256, 256), 64).convert("RGB"), "JPEG")[:900],
        "refused: could not be decoded",
    ),
    "png bad crc": (good_png[:40] + b"\0\0" + good_png[42:], "refused: not a picture"),
    "empty": (b"", "refused: not a picture"),
    "random bytes": (bytes(range(256)) * 8, "refused: not a picture"),
    "html": (b"<!doctype html><title>x</title>", "refused: not a picture"),
    "svg": (
        b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<svg xmlns="http://www.w3.org/2000/svg">&x;</svg>',
        "refused: not a picture",
    ),
    "eps (Ghostscript)": (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "refused: not a picture",
    ),
    "psd": (encoded(Image.new("RGB", (8, 8)), "PNG").replace(b"PNG", b"8BPS", 1), "refused"),
    "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "refused: not a picture"),
    "animated gif: first frame": (animated("GIF"), ((250, 0, 0), (32, 32))),
    "animated png: first frame": (animated("PNG"), ((250, 0, 0), (32, 32))),
    "animated webp: first frame": (animated("WEBP"), ((250, 0, 0), (32, 32))),
    "cmyk jpeg": (cmyk_jpeg(), ((254, 0, 0), (32, 32))),
    "rgba png: transparent over white": (
        encoded(Image.new("RGBA", (8, 8), (0, 0, 0, 0))),
        ((255, 255, 255), (8, 8)),
    ),
    "la png": (encoded(Image.new("LA", (8, 8), (0, 0))), ((255, 255, 255), (8, 8))),
    "palette png with transparency": (
        encoded(Image.new("P", (8, 8), 0), transparency=0),
        ((255, 255, 255), (8, 8)),
    ),
    "16-bit png, full scale": (sixteen_bit_png(65535), ((255, 255, 255), (8, 8))),
    "16-bit png, half scale": (sixteen_bit_png(32768), ((128, 128, 128), (8, 8))),
    "1-bit png": (encoded(Image.new("1", (8, 8), 1)), ((255, 255, 255), (8, 8))),
    "exif rotate 90": (rotated_jpeg(6), ((10, 200, 30), (20, 40))),
    "exif rotate 270": (rotated_jpeg(8), ((10, 200, 30), (20, 40))),
    "exif rotate 180": (rotated_jpeg(3), ((10, 200, 30), (40, 20))),
    "bmp": (encoded(Image.new("RGB", (8, 8), (1, 2, 3)), "BMP"), ((1, 2, 3), (8, 8))),
    "webp": (
        encoded(Image.new("RGB", (8, 8), (9, 99, 199)), "WEBP", lossless=True),
        ((9, 99, 199), (8, 8)),
    ),
}

READER = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from fastsvd import media
    from fastsvd.errors import InvalidInput
    for path in sorted(Path(sys.argv[1]).iterdir()):
        try:
            image = media.decode_image(path.read_bytes())
            rgb = media.to_rgb(image)
            media.fit(image, 1024, 576)  # what the pipeline does next
            outcome = {"pixel": list(rgb.getpixel((0, 0))), "size": list(rgb.size)}
        except InvalidInput as exc:
            outcome = {"refused": exc.message, "field": exc.field}
        print(json.dumps({"case": path.name, **outcome}), flush=True)
    """
)


@pytest.mark.process  # reads the pictures in a process of its own, its memory capped
def test_every_bad_picture_is_read_or_refused_within_bounded_memory(tmp_path: Path) -> None:
    folder = tmp_path / "cases"
    folder.mkdir()
    names = {}
    for i, (name, (data, _expected)) in enumerate(CASES.items()):
        (folder / f"{i:03d}").write_bytes(data)
        names[f"{i:03d}"] = name
    done = subprocess.run(
        [sys.executable, "-c", READER, str(folder), str(MEMORY_LIMIT_BYTES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = {names[o["case"]]: o for o in map(json.loads, done.stdout.splitlines())}
    assert set(outcomes) == set(CASES)
    for name, (_data, expected) in CASES.items():
        got = outcomes[name]
        if isinstance(expected, str):
            words = expected.removeprefix("refused").removeprefix(": ")
            assert "refused" in got, (name, got)
            assert got["field"] == "image_url", name
            assert words in got["refused"], (name, got["refused"])
        else:
            colour, size = expected
            assert "pixel" in got, (name, got)
            assert max(abs(a - b) for a, b in zip(got["pixel"], colour, strict=True)) <= 3, (
                name,
                got,
            )
            assert tuple(got["size"]) == size, (name, got)


def test_the_content_type_a_sender_declares_is_not_trusted() -> None:
    as_text = "data:text/plain;base64," + base64.b64encode(good_png).decode()
    assert media.decode_data_uri_image(as_text).size == (64, 32)
    html_as_png = "data:image/png;base64," + base64.b64encode(b"<html></html>").decode()
    with pytest.raises(InvalidInput, match="not a picture"):
        media.decode_data_uri_image(html_as_png)


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.mark.slow
def test_the_api_refuses_bad_pictures_at_submit_or_in_the_result(target: InProcessServer) -> None:
    with target.client() as client:
        # the header tells: refused at submit, in the API process, without decoding pixels
        for name in ("png 30000x30000 (bomb)", "jpeg 65500x65500", "html", "eps (Ghostscript)"):
            answer = client.post("/fal-ai/fast-svd", json={"image_url": data_uri(CASES[name][0])})
            assert answer.status_code == 422, (name, answer.text)
            assert answer.json()["detail"][0]["loc"] == ["body", "image_url"]
        # only decoding tells: the request fails with 422 naming the field, the worker lives on
        truncated = CASES["png truncated"][0]
        uploaded = client.post(
            "/files/upload", content=truncated, headers={"content-type": "image/png"}
        ).json()["access_url"]
        for url in (data_uri(truncated), uploaded):
            submitted = client.post("/fal-ai/fast-svd", json={"image_url": url}).json()
            status = wait_done(client, submitted["status_url"])
            assert status["error_type"] == "validation_error", status
            result = client.get(submitted["response_url"])
            assert result.status_code == 422
            assert result.json()["detail"].startswith("image_url: the picture could not be decoded")
        # and a good picture after them still works
        fine = client.post("/fal-ai/fast-svd", json={"image_url": data_uri(good_png)}).json()
        assert wait_done(client, fine["status_url"]).get("error") is None
