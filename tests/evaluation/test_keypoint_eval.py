"""Keypoint AP (OKS) through pycocotools: exact known answers, and the synthetic keypoint data."""
import math

import pytest
import torch

from maskrcnn.evaluation import COCOEvaluator, format_results
from maskrcnn.evaluation.keypoints import COCO_PERSON_SIGMAS, DEFAULT_SIGMA, keypoint_sigmas
from maskrcnn.structures import Detections

AREA = 400.0
GT_KP = [[30.0, 30.0, 2], [50.0, 40.0, 2], [40.0, 60.0, 1]]


def gt_dict():
    flat = [float(v) for p in GT_KP for v in p]
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [25, 25, 30, 40], "area": AREA, "iscrowd": 0,
             "keypoints": flat, "num_keypoints": 3, "segmentation": [[25, 25, 55, 25, 55, 65, 25, 65]]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [70, 70, 20, 20], "area": 400.0, "iscrowd": 0,
             "segmentation": [[70, 70, 90, 70, 90, 90, 70, 90]]},
        ],
        "categories": [{"id": 1, "name": "person", "keypoints": ["a", "b", "c"], "skeleton": [[1, 2]]},
                       {"id": 2, "name": "ball"}],
    }


def detection(shift: float) -> Detections:
    kp = torch.tensor([[p[0] + shift, p[1], 1.0] for p in GT_KP])
    return Detections(boxes=torch.tensor([[25.0, 25.0, 55.0, 65.0], [70.0, 70.0, 90.0, 90.0]]),
                      scores=torch.tensor([0.9, 0.8]), labels=torch.tensor([1, 2]),
                      keypoints=torch.stack([kp, torch.zeros(3, 3)]), keypoint_scores=torch.zeros(2, 3))


@pytest.mark.parametrize("oks, expected_ap", [(0.72, 0.5), (0.91, 0.9), (0.3, 0.0)])
def test_keypoint_ap_is_the_fraction_of_oks_thresholds_met(oks, expected_ap):
    # every keypoint off by d: OKS = exp(-d^2 / (2 area (2 sigma)^2)); one gt, one detection, so
    # the AP at each threshold t in 0.50:0.05:0.95 is 1 if OKS >= t, else 0
    sigma = 0.1
    d = math.sqrt(-math.log(oks) * 2 * AREA * (2 * sigma) ** 2)
    evaluator = COCOEvaluator(gt_dict(), iou_types=("bbox", "keypoints"), keypoint_sigmas=[sigma] * 3)
    evaluator.process([{"image_id": 1}], [detection(d)])
    results = evaluator.evaluate()
    assert results["keypoints"]["AP"] == pytest.approx(expected_ap, abs=1e-6)
    assert list(results["keypoints"]["per_class"]) == ["person"]  # the ball has no keypoints
    assert results["bbox"]["AP"] == pytest.approx(1.0)
    table = format_results(results)
    assert "keypoints" in table and "ball" in table


def test_default_sigmas():
    assert keypoint_sigmas(17).tolist() == COCO_PERSON_SIGMAS.tolist()
    assert keypoint_sigmas(5).tolist() == [DEFAULT_SIGMA] * 5
    with pytest.raises(ValueError, match="got 2 keypoint sigmas for 3 keypoints"):
        keypoint_sigmas(3, [0.1, 0.1])


def test_keypoint_evaluation_needs_keypoints():
    evaluator = COCOEvaluator(gt_dict(), iou_types=("keypoints",))
    det = detection(0.0)
    det.keypoints = None
    with pytest.raises(ValueError, match="needs a model with a keypoint branch"):
        evaluator.process([1], [det])
