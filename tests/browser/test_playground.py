"""The playground at / in headless Chromium: a real generation on the tiny preset, a cancel, a
validation error, an image-to-video upload by drag and drop, the key prompt, a phone screen.

Screenshots of each state go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from tests.support.browser import shot
from tests.support.servers import Server

pytestmark = pytest.mark.process  # starts server processes

# Record the order in which the first frame and the video appear.
WATCH_APPEARANCES = """
window.__appeared = [];
document.addEventListener("DOMContentLoaded", () => {
  const observer = new MutationObserver(() => {
    for (const id of ["first-frame", "video"]) {
      const el = document.getElementById(id);
      if (el && !el.hidden && !window.__appeared.includes(id)) window.__appeared.push(id);
    }
  });
  observer.observe(document.body, { attributes: true, subtree: true, attributeFilter: ["hidden"] });
});
"""


def open_playground(page: Page, server: Server) -> None:
    page.goto(server.url + "/")
    expect(page.locator("body[data-ready=true]")).to_be_attached()
    expect(page.locator("#key-panel")).to_be_visible()  # auth is on: the page asks once
    page.fill("#key-input", server.key)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-panel")).to_be_hidden()


def small_request(page: Page, *, width: int, height: int, steps: int, seed: int | None) -> None:
    page.click("#more summary")
    page.select_option("#f-video_size", "custom")
    page.fill("#f-video_size-width", str(width))
    page.fill("#f-video_size-height", str(height))
    page.fill("#f-steps", str(steps))
    if seed is not None:
        page.fill("#f-seed", str(seed))


def test_a_generation_from_prompt_to_video(page: Page, tiny_server: Server) -> None:
    page.add_init_script(WATCH_APPEARANCES)
    open_playground(page, tiny_server)
    # fal's defaults and bounds are on the form, with their help
    expect(page.locator("#f-motion_bucket_id")).to_have_value("127")
    expect(page.locator("#f-fps")).to_have_value("10")
    expect(page.locator("#f-deep_cache")).to_have_value("none")
    expect(page.locator("#f-video_size")).to_have_value("landscape_16_9")
    expect(page.locator("#help-motion_bucket_id")).to_contain_text("1–255")
    shot(page, "01-form")

    page.fill("#f-prompt", "a red fox running through snow")
    small_request(page, width=128, height=64, steps=6, seed=7)
    page.click("#generate")
    expect(page.locator("[data-stage=video] progress")).to_be_visible(timeout=60_000)
    expect(page.locator("#first-frame")).to_be_visible()
    shot(page, "02-progress")

    expect(page.locator("#run-status")).to_have_text("Done", timeout=120_000)
    expect(page.locator("#video")).to_be_visible()
    shot(page, "03-done")
    assert page.evaluate("window.__appeared") == ["first-frame", "video"]  # frame first
    expect(page.locator('#run-details dd[data-name="Seed"]')).to_have_text("7")
    video_url = page.get_attribute("#video", "src")
    download = page.get_attribute("#download", "href")
    assert video_url
    assert video_url == download
    got = httpx.get(video_url)
    assert got.status_code == 200
    assert got.headers["content-type"] == "video/mp4"
    # the player can play it: Chromium decodes its first frame at the requested size
    page.wait_for_function("document.getElementById('video').readyState >= 2", timeout=30_000)
    size = page.evaluate("(v => [v.videoWidth, v.videoHeight])(document.getElementById('video'))")
    assert size == [128, 64]
    # the history lists it, newest first
    expect(page.locator("#history-list li").first).to_contain_text("a red fox running")
    expect(page.locator("#history-list li").first).to_contain_text("done")


def test_cancel_stops_a_running_request(page: Page, tiny_server: Server) -> None:
    open_playground(page, tiny_server)
    page.fill("#f-prompt", "a slow one")
    small_request(page, width=256, height=128, steps=50, seed=None)
    page.click("#generate")
    expect(page.locator("[data-stage=video] progress")).to_be_visible(timeout=60_000)
    expect(page.locator("#cancel")).to_be_enabled()
    page.click("#cancel")
    expect(page.locator("#run-status")).to_have_text("Cancelled", timeout=30_000)
    expect(page.locator("#video")).to_be_hidden()
    expect(page.locator("#history-list li").first).to_contain_text("cancelled")
    shot(page, "04-cancelled")


def test_a_validation_error_is_shown_next_to_its_field(page: Page, tiny_server: Server) -> None:
    open_playground(page, tiny_server)
    page.click("#generate")  # no prompt: caught before sending
    expect(page.locator("#error-prompt")).to_have_text("Write a prompt.")
    page.fill("#f-prompt", "a rocket")
    small_request(page, width=100, height=64, steps=2, seed=None)  # not a multiple of 64
    page.click("#generate")
    expect(page.locator("#error-video_size")).to_contain_text("multiple of 64")
    expect(page.locator("#f-video_size")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#error-prompt")).to_be_empty()
    expect(page.locator("#run-body")).to_be_hidden()  # nothing was queued
    shot(page, "05-validation-error")


def png(colour: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def test_image_to_video_with_a_dropped_upload(page: Page, tiny_server: Server) -> None:
    open_playground(page, tiny_server)
    page.click("#tab-fal-ai-fast-svd")
    expect(page.locator("#f-prompt")).to_have_count(0)  # image-to-video has no prompt
    # drag and drop a file onto the drop zone, as a person would from their desktop
    data = base64.b64encode(png((200, 30, 30))).decode()
    transfer = page.evaluate_handle(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "red.png", { type: "image/png" }));
            return dt;
        }""",
        data,
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    expect(page.locator("#image-preview")).to_have_attribute("alt", "Uploaded: red.png")
    small_request(page, width=64, height=64, steps=2, seed=3)
    page.click("#generate")
    expect(page.locator("#run-status")).to_have_text("Done", timeout=120_000)
    expect(page.locator("#first-frame")).to_be_visible()  # the picture, fitted to the size
    expect(page.locator("#video")).to_be_visible()
    shot(page, "06-image-to-video")
    with tiny_server.client() as client:
        newest = client.get("/fal-ai/fast-svd/requests", params={"limit": 1}).json()
    item = newest["requests"][0]
    assert item["endpoint"] == "fal-ai/fast-svd"
    assert item["input"]["image_url"].startswith(tiny_server.url + "/files/")
    assert item["output"]["seed"] == 3


