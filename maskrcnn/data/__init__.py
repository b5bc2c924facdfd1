"""Data: COCO datasets, augmentations, the synthetic shapes dataset and format converters.

Image reading, atomic writes and Kaggle run-length codes live in `maskrcnn.io`; `DataError`,
`load_image` and `write_json_atomic` are exported here too, as the data API has always had them.

    from maskrcnn.data import CocoDataset, collate_fn, generate_shapes_dataset
    ann = generate_shapes_dataset("shapes", 200, seed=0)
    ds = CocoDataset(ann, ann.parent / "images", transforms=RandomHorizontalFlip(0.5))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_fn)
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from .coco import BOX_TOLERANCE, CocoDataset, read_coco_json
from ..io import DataError, load_image, write_json_atomic
from .convert import ConversionResult, convert_main, labelme_to_coco, mask_pngs_to_coco, rle_csv_to_coco
from .shapes import SHAPE_CLASSES, generate_shapes_dataset, shapes_category_ids
from .keypoint_shapes import generate_keypoint_shapes_dataset
from .transforms import Compose, RandomHorizontalFlip, ResizeShortestEdge, hflip, resize


def collate_fn(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """[(image, target), ...] -> ([image, ...], [target, ...]). Images keep their own sizes;
    the model pads them into one batch tensor."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


__all__ = [
    "BOX_TOLERANCE", "CocoDataset", "Compose", "ConversionResult", "DataError", "RandomHorizontalFlip",
    "ResizeShortestEdge", "SHAPE_CLASSES", "collate_fn", "convert_main", "generate_keypoint_shapes_dataset",
    "generate_shapes_dataset",
    "hflip", "labelme_to_coco", "load_image", "mask_pngs_to_coco", "read_coco_json", "resize",
    "rle_csv_to_coco", "shapes_category_ids", "write_json_atomic",
]
