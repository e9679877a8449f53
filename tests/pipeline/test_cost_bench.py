"""bench/cost.py's FLOP counts: the full-size models on meta, against the figures derived by
hand in docs/performance.md (SVD-XT's U-Net 159.9 TFLOP a guided step at 1024x576)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fastsvd import constants as c

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cost


@pytest.fixture(scope="module")
def table() -> dict[str, dict[str, float]]:
    return {row["endpoint"]: row for row in cost.flops_table()}


def test_the_20_step_video_stage_is_20_guided_unet_steps(
    table: dict[str, dict[str, float]],
) -> None:
    video = table[c.IMAGE_TO_VIDEO_ENDPOINT]["video"]
    # 20 x 159.9 TFLOP of U-Net, plus the CLIP image encoder and one VAE encode (~3 TFLOP)
    assert video / 1e12 == pytest.approx(20 * 159.9 + 2.9, rel=5e-3)
    assert table[c.IMAGE_TO_VIDEO_ENDPOINT]["first_frame"] == 0


def test_the_few_step_request_costs_about_a_quarter(table: dict[str, dict[str, float]]) -> None:
    def total(endpoint: str) -> float:
        return sum(table[endpoint][s] for s in ("first_frame", "video", "decode"))

    ratio = total(c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT) / total(c.TEXT_TO_VIDEO_ENDPOINT)
    assert 0.2 < ratio < 0.25
    # same decode; the Lightning first frame is 4 unguided steps against 25 guided ones
    assert (
        table[c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT]["decode"]
        == table[c.TEXT_TO_VIDEO_ENDPOINT]["decode"]
    )
    few, base = (
        table[e]["first_frame"]
        for e in (c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT, c.TEXT_TO_VIDEO_ENDPOINT)
    )
    assert few < base / 8


def test_no_guidance_halves_the_few_step_unet(table: dict[str, dict[str, float]]) -> None:
    guided = table[c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT]["video"]
    unguided = table[f"{c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT}, no guidance"]["video"]
    encoders = 2.9e12  # the image encoder and VAE encode, once either way (about)
    assert (unguided - encoders) / (guided - encoders) == pytest.approx(0.5, rel=1e-2)


def test_a_chained_request_costs_its_first_frame_once_and_each_segment_whole(
    table: dict[str, dict[str, float]],
) -> None:
    chained = {row["endpoint"]: row for row in cost.chained_table(list(table.values()))}
    for endpoint, row in table.items():
        segment = row["video"] + row["decode"]
        assert chained[endpoint][25] == row["first_frame"] + segment
        assert chained[endpoint][49] == row["first_frame"] + 2 * segment
        assert chained[endpoint][241] == row["first_frame"] + 10 * segment
    # the cheapest long video: the few-step family without guidance
    cheapest = min(chained.values(), key=lambda row: row[241])
    assert cheapest["endpoint"] == f"{c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT}, no guidance"
