"""Output formats for predictions: COCO results JSON, label-map PNGs and Kaggle RLE CSVs.

Inputs follow the model's result contract for one image (shape shorthand: R detections,
H x W the original image size):
    boxes  float (R, 4) xyxy pixels     scores float (R,)     labels int64 (R,), 1..K-1
    masks  bool (R, H, W), or float probabilities (R, H, W) binarized with `>= mask_threshold`
Tensors (any device) and numpy arrays are both accepted.

Two run-length encodings appear here and are not interchangeable:
  - COCO RLE (`mask_to_rle`): pycocotools' compressed string, {"size": [H, W], "counts": str};
    what COCO results JSON and pycocotools' evaluation read.
  - Kaggle RLE (`maskrcnn.io.encode_kaggle_rle`): "start length start length ...", 1-based
    starts over the column-major (top-to-bottom, then left-to-right) pixel order, as in the Data
    Science Bowl 2018 and Airbus Ship Detection competitions; the CSV reader and writer here.

Every writer goes through `maskrcnn.io`'s atomic writers: a crash leaves the previous file (or
none), never a truncated one.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image
from torch import Tensor

from ..io import atomic_open, atomic_write, decode_kaggle_rle, encode_kaggle_rle, read_text, write_json_atomic
from ..ops.masks import chunk_ranges
from .colors import label_map_palette

__all__ = [
    "KAGGLE_CSV_HEADER",
    "label_map",
    "mask_to_rle",
    "masks_to_rles",
    "read_rle_csv",
    "rle_to_mask",
    "to_coco_results",
    "write_coco_json",
    "write_image",
    "write_label_map_png",
    "write_rle_csv",
]

ArrayLike = Union[Tensor, np.ndarray]
KAGGLE_CSV_HEADER = ("ImageId", "EncodedPixels")


def _to_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _binarize(masks: np.ndarray, mask_threshold: float) -> np.ndarray:
    # `>=` as detectron2's paste does; bool masks pass through untouched
    return masks if masks.dtype == np.bool_ else masks >= mask_threshold


# ---------------------------------------------------------------------------------------------
# COCO RLE


def mask_to_rle(mask: ArrayLike, *, mask_threshold: float = 0.5) -> dict:
    """bool (H, W) mask -> COCO compressed RLE {"size": [H, W], "counts": str} (JSON-ready)."""
    m = _binarize(_to_numpy(mask), mask_threshold)
    if m.ndim != 2:
        raise ValueError(f"mask_to_rle takes one (H, W) mask, got shape {m.shape}")
    return masks_to_rles(m[None])[0]


def masks_to_rles(masks: ArrayLike, *, mask_threshold: float = 0.5) -> list[dict]:
    """bool (R, H, W) masks -> R COCO compressed RLEs, encoded a chunk of masks per pycocotools
    call (its (H, W, R) uint8 Fortran-order input is a copy: for all masks of a 50 MP image at
    once, 1 GB)."""
    m = _binarize(_to_numpy(masks), mask_threshold)
    if m.ndim != 3:
        raise ValueError(f"masks_to_rles takes (R, H, W) masks, got shape {m.shape}")
    rles = []
    for part in chunk_ranges(m.shape[0], m.shape[1] * m.shape[2]):
        # pycocotools wants (H, W, R) uint8 in Fortran order (it scans columns)
        rles += mask_util.encode(np.asfortranarray(m[part].transpose(1, 2, 0), dtype=np.uint8))
    return [
        {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        for rle in rles
    ]


def rle_to_mask(rle: Mapping) -> np.ndarray:
    """COCO RLE (compressed counts as str or bytes, or uncompressed counts as a list of ints)
    -> bool (H, W) mask."""
    height, width = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        coded = mask_util.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        coded = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_util.decode(coded).astype(bool)


def _category_lookup(category_ids: Mapping | Sequence | None):
    if category_ids is None:
        return lambda label: label
    if isinstance(category_ids, Mapping):
        def lookup(label: int) -> int:
            if label not in category_ids:
                raise KeyError(f"label {label} has no entry in category_ids (knows {sorted(category_ids)})")
            return int(category_ids[label])
        return lookup

    def lookup_seq(label: int) -> int:
        if not 0 <= label < len(category_ids):
            raise KeyError(f"label {label} is outside category_ids (length {len(category_ids)})")
        return int(category_ids[label])
    return lookup_seq


def to_coco_results(
    image_id: Any,
    boxes: ArrayLike,
    scores: ArrayLike,
    labels: ArrayLike,
    masks: ArrayLike | None = None,
    category_ids: Mapping | Sequence | None = None,
    *,
    mask_threshold: float = 0.5,
    keypoints: ArrayLike | None = None,
) -> list[dict]:
    """One image's detections -> COCO results entries (the format `COCO.loadRes` reads).

    Each entry: {"image_id", "category_id", "bbox": [x, y, w, h], "score"} plus, when masks
    are given, "segmentation" (compressed RLE, counts as str) and "area" (mask pixel count);
    when keypoints (R, P, 3) are given, "keypoints" [x1, y1, v1, ...] (COCO's keypoint results;
    the score is the box's, as torchvision's and Detectron2's evaluations use).
    category_ids maps a model label to a COCO category id (a dict, or a sequence indexed by
    label); None keeps the label. Note: pycocotools' loadRes recomputes "area" from "bbox"
    whenever a bbox is present, so a mask evaluation that wants mask areas for the
    small/medium/large split must drop "bbox" first (as detectron2's evaluator does).

        >>> r = to_coco_results(7, torch.tensor([[1., 2., 4., 6.]]), torch.tensor([.9]),
        ...                     torch.tensor([1]))
        >>> r[0]["bbox"], r[0]["category_id"]
        ([1.0, 2.0, 3.0, 4.0], 1)
    """
    boxes_np = _to_numpy(boxes).astype(np.float64).reshape(-1, 4)  # float64: x2 - x1 exact in JSON
    scores_np = _to_numpy(scores).astype(np.float64).reshape(-1)
    labels_np = _to_numpy(labels).astype(np.int64).reshape(-1)
    num = boxes_np.shape[0]
    if not scores_np.shape[0] == labels_np.shape[0] == num:
        raise ValueError(f"got {num} boxes, {scores_np.shape[0]} scores and {labels_np.shape[0]} labels")
    rles = areas = None
    if masks is not None:
        masks_np = _binarize(_to_numpy(masks), mask_threshold)
        if masks_np.ndim != 3 or masks_np.shape[0] != num:
            raise ValueError(f"expected ({num}, H, W) masks, got shape {masks_np.shape}")
        rles = masks_to_rles(masks_np)
        areas = masks_np.sum(axis=(1, 2))
    keypoints_np = None
    if keypoints is not None:
        keypoints_np = _to_numpy(keypoints).astype(np.float64)
        if keypoints_np.ndim != 3 or keypoints_np.shape[0] != num or keypoints_np.shape[2] != 3:
            raise ValueError(f"expected ({num}, P, 3) keypoints, got shape {keypoints_np.shape}")
        keypoints_np = keypoints_np.reshape(num, keypoints_np.shape[1] * 3)
    if isinstance(image_id, (np.generic, Tensor)):
        image_id = image_id.item()
    category_of = _category_lookup(category_ids)
    xywh = np.concatenate([boxes_np[:, :2], boxes_np[:, 2:] - boxes_np[:, :2]], axis=1)
    results = []
    for i in range(num):
        entry = {
            "image_id": image_id,
            "category_id": category_of(int(labels_np[i])),
            "bbox": [float(v) for v in xywh[i]],
            "score": float(scores_np[i]),
        }
        if rles is not None:
            entry["segmentation"] = rles[i]
            entry["area"] = int(areas[i])
        if keypoints_np is not None:
            entry["keypoints"] = [float(v) for v in keypoints_np[i]]
        results.append(entry)
    return results


# ---------------------------------------------------------------------------------------------
# Label map


def label_map(masks: ArrayLike, scores: ArrayLike, *, mask_threshold: float = 0.5) -> ArrayLike:
    """Combine (R, H, W) masks into one int32 (H, W) map: 0 = background, i + 1 = detection i.

    Where masks overlap, the pixel goes to the highest-scoring instance covering it; equal
    scores go to the lower index. Returns a tensor (on the masks' device) for tensor masks, a
    numpy array for numpy masks.
    """
    as_numpy = not isinstance(masks, Tensor)
    m = torch.as_tensor(masks)
    if m.dtype != torch.bool:
        m = m >= mask_threshold
    s = torch.as_tensor(scores, device=m.device).reshape(-1)
    if m.ndim != 3 or m.shape[0] != s.shape[0]:
        raise ValueError(f"expected (R, H, W) masks and (R,) scores, got {tuple(m.shape)} and {tuple(s.shape)}")
    num, height, width = m.shape
    if num == 0:
        out = torch.zeros((height, width), dtype=torch.int32, device=m.device)
    else:
        order = torch.sort(s, descending=True, stable=True).indices  # stable: ties keep index order
        # Painted from the worst-ranked to the best, so the best-ranked covering instance is
        # written last; in place, one mask at a time (a rank-ordered copy of all masks was as
        # large as the masks themselves: 1 GB for 20 on a 50 MP image).
        out = torch.zeros((height, width), dtype=torch.int32, device=m.device)
        for i in reversed(order.tolist()):
            out.masked_fill_(m[i], i + 1)
    return out.cpu().numpy() if as_numpy else out


# ---------------------------------------------------------------------------------------------
# Writers


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, Tensor)) and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, (np.ndarray, Tensor)):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("ascii")  # RLE counts straight from pycocotools
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_coco_json(path: str | os.PathLike, results: Iterable[dict]) -> Path:
    """Write COCO results (a list of dicts, e.g. from `to_coco_results`) as compact JSON."""
    return write_json_atomic(list(results), path, default=_json_default, separators=(",", ":"))


def write_label_map_png(path: str | os.PathLike, label_map: ArrayLike) -> Path:
    """Write an (H, W) integer label map as a PNG that shows the instances in colour and keeps
    the ids as pixel values: up to 255 instances a palette PNG (mode "P": pixel value = id,
    0 black background, id i in the i-th instance colour of `colors.instance_colors`), more
    than that 16-bit grayscale (values above 65535 are refused). Read the ids back with
    `np.asarray(Image.open(path))` in both cases."""
    lm = _to_numpy(label_map)
    if lm.ndim != 2 or not np.issubdtype(lm.dtype, np.integer):
        raise ValueError(f"label map must be an integer (H, W) array, got {lm.dtype} {lm.shape}")
    low, top = (int(lm.min()), int(lm.max())) if lm.size else (0, 0)
    if low < 0 or top > 65535:
        raise ValueError(f"label map values must lie in 0..65535, found {low}..{top}")
    if top <= 255:
        image = Image.fromarray(lm.astype(np.uint8))  # mode L; the palette makes it P, same values
        image.putpalette(label_map_palette())
    else:
        image = Image.fromarray(lm.astype(np.uint16))  # mode I;16
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def write_image(path: str | os.PathLike, image: Image.Image, **save_kwargs: Any) -> Path:
    """Save a PIL image (e.g. an overlay from `draw_instances`) atomically; the format comes
    from the file extension."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:  # refuse before creating anything
        raise ValueError(f"{path}: unknown image extension {path.suffix!r}")
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **save_kwargs))


def _encodings(masks: ArrayLike | None) -> list[str]:
    if masks is None:
        return [""]
    m = _binarize(_to_numpy(masks), 0.5)
    if m.ndim == 2:
        return [encode_kaggle_rle(m)]
    if m.ndim != 3:
        raise ValueError(f"expected an (H, W) mask or (R, H, W) masks, got shape {m.shape}")
    encoded = [encode_kaggle_rle(one) for one in m if one.any()]
    return encoded or [""]


def write_rle_csv(path: str | os.PathLike, rows: Iterable[tuple[Any, ArrayLike | None]]) -> int:
    """Write a Kaggle-style submission CSV: header "ImageId,EncodedPixels", one row per instance.

    rows yields (image_id, masks) where masks is
      - bool (H, W): one row, written as given ("" if the mask is empty);
      - bool (R, H, W): one row per non-empty mask, or a single row with empty EncodedPixels
        when none is left (Kaggle's "no object in this image");
      - None: a single empty row.
    Float masks are binarized at 0.5. Rows stream to the file, so a generator over a whole
    data set works. Returns the number of data rows written.
    """
    count = 0
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(KAGGLE_CSV_HEADER)
        for image_id, masks in rows:
            for encoded in _encodings(masks):
                writer.writerow([image_id, encoded])
                count += 1
    return count


def read_rle_csv(
    path: str | os.PathLike, shapes: tuple[int, int] | Mapping[str, tuple[int, int]]
) -> dict[str, np.ndarray]:
    """Read a Kaggle RLE CSV back: {image_id (str): bool (R, H, W) masks}, in file order.

    shapes: one (H, W) for every image, or a mapping image_id -> (H, W). An image whose only
    row has empty EncodedPixels maps to a (0, H, W) array. Errors name the file and line.
    """
    per_image: dict[str, list[np.ndarray]] = {}
    # read_text: a byte-order mark (spreadsheet programs write one) picks UTF-8/16/32; other
    # encodings are refused by name (DataError, a ValueError) instead of a UnicodeDecodeError
    text = read_text(path, what="RLE CSV file")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header[:2]) != KAGGLE_CSV_HEADER:
        raise ValueError(f"{path}: expected the header 'ImageId,EncodedPixels', got {header!r}")
    for row in reader:
        if not row:
            continue
        where = f"{path}, line {reader.line_num}"
        image_id, encoded = row[0], (row[1] if len(row) > 1 else "")
        if isinstance(shapes, Mapping):
            if image_id not in shapes:
                raise ValueError(f"{where}: no shape given for image {image_id!r}")
            shape = shapes[image_id]
        else:
            shape = shapes
        masks = per_image.setdefault(image_id, [])
        try:
            if encoded.strip():
                masks.append(decode_kaggle_rle(encoded, shape))
        except ValueError as e:
            raise ValueError(f"{where}, image {image_id!r}: {e}") from None
    result = {}
    for image_id, masks in per_image.items():
        shape = shapes[image_id] if isinstance(shapes, Mapping) else shapes
        result[image_id] = np.stack(masks) if masks else np.zeros((0, *shape), dtype=bool)
    return result
