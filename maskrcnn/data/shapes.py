"""Synthetic shapes: a small COCO dataset written to disk, the built-in demo and test data.

It is written as ordinary PNG files plus a COCO JSON, so the demo and the tests read it through
`CocoDataset` exactly as they would read a user's data. It is built to be learnable by a small
Mask R-CNN on a CPU in minutes: flat distinct colours per instance, hard edges, shapes 15-50 px,
occlusion limited so every annotated object stays recognizable.

Masks are occlusion-correct: shapes are painted in order and each pixel belongs to the last
shape painted over it, so instance masks are disjoint and match what is visible.
"""
from __future__ import annotations

import colorsys
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from ..io import write_json_atomic

__all__ = ["SHAPE_CLASSES", "generate_shapes_dataset", "shapes_category_ids"]

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross")
# A new shape may cover at most this fraction of an earlier shape's drawn area; past that,
# an instance can shrink to a sliver that no longer shows its class.
_MIN_VISIBLE_FRACTION = 0.55
_MIN_PIXELS = 40  # smaller visible remains are not worth a label
_PLACEMENT_TRIES = 12


def shapes_category_ids(num_classes: int) -> list[int]:
    """Category ids 1, 3, 7, 13, ...: deliberately non-contiguous, so every run of the demo
    exercises the category-id <-> label mapping that real COCO data (ids 1..90) needs."""
    return [1 + k * (k + 1) for k in range(num_classes)]


def _polygon(kind: str, cx: float, cy: float, size: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of extent ~`size` px centred at (cx, cy), rotated by `angle` rad."""
    if kind == "square":
        # keep the rotated square's bounding extent ~size: side = size / (|cos a| + |sin a|)
        side = size / (abs(math.cos(angle)) + abs(math.sin(angle)))
        r = side / math.sqrt(2)
        pts = [(r, math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif kind == "triangle":
        r = size / 2 * 1.08
        pts = [(r, -math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
    elif kind == "star":
        pts = [(size / 2 if k % 2 == 0 else size / 4.6, -math.pi / 2 + k * math.pi / 5) for k in range(10)]
    elif kind == "cross":
        a, b = size / 2, size / 6.5  # arm half-length and half-width
        corners = [(b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b),
                   (-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b)]
        pts = [(math.hypot(x, y), math.atan2(y, x)) for x, y in corners]
    else:
        raise ValueError(f"unknown shape {kind!r}; choose from {SHAPE_CLASSES}")
    return [(cx + r * math.cos(t + angle), cy + r * math.sin(t + angle)) for r, t in pts]


def _draw(kind: str, height: int, width: int, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Rasterize one shape: bool (H, W)."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        draw.ellipse([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], fill=1)
    else:
        draw.polygon(_polygon(kind, cx, cy, size, angle), fill=1)
    return np.asarray(canvas, dtype=bool)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 (H, W, 3): dull colour, plain or with a gradient and fine noise. Low saturation
    and brightness keep it apart from the saturated, bright shapes."""
    hue, sat, val = rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.08, 0.45)
    base = np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32)
    img = np.broadcast_to(base, (height, width, 3)).copy()
    if rng.random() < 0.5:  # textured: linear gradient + pixel noise
        gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
        direction = rng.uniform(0, 2 * math.pi)
        ramp = (gx * math.cos(direction) + gy * math.sin(direction)) / max(height, width)
        img += (ramp * rng.uniform(-0.15, 0.15))[..., None]
        img += rng.normal(0.0, 0.025, size=img.shape).astype(np.float32)
    return img


def _instance_color(rng: np.random.Generator, used_hues: list[float]) -> tuple[np.ndarray, float]:
    """A saturated, bright colour whose hue differs from the image's other instances, so
    touching shapes stay separable by colour."""
    for _ in range(20):
        hue = rng.random()
        if all(min(abs(hue - h), 1 - abs(hue - h)) > 0.08 for h in used_hues):
            break
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
    return np.array(rgb, dtype=np.float32), hue


def _place_shapes(
    rng: np.random.Generator, img: np.ndarray, count: int, propose: Callable[[], tuple[np.ndarray, Any]],
) -> tuple[np.ndarray, list]:
    """Paint up to `count` shapes onto `img` ((H, W, 3) float, in place), one after another.

    `propose()` draws one candidate: (bool (H, W) mask, a record for the caller). A candidate is
    kept if it has _MIN_PIXELS and every earlier shape keeps enough of its pixels visible with
    it on top; else another is drawn, up to _PLACEMENT_TRIES times. A kept shape gets a colour
    whose hue is apart from the others'. Returns the id map (0 = background, k = the k-th kept
    shape) and the kept shapes' records. Shared by the shapes and the keypoint-shapes data."""
    idmap = np.zeros(img.shape[:2], dtype=np.int32)
    drawn_area: list[int] = [0]
    records: list = []
    hues: list[float] = []
    for _ in range(count):
        for _ in range(_PLACEMENT_TRIES):
            m, record = propose()
            area = int(m.sum())
            if area < _MIN_PIXELS:
                continue
            # visible pixels of every earlier instance if this shape goes on top
            left = np.bincount(idmap[~m], minlength=len(drawn_area))[1:]
            if np.all(left >= np.maximum(_MIN_VISIBLE_FRACTION * np.array(drawn_area[1:]), _MIN_PIXELS)):
                color, hue = _instance_color(rng, hues)
                hues.append(hue)
                idmap[m] = len(drawn_area)
                img[m] = color
                drawn_area.append(area)
                records.append(record)
                break
    return idmap, records


