"""COCOEvaluator against pycocotools' COCOeval run directly on the same detections."""
import contextlib
import copy
import io

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn.evaluation import METRICS, COCOEvaluator, format_results
from maskrcnn.structures import Detections

CATEGORY_IDS = [2, 5, 9]  # non-contiguous on purpose: labels 1, 2, 3 must map back to these
NAMES = ["ring", "box", "blob"]
SIZES = {1: (120, 160), 2: (200, 220), 3: (64, 48), 4: (80, 80)}  # image id -> (H, W); 4 has no objects


def _ellipse(h, w, cy, cx, ry, rx):
    yy, xx = np.mgrid[0:h, 0:w]
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)


def make_ground_truth(rng):
    """Objects of all three COCO sizes (small < 32^2 <= medium < 96^2 <= large), one crowd region."""
    images, anns = [], []
    for image_id, (h, w) in SIZES.items():
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        if image_id == 4:
            continue
        for _ in range(int(rng.integers(3, 6))):
            ry, rx = rng.uniform(3, min(h, w) / 3, size=2)
            cy, cx = rng.uniform(ry, h - ry), rng.uniform(rx, w - rx)
            m = _ellipse(h, w, cy, cx, ry, rx)
            if m.sum() < 4:
                continue
            anns.append((image_id, int(rng.integers(3)), m, 0))
    h, w = SIZES[2]
    anns.append((2, 0, _ellipse(h, w, 150, 60, 30, 40), 1))  # crowd: ignored in matching
    annotations = []
    for k, (image_id, cls, m, crowd) in enumerate(anns):
        rle = mask_util.encode(np.asfortranarray(m))
        annotations.append({
            "id": k + 1, "image_id": image_id, "category_id": CATEGORY_IDS[cls], "iscrowd": crowd,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            "area": float(mask_util.area(rle)), "bbox": [float(v) for v in mask_util.toBbox(rle)],
        })
    cats = [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, NAMES)]
    return {"images": images, "annotations": annotations, "categories": cats}, anns


def make_detections(rng, anns):
    """Per image: jittered copies of the objects (some with the wrong class), plus false positives;
    masks as float probabilities, as the model pastes them."""
    per_image = {}
    for image_id, (h, w) in SIZES.items():
        boxes, scores, labels, masks = [], [], [], []
        objects = [(cls, m) for i, cls, m, crowd in anns if i == image_id]
        for cls, m in objects + [(int(rng.integers(3)), None)] * 2:
            if m is None:  # false positive somewhere
                ry, rx = rng.uniform(3, 15, size=2)
                m = _ellipse(h, w, rng.uniform(ry, h - ry), rng.uniform(rx, w - rx), ry, rx)
            else:
                m = np.roll(m, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
                if rng.random() < 0.2:
                    cls = (cls + 1) % 3
            ys, xs = np.nonzero(m)
            if ys.size == 0:
                continue
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
            boxes.append(box + rng.normal(0, 1.0, size=4).astype(np.float32))
            prob = m * rng.uniform(0.55, 1.0) + (1 - m) * rng.uniform(0.0, 0.45)
            masks.append(prob.astype(np.float32))
            scores.append(float(rng.uniform(0.05, 1.0)))
            labels.append(cls + 1)
        per_image[image_id] = Detections(
            boxes=torch.tensor(np.array(boxes)).reshape(-1, 4), scores=torch.tensor(scores),
            labels=torch.tensor(labels, dtype=torch.int64),
            masks=torch.tensor(np.array(masks)).reshape(-1, h, w),
        )
    return per_image


def direct_cocoeval(gt: dict, detections: dict, iou_type: str, image_ids):
    """pycocotools on hand-built COCO results, without any of our conversion code."""
    results = []
    for image_id, det in detections.items():
        if image_id not in image_ids:
            continue
        for b, s, l, m in zip(det.boxes.numpy(), det.scores.numpy(), det.labels.numpy(), det.masks.numpy()):
            entry = {"image_id": image_id, "category_id": CATEGORY_IDS[l - 1], "score": float(s)}
            if iou_type == "bbox":
                entry["bbox"] = [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]
            else:
                # No bbox: with one, loadRes would take the area for the size split from the box.
                rle = mask_util.encode(np.asfortranarray((m >= 0.5).astype(np.uint8)))
                entry["segmentation"] = rle
            results.append(entry)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        e = COCOeval(coco, coco.loadRes(results), iou_type)
        e.params.imgIds = sorted(image_ids)
        e.evaluate()
        e.accumulate()
        e.summarize()
    per_class = []
    for k in range(len(CATEGORY_IDS)):
        p = e.eval["precision"][:, :, k, 0, -1]
        per_class.append(float(p[p > -1].mean()) if (p > -1).any() else -1.0)
    return e.stats[:6], per_class


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    gt, anns = make_ground_truth(rng)
    return gt, make_detections(rng, anns)


@pytest.mark.parametrize("image_ids", [(1, 2, 3, 4), (2, 4)])
def test_numbers_equal_direct_cocoeval(data, image_ids):
    gt, detections = data
    evaluator = COCOEvaluator(gt, label_to_category_id={k + 1: c for k, c in enumerate(CATEGORY_IDS)},
                              class_names=NAMES)
    evaluator.process([{"image_id": 999}], [detections[1]])  # cleared by reset()
    evaluator.reset()
    ids = list(image_ids)
    evaluator.process([{"image_id": i} for i in ids[:1]], [detections[i] for i in ids[:1]])
    evaluator.process(ids[1:], [detections[i] for i in ids[1:]])  # plain ids work too
    ours = evaluator.evaluate()
    for iou_type in ("bbox", "segm"):
        stats, per_class = direct_cocoeval(gt, detections, iou_type, image_ids)
        assert [ours[iou_type][m] for m in METRICS] == pytest.approx(list(stats), abs=1e-12), iou_type
        assert [ours[iou_type]["per_class"][n] for n in NAMES] == pytest.approx(per_class, abs=1e-12)
    # the case is not trivial: errors and misses show up, and on all images every size range
    assert 0.2 < ours["segm"]["AP"] < 0.95
    if len(image_ids) == len(SIZES):
        assert min(ours[t][m] for t in ("bbox", "segm") for m in ("APs", "APm", "APl")) >= 0


def test_labels_map_back_to_category_ids(data):
    gt, detections = data
    evaluator = COCOEvaluator(gt, label_to_category_id={1: 2, 2: 5, 3: 9}, iou_types=["bbox"])
    evaluator.process([1], [detections[1]])
    assert {r["category_id"] for r in evaluator.results} <= set(CATEGORY_IDS)
    assert all("segmentation" not in r for r in evaluator.results)


def test_no_detections_gives_zero_ap_and_a_table(data):
    gt, _ = data
    evaluator = COCOEvaluator(gt, label_to_category_id={1: 2, 2: 5, 3: 9})
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 120, 160))
    evaluator.process([1], [empty])
    results = evaluator.evaluate()
    assert results["segm"]["AP"] == 0.0
    table = format_results(results)
    assert "bbox" in table and "segm" in table and "ring" in table and "AP50" in table


def test_masks_are_required_for_segm(data):
    gt, detections = data
    det = detections[1]
    evaluator = COCOEvaluator(gt, label_to_category_id={1: 2, 2: 5, 3: 9})
    with pytest.raises(ValueError, match="segm evaluation needs masks"):
        evaluator.process([1], [Detections(det.boxes, det.scores, det.labels, None)])
