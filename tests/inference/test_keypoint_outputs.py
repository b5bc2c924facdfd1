"""Keypoints in the outputs: COCO results, Result, overlays with the skeleton, and the synthetic
keypoint shapes data."""
import numpy as np
import pytest
import torch

from maskrcnn.data import CocoDataset, hflip
from maskrcnn.data.keypoint_shapes import KEYPOINT_NAMES, generate_keypoint_shapes_dataset
from maskrcnn.inference.api import Result
from maskrcnn.inference.draw import class_colors, draw_instances
from maskrcnn.inference.outputs import to_coco_results

KP = torch.tensor([[[10.0, 10.0, 1.0], [30.0, 10.0, 1.0], [20.0, 30.0, 0.0]]])


def test_coco_results_carry_flat_keypoints():
    r = to_coco_results(3, torch.tensor([[5.0, 5.0, 35.0, 35.0]]), torch.tensor([0.7]), torch.tensor([1]), keypoints=KP)
    assert r[0]["keypoints"] == [10.0, 10.0, 1.0, 30.0, 10.0, 1.0, 20.0, 30.0, 0.0]
    assert r[0]["score"] == pytest.approx(0.7)
    assert to_coco_results(3, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                           keypoints=torch.zeros(0, 3, 3)) == []  # an image without detections
    with pytest.raises(ValueError, match=r"expected \(1, P, 3\) keypoints"):
        to_coco_results(3, torch.tensor([[5.0, 5.0, 35.0, 35.0]]), torch.tensor([0.7]), torch.tensor([1]),
                        keypoints=KP[:, :, :2])


def test_overlay_draws_keypoints_and_skeleton_in_the_instance_color():
    image = np.zeros((40, 40, 3), np.uint8)
    out = np.asarray(draw_instances(image, torch.tensor([[5.0, 5.0, 35.0, 35.0]]), torch.tensor([1]),
                                    keypoints=KP, skeleton=[[1, 2], [2, 3]], show_boxes=False, show_labels=False))
    color = class_colors([1])[0]  # label 1: colours follow the class
    assert (out[10, 20] == color).all()  # on the line 1-2
    assert out[10, 10].any() and out[10, 30].any()  # the dots
    assert not out[30, 20].any() and not out[20, 25].any()  # keypoint 3 has v = 0: no dot, no line 2-3
    with pytest.raises(ValueError, match=r"expected keypoints of shape \(1, P, 3\)"):
        draw_instances(image, torch.tensor([[5.0, 5.0, 35.0, 35.0]]), torch.tensor([1]), keypoints=KP[0])


def test_result_to_coco_and_draw_use_the_keypoints():
    result = Result(boxes=torch.tensor([[5.0, 5.0, 35.0, 35.0]]), scores=torch.tensor([0.9]), labels=torch.tensor([1]),
                    class_names=["square"], masks=None, image_size=(40, 40), image=torch.zeros(3, 40, 40),
                    keypoints=KP, keypoint_scores=torch.zeros(1, 3), skeleton=[[1, 2]])
    assert result.to_coco(1)[0]["keypoints"][:3] == [10.0, 10.0, 1.0]
    assert np.asarray(result.draw(show_boxes=False, show_labels=False))[10, 20].any()


def test_keypoint_shapes_dataset_keypoints_sit_on_the_squares(tmp_path):
    ann = generate_keypoint_shapes_dataset(tmp_path / "kp", 12, seed=3)
    ds = CocoDataset(ann, ann.parent / "images")
    assert ds.keypoint_names == KEYPOINT_NAMES and ds.keypoint_flip == [1, 0, 3, 2, 4]
    squares = circles = 0
    for index in range(len(ds)):
        image, target = ds[index]
        for label, kp, mask in zip(target["labels"], target["keypoints"], target["masks"]):
            if ds.class_names[label - 1] == "circle":
                circles += 1
                assert not kp.any()
                continue
            squares += 1
            visible = kp[kp[:, 2] == 2]
            ys, xs = torch.nonzero(mask, as_tuple=True)
            pixels = torch.stack([xs, ys], 1).float() + 0.5
            # a visible keypoint is on its square: within 1.5 px of one of its mask's pixels
            nearest = torch.cdist(visible[:, :2], pixels).min(dim=1).values
            assert (nearest <= 1.5).all(), (index, kp)
            # left above-or-beside right, top above bottom (tilt <= 30 degrees)
            if (kp[:4, 2] > 0).all():
                assert kp[0, 0] < kp[1, 0] and kp[3, 0] < kp[2, 0] and kp[0, 1] < kp[3, 1]
    assert squares >= 5 and circles >= 1
    # a flip keeps the names true: the flipped left_top is again left of the flipped right_top
    _, flipped = hflip(*ds[0])
    kp = flipped["keypoints"][flipped["labels"] == 1]
    both = (kp[:, 0, 2] > 0) & (kp[:, 1, 2] > 0)
    assert (kp[both, 0, 0] < kp[both, 1, 0]).all()