def _render(
    rng: np.random.Generator, height: int, width: int, classes: Sequence[str],
    max_shapes: int, size_range: tuple[float, float], empty: bool,
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image: uint8 (H, W, 3) and [(class index, bool (H, W) visible mask)]."""
    img = _background(rng, height, width)
    background = img.copy()
    lo, hi = size_range[0], min(size_range[1], min(height, width) - 2)

    def propose() -> tuple[np.ndarray, int]:
        cls = int(rng.integers(len(classes)))
        size = float(rng.uniform(lo, hi))
        # up to a quarter of a shape may leave the frame: objects cut by the border are real
        cx = float(rng.uniform(size / 4, width - size / 4))
        cy = float(rng.uniform(size / 4, height - size / 4))
        return _draw(classes[cls], height, width, cx, cy, size, float(rng.uniform(0, 2 * math.pi))), cls

    idmap, kinds = _place_shapes(rng, img, 0 if empty else int(rng.integers(1, max_shapes + 1)), propose)
    instances = []
    for k, cls in enumerate(kinds, start=1):
        m = idmap == k
        if m.sum() < _MIN_PIXELS:  # cannot happen with the placement rule; kept as a guard
            img[m] = background[m]  # repaint, so no unlabeled object remains in the image
            continue
        instances.append((cls, m))
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), instances


def generate_shapes_dataset(
    out_dir: str | os.PathLike,
    num_images: int,
    *,
    image_size: tuple[int, int] = (128, 128),
    seed: int = 0,
    classes: Sequence[str] = ("circle", "square", "triangle"),
    max_shapes: int = 4,
    size_range: tuple[float, float] = (15.0, 50.0),
    empty_fraction: float = 0.05,
) -> Path:
    """Write a synthetic COCO instance-segmentation dataset and return its JSON path.

    Layout: `out_dir/images/000001.png ...` and `out_dir/annotations.json`, with image ids
    1..num_images, annotation ids from 1, category ids from `shapes_category_ids` (1, 3, 7, ...),
    masks as compressed RLE with `bbox` [x, y, w, h] and `area` computed from the mask itself.
    About `empty_fraction` of the images have no shapes (negatives, as real data has).

    Args:
        image_size: (H, W) of every image.
        seed: the same seed gives byte-identical files; image i depends only on (seed, i).
        classes: shape names from `SHAPE_CLASSES`; a shape's class is its form, never its
            colour (colours are random per instance).
        max_shapes: 1..max_shapes shapes are attempted per non-empty image.
        size_range: shape extent in pixels.

    >>> ann = generate_shapes_dataset("/tmp/shapes", 200, seed=0)   # doctest: +SKIP
    >>> ds = CocoDataset(ann, ann.parent / "images")                  # doctest: +SKIP
    """
    classes = tuple(classes)
    unknown = [c for c in classes if c not in SHAPE_CLASSES]
    if unknown or not classes:
        raise ValueError(f"unknown shape classes {unknown}; choose from {SHAPE_CLASSES}")
    height, width = image_size
    if num_images < 0 or max_shapes < 1 or min(height, width) < 2 * size_range[0]:
        raise ValueError("need num_images >= 0, max_shapes >= 1 and images at least twice the smallest shape")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    cat_ids = shapes_category_ids(len(classes))

    images, annotations = [], []
    for i in range(num_images):
        image_id = i + 1
        rng = np.random.default_rng([seed, i])
        empty = bool(rng.random() < empty_fraction)
        pixels, instances = _render(rng, height, width, classes, max_shapes, size_range, empty)
        file_name = f"{image_id:06d}.png"
        # compress_level=1: ~5x faster than the default and only ~10 % bigger for flat shapes
        Image.fromarray(pixels).save(image_dir / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        if not instances:
            continue
        # (H, W, N) Fortran-ordered uint8 is what pycocotools encodes in one call
        stack = np.asfortranarray(np.stack([m for _, m in instances], axis=-1).astype(np.uint8))
        rles = mask_utils.encode(stack)
        boxes = mask_utils.toBbox(rles)
        areas = mask_utils.area(rles)
        for (cls, _), rle, box, area in zip(instances, rles, boxes, areas):
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat_ids[cls],
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                "bbox": [float(v) for v in box],
                "area": float(area),
                "iscrowd": 0,
            })
    data = {
        "info": {"description": f"maskrcnn synthetic shapes, seed {seed}", "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(cat_ids, classes)
        ],
    }
    return write_json_atomic(data, out_dir / "annotations.json")
