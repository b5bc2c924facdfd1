"""Confusion matrix of detections against ground truth, by IoU matching at a score threshold.

    matrix, names = confusion_matrix(coco_gt, results, score_threshold=0.5, iou_threshold=0.5)

Rows are the true class, columns the predicted class, both in category-id order, with one
more row and column, "background", last: row "background" counts detections that match no
object (false positives), column "background" counts objects no detection matched (missed).
The diagonal holds the correct detections; everything else off it is a confusion.

Matching, per image: detections scoring >= score_threshold, best score first, each take the
still unmatched object of ANY class with the highest IoU, if that IoU is >= iou_threshold
(class-agnostic, so a triangle detected as a circle lands in row triangle, column circle;
Ultralytics' matrix counts the same way). Crowd regions (iscrowd=1) are no objects to find: a
detection covering one (COCO's crowd IoU >= iou_threshold) is neither right nor wrong and is
not counted, as COCOeval ignores it.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO

__all__ = ["confusion_matrix"]


def confusion_matrix(
    coco_gt: COCO,
    results: Sequence[dict],
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    iou_type: str = "bbox",
    image_ids: Sequence[int] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """int64 (K + 1, K + 1) counts and the K + 1 row/column names (category names, then
    "background"). results: COCO results entries ("image_id", "category_id", "score", and
    "bbox" or, for iou_type="segm", "segmentation"). image_ids: the images to count (default:
    every image of coco_gt)."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    cat_ids = sorted(coco_gt.getCatIds())
    index = {cid: k for k, cid in enumerate(cat_ids)}
    background = len(cat_ids)
    names = [str(coco_gt.cats[c].get("name", c)) for c in cat_ids] + ["background"]
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    by_image: dict = defaultdict(list)
    for r in results:
        if r["score"] >= score_threshold:
            if r["category_id"] not in index:
                raise ValueError(f"a result has category_id {r['category_id']}, which the ground truth does not "
                                 f"have (its ids: {cat_ids})")
            by_image[r["image_id"]].append(r)
    for image_id in (coco_gt.getImgIds() if image_ids is None else image_ids):
        gts = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
        objects = [g for g in gts if not g.get("iscrowd", 0)]
        crowds = [g for g in gts if g.get("iscrowd", 0)]
        dets = sorted(by_image.get(image_id, []), key=lambda r: -r["score"])
        iou = _iou(coco_gt, dets, objects, iou_type, crowd=False)
        crowd_iou = _iou(coco_gt, dets, crowds, iou_type, crowd=True)
        matched = np.zeros(len(objects), dtype=bool)
        for d, det in enumerate(dets):
            pred = index[det["category_id"]]
            candidates = np.where(matched, -1.0, iou[d]) if len(objects) else np.zeros(0)
            best = int(np.argmax(candidates)) if candidates.size else -1
            if best >= 0 and candidates[best] >= iou_threshold:
                matched[best] = True
                matrix[index[objects[best]["category_id"]], pred] += 1
            elif len(crowds) and crowd_iou[d].max() >= iou_threshold:
                continue  # on a crowd region: ignored
            else:
                matrix[background, pred] += 1
        for g, obj in enumerate(objects):
            if not matched[g]:
                matrix[index[obj["category_id"]], background] += 1
    return matrix, names


def _iou(coco_gt: COCO, dets: list[dict], gts: list[dict], iou_type: str, *, crowd: bool) -> np.ndarray:
    """(D, G) IoU by pycocotools (for crowd regions: the part of the detection inside it)."""
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    if iou_type == "bbox":
        d = [r["bbox"] for r in dets]
        g = [a["bbox"] for a in gts]
    else:
        d = [r["segmentation"] for r in dets]
        g = [coco_gt.annToRLE(a) for a in gts]
    return np.asarray(mask_util.iou(d, g, [int(crowd)] * len(gts)), dtype=np.float64).reshape(len(dets), len(gts))
