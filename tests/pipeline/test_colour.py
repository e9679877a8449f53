"""Colour matching of chained segments, on synthetic frames with a known cast: a cast of hue,
saturation and brightness (the drift a chain accumulates) is removed; a white-balance cast is
at least halved; frames with the reference's colours come back unchanged."""

from __future__ import annotations

import numpy as np

from fastsvd.pipeline import colour


def scene(count: int = 4, height: int = 48, width: int = 64) -> np.ndarray:
    """Moving gradients in every channel, away from the gamut's edges."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack(
            [(x * 3 + i * 5) % 200 + 30, (y * 4 + i * 3) % 180 + 40, ((x + y) * 2 + i) % 160 + 50],
            axis=-1,
        )
        for i in range(count)
    ]
    return np.asarray(frames, dtype=np.uint8)


def error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_lab_round_trip_is_exact_on_8_bit_values() -> None:
    frames = scene()
    assert np.array_equal(colour.lab_to_rgb(colour.rgb_to_lab(frames)), frames)


def test_a_drift_of_hue_saturation_and_brightness_is_removed() -> None:
    frames = scene()
    lab = colour.rgb_to_lab(frames)
    # warmer, 20 % less saturated, a little brighter: a* and b* shifted and shrunk, L* shifted
    lab[..., 0] += 3
    lab[..., 1:] = lab[..., 1:] * 0.8 + np.array([6.0, 10.0])
    cast = colour.lab_to_rgb(lab)
    assert error(cast, frames) > 10
    matched = colour.match(cast, colour.stats_of(frames))
    assert error(matched, frames) < 0.5
    assert np.allclose(matched.mean(axis=(0, 1, 2)), frames.mean(axis=(0, 1, 2)), atol=0.5)


def test_a_white_balance_cast_is_at_least_halved() -> None:
    frames = scene()
    # gains on linear RGB, as a camera's white balance would apply them
    c = frames / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    linear = np.clip(linear * np.array([1.2, 1.0, 0.8]), 0, 1)
    encoded = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    cast = np.round(encoded * 255).astype(np.uint8)
    before = error(cast, frames)
    assert before > 5
    assert error(colour.match(cast, colour.stats_of(frames)), frames) < before / 2


def test_frames_with_the_references_colours_are_unchanged() -> None:
    frames = scene()
    reference = colour.stats_of(frames)
    assert np.array_equal(colour.match(frames, reference), frames)
    # other content, the same colours: the frames moved sideways
    moved = np.roll(frames, 7, axis=2)
    assert np.array_equal(colour.match(moved, reference), moved)


def test_a_flat_segment_is_not_stretched() -> None:
    grey = np.full((2, 8, 8, 3), 128, dtype=np.uint8)
    matched = colour.match(grey, colour.stats_of(scene()))
    assert len(np.unique(matched.reshape(-1, 3), axis=0)) == 1  # still one colour