def test_the_few_step_tab_has_its_own_fields_and_generates(page: Page, tiny_server: Server) -> None:
    open_playground(page, tiny_server)
    page.click("#tab-fal-ai-fast-svd-lcm-text-to-video")
    expect(page.locator("#f-steps")).to_have_value("4")  # fal-ai/fast-svd-lcm's defaults
    expect(page.locator("#help-steps")).to_contain_text("1–20")
    expect(page.locator("#f-fps")).to_have_value("10")
    expect(page.locator("#f-deep_cache")).to_have_count(0)  # not fields of this endpoint
    expect(page.locator("#f-negative_prompt")).to_have_count(0)
    page.fill("#f-prompt", "a rocket")
    small_request(page, width=64, height=64, steps=2, seed=5)
    # fastsvd's longer videos: a frames field with the duration, and the matching's checkbox
    expect(page.locator("#f-num_frames")).to_have_value("25")
    expect(page.locator("#duration")).to_have_text("= 2.5 s at 10 fps")
    expect(page.locator("#f-color_match")).to_be_checked()
    page.fill("#f-num_frames", "26")  # two segments
    expect(page.locator("#duration")).to_have_text("= 2.6 s at 10 fps")
    page.click("#generate")
    expect(page.locator("#run-status")).to_have_text("Done", timeout=120_000)
    expect(page.locator("#video")).to_be_visible()
    expect(page.locator("[data-stage=video] label")).to_have_text("Video (segment 2 / 2)")
    shot(page, "07-few-step")
    with tiny_server.client() as client:
        newest = client.get("/fal-ai/fast-svd-lcm/requests", params={"limit": 1}).json()
    item = newest["requests"][0]
    assert item["endpoint"] == "fal-ai/fast-svd-lcm/text-to-video"
    assert item["input"]["steps"] == 2
    assert (item["input"]["num_frames"], item["input"]["color_match"]) == (26, True)
    assert item["output"]["seed"] == 5


def test_a_wrong_key_is_asked_for_again(page: Page, tiny_server: Server) -> None:
    page.goto(tiny_server.url + "/")
    page.fill("#key-input", "nobody:wrong")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-error")).to_contain_text("did not accept this key")
    page.fill("#key-input", "not a key")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-error")).to_have_text("A key looks like key_id:secret.")
    shot(page, "07-key")


def test_usable_on_a_phone(browser: Browser, tiny_server: Server) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        phone = context.new_page()
        open_playground(phone, tiny_server)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390  # no sideways scrolling
        box = phone.locator("#generate").bounding_box()
        assert box is not None
        assert box["height"] >= 32
        shot(phone, "08-phone")
    finally:
        context.close()
