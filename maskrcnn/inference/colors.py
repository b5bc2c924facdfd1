"""Colours shared by overlays and label-map PNGs: one fixed sequence of well-separated hues.

`instance_colors(n)[i]` is the i-th colour of the sequence. Overlays index it by class label
(`class_colors`), so every "triangle" in every image is the same colour; label-map PNGs index
it by instance id (`label_map_palette`), so neighbouring instances stay apart.
"""
from __future__ import annotations

import colorsys

import numpy as np

__all__ = ["class_colors", "instance_colors", "label_map_palette"]

_GOLDEN = 0.618033988749895


def instance_colors(num: int) -> np.ndarray:
    """uint8 (num, 3) RGB colors, the same for the same `num` on every run.

    Hues step by the golden ratio around the wheel, so consecutive instances (which usually
    neighbour each other in score order) get far-apart hues and no two of the first few dozen
    look alike; saturation and value alternate to separate the rare near-equal hues.
    """
    colors = [
        colorsys.hsv_to_rgb((0.07 + i * _GOLDEN) % 1.0, 0.85 if i % 2 == 0 else 0.6, 0.95 if i % 3 else 0.8)
        for i in range(num)
    ]
    return np.round(np.array(colors, dtype=np.float64).reshape(num, 3) * 255).astype(np.uint8)


def class_colors(labels) -> np.ndarray:
    """uint8 (R, 3): the colour of each detection's class label (label k -> colour k of the
    sequence), so the same class has the same colour in every image and every run."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size == 0:
        return np.zeros((0, 3), dtype=np.uint8)
    if labels.min() < 0:
        raise ValueError(f"class labels must be >= 0, got {int(labels.min())}")
    return instance_colors(int(labels.max()) + 1)[labels]


def label_map_palette() -> list[int]:
    """A 256-entry PNG palette (flat [r, g, b, ...]): 0 = black background, id i = the i-th
    instance colour (instance_colors(255)[i - 1])."""
    palette = np.concatenate([np.zeros((1, 3), np.uint8), instance_colors(255)])
    return palette.reshape(-1).tolist()
