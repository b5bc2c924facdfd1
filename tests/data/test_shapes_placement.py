"""The shapes and keypoint-shapes generators share one placement loop (shapes._place_shapes);
their files for a fixed seed are the ones the two separate loops wrote before it was shared.

The digests (SHA-256 of annotations.json and every image's decoded pixels) were recorded with
the separate loops. With Pillow's polygon rasterizer in the loop, they depend on Pillow's
version (10.0.1 and 13.0.0 differ for the shapes data), so the exact check swaps in a plain
numpy rasterizer; the real drawing is also checked where its digest was recorded."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import PIL
import pytest
from PIL import Image

import maskrcnn.data.keypoint_shapes as keypoint_shapes
import maskrcnn.data.shapes as shapes
from maskrcnn.data import generate_shapes_dataset
from maskrcnn.data.keypoint_shapes import generate_keypoint_shapes_dataset

PLAIN_DIGESTS = {"shapes": "f23d2171a80d96c4", "keypoints": "33fe8819d76d61f6"}
PILLOW_DIGESTS = {  # Pillow version -> digests with its drawing
    "13.0.0": {"shapes": "21b4240bb80443c0", "keypoints": "7fa090f30b39ae65"},
    "10.0.1": {"shapes": "d3cd3ae0900fd191", "keypoints": "7fa090f30b39ae65"},
}


def plain_draw(kind, height, width, cx, cy, size, angle):
    """Discs and axis-aligned squares (squares a little smaller as the angle turns): no Pillow."""
    yy, xx = np.mgrid[:height, :width]
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    if kind == "square":
        r = size / 2 * (0.8 + 0.1 * np.cos(angle))
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    r = size / 2 * (1.0 if kind == "circle" else 0.8 + 0.1 * np.cos(angle))
    return dx * dx + dy * dy <= r * r


def digests(root: Path) -> dict[str, str]:
    out = {}
    for name, ann in (
        ("shapes", generate_shapes_dataset(root / "s", 12, image_size=(96, 128), seed=5, empty_fraction=0.2)),
        ("keypoints", generate_keypoint_shapes_dataset(root / "k", 12, image_size=(96, 128), seed=5)),
    ):
        h = hashlib.sha256(ann.read_bytes())
        for path in sorted((ann.parent / "images").glob("*.png")):
            h.update(np.asarray(Image.open(path)).tobytes())
        out[name] = h.hexdigest()[:16]
    return out


def test_shared_placement_writes_what_the_separate_loops_wrote(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "_draw", plain_draw)
    monkeypatch.setattr(keypoint_shapes, "_draw", plain_draw)
    assert digests(tmp_path) == PLAIN_DIGESTS


@pytest.mark.skipif(PIL.__version__ not in PILLOW_DIGESTS, reason=f"no digest recorded with Pillow {PIL.__version__}")
def test_with_pillows_drawing_too(tmp_path):
    assert digests(tmp_path) == PILLOW_DIGESTS[PIL.__version__]
