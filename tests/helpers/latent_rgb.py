"""The published linear latent-to-RGB factors, as independent references for previews and colour checks.

``SD15_LATENT_RGB``: ComfyUI comfy/latent_formats.py, class ``SD15``, ``latent_rgb_factors`` (4 latent channels x
R, G, B; the product reads as [-1, 1]).
"""

from __future__ import annotations

import colorsys

import numpy as np

SD15_LATENT_RGB = np.array([
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
])


def hsv_hue(rgb) -> float:
    """Hue in degrees (0 red, 60 yellow, ...) of an RGB direction, by the standard library's ``colorsys``."""
    v = np.asarray(rgb, dtype=float)
    v = v - v.min()  # a direction: the hue does not change by adding grey
    return colorsys.rgb_to_hsv(*(v / v.max()))[0] * 360.0
