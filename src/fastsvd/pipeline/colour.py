"""Colour matching of chained segments: each one's colours moved onto the first segment's.

Every segment of a long video is animated from the previous one's last frame, which has been
through the VAE and the denoiser once more; small shifts of hue and saturation add up along the
chain. Each segment is therefore matched to the *first* one (matching to the previous one would
carry the drift along), before its last frame conditions the next segment.

The method is Reinhard et al.'s colour transfer ("Color Transfer between Images", 2001): the mean
and standard deviation of each channel in CIE L*a*b*, moved onto the reference's. Lab is chosen
because its channels are nearly decorrelated and perceptually uniform: a cast is a shift of a*
and b*, a loss of saturation a shrinking of their spread, a brightness drift a shift of L*, each
corrected on its own channel without creating new hues. Two moments per channel correct the
drift (a global, slow change) without reshaping the content; full histogram matching would also
force each segment's tonal distribution onto the first one's, fighting legitimate changes of
content (a bright object entering the scene) and posterising smooth gradients. One transform
per segment, from statistics over all its frames, so nothing flickers within a segment.

A segment whose statistics equal the reference's is returned unchanged (to the 8-bit value).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# sRGB (D65) linear RGB -> CIE XYZ, and the D65 white point
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = np.array([0.95047, 1.0, 1.08883])
_DELTA = 6 / 29
# a spread changes at most by this factor: a near-flat segment is not stretched into noise
MAX_GAIN = 2.0
_MIN_STD = 1e-3


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] uint8 sRGB -> [..., 3] float64 L*a*b* (L in 0-100)."""
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4 / 29)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """[..., 3] L*a*b* -> [..., 3] uint8 sRGB, rounded and clipped to the gamut."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4 / 29)) * _WHITE
    linear = np.clip(xyz @ _XYZ_TO_RGB.T, 0.0, 1.0)
    c = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    out: np.ndarray = np.clip(np.round(c * 255.0), 0, 255).astype(np.uint8)
    return out


@dataclass(frozen=True)
class ColourStats:
    """The mean and standard deviation of L*, a* and b* over every pixel of some frames."""

    mean: np.ndarray  # [3]
    std: np.ndarray  # [3]


def stats_of(frames: np.ndarray) -> ColourStats:
    """The Lab statistics of ``frames`` ([F, H, W, 3] uint8), a frame at a time (one frame's
    Lab in memory, not the segment's)."""
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for frame in frames:
        lab = rgb_to_lab(frame).reshape(-1, 3)
        total += lab.sum(axis=0)
        squares += (lab**2).sum(axis=0)
        count += lab.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return ColourStats(mean, std)


def match(frames: np.ndarray, reference: ColourStats) -> np.ndarray:
    """``frames`` ([F, H, W, 3] uint8) with their Lab statistics moved onto ``reference``'s:
    per channel, ``(x - mean) / std * reference.std + reference.mean``. A new array."""
    own = stats_of(frames)
    gain = np.where(own.std > _MIN_STD, reference.std / np.maximum(own.std, _MIN_STD), 1.0)
    gain = np.clip(gain, 1 / MAX_GAIN, MAX_GAIN)
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        lab = rgb_to_lab(frame)
        out[i] = lab_to_rgb((lab - own.mean) * gain + reference.mean)
    return out
