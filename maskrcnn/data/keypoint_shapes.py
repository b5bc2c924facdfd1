"""Synthetic keypoint data: squares with their four corners and centre as named keypoints, among
circles that have none. A COCO person-keypoints style dataset (category `keypoints` names and
`skeleton`, annotation `keypoints` and `num_keypoints`) for the tests and `maskrcnn demo
--keypoints`, learnable by a small Keypoint R-CNN on a CPU in minutes.

The squares are tilted by at most 30 degrees, so "left top" is always the corner nearest the
image's top left, and a horizontal flip turns it into the right top: the names say so
(`left_*` <-> `right_*`), which is what the dataset's flip reads. A corner covered by a later
shape is labelled but not visible (v = 1); one outside the image is not labelled (v = 0).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..io import write_json_atomic
from .shapes import _background, _draw, _place_shapes

__all__ = ["KEYPOINT_NAMES", "KEYPOINT_SKELETON", "generate_keypoint_shapes_dataset"]

KEYPOINT_NAMES = ["left_top", "right_top", "right_bottom", "left_bottom", "centre"]
# 1-based, as COCO's: the four edges, and each corner to the centre
KEYPOINT_SKELETON = [[1, 2], [2, 3], [3, 4], [4, 1], [1, 5], [2, 5], [3, 5], [4, 5]]
SQUARE_ID, CIRCLE_ID = 1, 2
_MAX_TILT = math.pi / 6


def square_keypoints(cx: float, cy: float, size: float, angle: float) -> list[tuple[float, float]]:
    """Corners (left top, right top, right bottom, left bottom) and centre of the square that
    `shapes._draw("square", ...)` paints: extent `size`, rotated by `angle` (|angle| <= 45 deg)."""
    side = size / (abs(math.cos(angle)) + abs(math.sin(angle)))
    r = side / math.sqrt(2)
    # image y points down: the corner at -135 deg (before rotation) is the top left
    corners = [(cx + r * math.cos(t + angle), cy + r * math.sin(t + angle))
               for t in (-3 * math.pi / 4, -math.pi / 4, math.pi / 4, 3 * math.pi / 4)]
    return corners + [(cx, cy)]


def _render(rng: np.random.Generator, height: int, width: int, max_shapes: int, size_range: tuple[float, float]):
    """One image: uint8 (H, W, 3) and [(is_square, visible mask, keypoints or None)]."""
    img = _background(rng, height, width)
    lo, hi = size_range[0], min(size_range[1], min(height, width) - 2)

    def propose() -> tuple[np.ndarray, tuple[bool, list | None]]:
        is_square = bool(rng.random() < 0.7)
        size = float(rng.uniform(lo, hi))
        cx = float(rng.uniform(size / 4, width - size / 4))
        cy = float(rng.uniform(size / 4, height - size / 4))
        angle = float(rng.uniform(-_MAX_TILT, _MAX_TILT))
        m = _draw("square" if is_square else "circle", height, width, cx, cy, size, angle)
        return m, (is_square, square_keypoints(cx, cy, size, angle) if is_square else None)

    idmap, placed = _place_shapes(rng, img, int(rng.integers(1, max_shapes + 1)), propose)
    instances = []
    for k, (is_square, points) in enumerate(placed, start=1):
        keypoints = None
        if is_square:
            keypoints = []
            for x, y in points:
                col, row = min(int(x), width - 1), min(int(y), height - 1)
                if not (0 <= x < width and 0 <= y < height):
                    keypoints.append((0.0, 0.0, 0))  # outside the image: not labelled
                else:
                    # a corner pixel of another instance (painted later): hidden; of itself or
                    # the background (the corner's pixel may miss the rasterized square): visible
                    hidden = idmap[row, col] not in (0, k)
                    keypoints.append((round(x, 2), round(y, 2), 1 if hidden else 2))
        instances.append((is_square, idmap == k, keypoints))
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), instances


def generate_keypoint_shapes_dataset(
    out_dir: str | os.PathLike,
    num_images: int,
    *,
    image_size: tuple[int, int] = (128, 128),
    seed: int = 0,
    max_shapes: int = 3,
    size_range: tuple[float, float] = (28.0, 60.0),
) -> Path:
    """Write the dataset (`out_dir/images/*.png`, `out_dir/annotations.json`) and return the
    JSON's path. Category 1 "square" has the keypoints `KEYPOINT_NAMES` and `KEYPOINT_SKELETON`;
    category 2 "circle" has none. Masks, boxes and areas as `generate_shapes_dataset`."""
    height, width = image_size
    if num_images < 0 or max_shapes < 1 or min(height, width) < 2 * size_range[0]:
        raise ValueError("need num_images >= 0, max_shapes >= 1 and images at least twice the smallest shape")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image_id = i + 1
        pixels, instances = _render(np.random.default_rng([seed, i, 17]), height, width, max_shapes, size_range)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(image_dir / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        if not instances:
            continue
        rles = mask_utils.encode(np.asfortranarray(np.stack([m for _, m, _ in instances], -1).astype(np.uint8)))
        for (is_square, _, keypoints), rle, box, area in zip(instances, rles, mask_utils.toBbox(rles),
                                                             mask_utils.area(rles)):
            ann = {
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": SQUARE_ID if is_square else CIRCLE_ID,
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                "bbox": [float(v) for v in box], "area": float(area), "iscrowd": 0,
            }
            if is_square:
                ann["keypoints"] = [float(v) for point in keypoints for v in point]
                ann["num_keypoints"] = sum(1 for point in keypoints if point[2] > 0)
            annotations.append(ann)
    data = {
        "info": {"description": f"maskrcnn synthetic keypoint shapes, seed {seed}", "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": SQUARE_ID, "name": "square", "supercategory": "shape",
             "keypoints": list(KEYPOINT_NAMES), "skeleton": [list(e) for e in KEYPOINT_SKELETON]},
            {"id": CIRCLE_ID, "name": "circle", "supercategory": "shape"},
        ],
    }
    return write_json_atomic(data, out_dir / "annotations.json")
