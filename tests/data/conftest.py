"""Helpers that build tiny COCO datasets on disk for the data tests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


def write_coco(
    root: Path,
    images: list[tuple[int, str, np.ndarray]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]] | None = None,
) -> Path:
    """Write `root/images/*` and `root/annotations.json`; images: (id, file_name, uint8 (H, W, 3))."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for image_id, name, pixels in images:
        Image.fromarray(pixels).save(root / "images" / name)
        entries.append({"id": image_id, "file_name": name, "height": pixels.shape[0], "width": pixels.shape[1]})
    data = {
        "images": entries,
        "annotations": annotations,
        "categories": categories or [{"id": 1, "name": "thing"}],
    }
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def ann(aid: int, image_id: int, segmentation: Any, bbox: list[float], category_id: int = 1, **extra: Any) -> dict:
    return {"id": aid, "image_id": image_id, "category_id": category_id, "segmentation": segmentation,
            "bbox": bbox, "area": float(bbox[2] * bbox[3]), "iscrowd": 0, **extra}


def box_of_mask(mask) -> list[float]:
    """xyxy pixel-edge box of a (H, W) mask: [min col, min row, max col + 1, max row + 1]."""
    ys, xs = np.nonzero(np.asarray(mask))
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def square_ann():
    """An annotation factory for a valid 10x10 polygon square at (x, y) on image `image_id`."""
    def make(aid: int, image_id: int, x: float = 5, y: float = 5, **extra: Any) -> dict:
        poly = [[x, y, x + 10, y, x + 10, y + 10, x, y + 10]]
        return ann(aid, image_id, poly, [x, y, 10, 10], **extra)
    return make
