"""Confusion matrix: a hand-counted case (matches, a class confusion, a false positive, a
miss, a crowd region, the score threshold) and its edge cases."""
import numpy as np
import pytest

from maskrcnn.evaluation import load_coco_gt
from maskrcnn.evaluation.confusion import confusion_matrix


def _gt():
    ann = lambda i, img, cat, box, crowd=0: {  # noqa: E731
        "id": i, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": crowd,
        "segmentation": [[box[0], box[1], box[0] + box[2], box[1], box[0] + box[2], box[1] + box[3],
                          box[0], box[1] + box[3]]]}
    return load_coco_gt({
        "images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 100},
                   {"id": 2, "file_name": "b.png", "height": 100, "width": 100},
                   {"id": 3, "file_name": "c.png", "height": 100, "width": 100}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],  # id order: dog (3), cat (7)
        "annotations": [ann(1, 1, 7, [0, 0, 10, 10]), ann(2, 1, 3, [20, 20, 10, 10]),
                        ann(3, 1, 7, [50, 50, 20, 20], crowd=1), ann(4, 2, 3, [0, 0, 20, 20]),
                        ann(5, 3, 7, [0, 0, 30, 30])],
    })


def _det(img, cat, box, score):
    return {"image_id": img, "category_id": cat, "bbox": box, "score": score}


DETECTIONS = [
    _det(1, 3, [52, 52, 10, 10], 0.95),  # inside the crowd region: not counted
    _det(1, 7, [0, 0, 10, 10], 0.9),     # the cat: correct
    _det(1, 3, [1, 1, 10, 10], 0.8),     # the cat again (already taken): a false "dog"
    _det(1, 7, [20, 20, 10, 10], 0.7),   # the dog, called cat: row dog, column cat
    _det(1, 3, [80, 80, 5, 5], 0.3),     # below the score threshold: not counted
    # image 2: its dog is missed (row dog, column background)
    _det(3, 7, [0, 0, 30, 30], 0.6),     # image 3: correct, but image 3 is left out below
]


def test_hand_counted_case():
    matrix, names = confusion_matrix(_gt(), DETECTIONS, score_threshold=0.5, iou_threshold=0.5, image_ids=[1, 2])
    assert names == ["dog", "cat", "background"]
    expected = np.array([
        # predicted: dog cat background      (rows: true class)
        [0, 1, 1],  # dog: one called cat, one missed
        [0, 1, 0],  # cat: found
        [1, 0, 0],  # background: one false dog
    ])
    np.testing.assert_array_equal(matrix, expected)
    # all images: image 3's correct cat is added
    full, _ = confusion_matrix(_gt(), DETECTIONS, score_threshold=0.5)
    np.testing.assert_array_equal(full, expected + np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]]))


def test_thresholds_move_counts():
    # at score 0.25 the 0.3 detection in the empty corner is one more false dog
    low, _ = confusion_matrix(_gt(), DETECTIONS, score_threshold=0.25, image_ids=[1, 2])
    assert low[2, 0] == 2
    # the exact boxes match at any IoU threshold up to 1
    strict, _ = confusion_matrix(_gt(), DETECTIONS, iou_threshold=1.0, image_ids=[1, 2])
    assert strict[1, 1] == 1 and strict[0, 1] == 1
    # at IoU 0.6 the duplicate (IoU 0.68 with the cat) would match the cat were it still free
    free, _ = confusion_matrix(_gt(), [d for d in DETECTIONS if d["score"] != 0.9], image_ids=[1])
    assert free[1, 0] == 1 and free[2].sum() == 0


def test_segm_matching_and_errors():
    gt = _gt()
    rle = lambda ann_id: gt.annToRLE(gt.anns[ann_id])  # noqa: E731
    results = [{"image_id": 1, "category_id": 7, "segmentation": rle(1), "score": 0.9},   # the cat
               {"image_id": 1, "category_id": 7, "segmentation": rle(2), "score": 0.8},   # the dog, as cat
               {"image_id": 2, "category_id": 3, "segmentation": rle(1), "score": 0.7}]   # image 2: off its dog
    matrix, _ = confusion_matrix(gt, results, iou_type="segm", image_ids=[1, 2])
    np.testing.assert_array_equal(matrix, [[0, 1, 1], [0, 1, 0], [1, 0, 0]])
    # rle(1) (0..10) against image 2's dog (0..20): IoU 0.25 -> a false dog and a missed dog
    matrix, _ = confusion_matrix(gt, results[2:], iou_type="segm", image_ids=[2])
    np.testing.assert_array_equal(matrix, [[0, 0, 1], [0, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="category_id 99"):
        confusion_matrix(gt, [_det(1, 99, [0, 0, 1, 1], 0.9)])
    with pytest.raises(ValueError, match="iou_type"):
        confusion_matrix(gt, [], iou_type="keypoints")
