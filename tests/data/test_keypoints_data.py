"""COCO person-keypoints JSON in CocoDataset: parsing, validation errors, flips that swap sides."""
import numpy as np
import pytest
import torch

from maskrcnn.data import CocoDataset, DataError, hflip, resize
from maskrcnn.ops.keypoints import flip_indices

from .conftest import ann, write_coco

NAMES = ["nose", "left_eye", "right_eye", "left_hand", "right_hand"]
PERSON = {"id": 1, "name": "person", "keypoints": NAMES, "skeleton": [[1, 2], [1, 3], [4, 5]]}
BALL = {"id": 2, "name": "ball"}


def square(x, y, s):
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def person_ann(aid, keypoints, **extra):
    labelled = sum(1 for v in keypoints[2::3] if v > 0)
    return ann(aid, 1, square(10, 10, 30), [10, 10, 30, 30], keypoints=keypoints, num_keypoints=labelled, **extra)


GOOD_KP = [20, 15, 2, 15, 12, 2, 25, 12, 1, 0, 0, 0, 38, 35, 2]


def dataset(tmp_path, anns, categories=(PERSON, BALL), **kwargs):
    pixels = np.zeros((48, 64, 3), np.uint8)
    path = write_coco(tmp_path, [(1, "a.png", pixels)], anns, list(categories))
    return CocoDataset(path, tmp_path / "images", **kwargs)


def test_keypoints_names_skeleton_and_targets(tmp_path):
    ds = dataset(tmp_path, [person_ann(5, GOOD_KP), ann(6, 1, square(40, 5, 10), [40, 5, 10, 10], category_id=2)])
    assert ds.keypoint_names == NAMES and ds.keypoint_skeleton == [[1, 2], [1, 3], [4, 5]]
    assert ds.keypoint_flip == [0, 2, 1, 4, 3]
    _, target = ds[0]
    kp = target["keypoints"]
    assert kp.dtype == torch.float32 and kp.shape == (2, 5, 3)
    assert torch.equal(kp[0].reshape(-1), torch.tensor(GOOD_KP, dtype=torch.float32))
    assert torch.equal(kp[1], torch.zeros(5, 3))  # the ball has no keypoints
    assert torch.equal(target["keypoint_flip"], torch.tensor([0, 2, 1, 4, 3]))


def test_a_file_without_keypoint_categories_has_no_keypoint_targets(tmp_path):
    ds = dataset(tmp_path, [ann(6, 1, square(40, 5, 10), [40, 5, 10, 10], category_id=2)], categories=(BALL,))
    assert ds.keypoint_names is None and "keypoints" not in ds[0][1]


@pytest.mark.parametrize("keypoints, message", [
    (GOOD_KP[:-3], "keypoints has 12 numbers; 5 keypoints need 15"),
    (GOOD_KP[:-1] + [3], r"keypoint 4 \(right_hand\) has visibility 3"),
    (GOOD_KP[:-3] + [500, 10, 2], r"keypoint 4 \(right_hand\) at \(500, 10\) lies outside the 64x48 image"),
    (GOOD_KP[:-1] + ["2"], "keypoints must be a flat list of numbers"),
])
def test_bad_keypoints_name_the_file_and_annotation(tmp_path, keypoints, message):
    bad = ann(7, 1, square(10, 10, 30), [10, 10, 30, 30], keypoints=keypoints)
    with pytest.raises(DataError, match=message) as info:
        dataset(tmp_path, [bad])
    assert "annotations.json" in str(info.value) and "annotation id 7" in str(info.value)


def test_num_keypoints_must_count_the_labelled_ones(tmp_path):
    with pytest.raises(DataError, match="annotation id 5.*num_keypoints is 2 but 4 keypoints have visibility > 0"):
        dataset(tmp_path, [dict(person_ann(5, GOOD_KP), num_keypoints=2)])


def test_keypoints_on_a_category_without_keypoint_names(tmp_path):
    bad = ann(8, 1, square(40, 5, 10), [40, 5, 10, 10], category_id=2, keypoints=GOOD_KP)
    with pytest.raises(DataError, match="annotation id 8.*has keypoints but its category 2 defines none"):
        dataset(tmp_path, [bad])


def test_bad_skeleton_and_flip_map(tmp_path):
    with pytest.raises(DataError, match="category id 1: 'skeleton' must be a list of \\[i, j\\] keypoint numbers in 1..5"):
        dataset(tmp_path, [], categories=[dict(PERSON, skeleton=[[1, 6]])])
    with pytest.raises(DataError, match="keypoint_flip_map: flip_map names 'left_foot'"):
        dataset(tmp_path, [], keypoint_flip_map=[("left_foot", "right_hand")])


def test_a_keypoint_annotation_needs_no_segmentation(tmp_path):
    no_mask = dict(person_ann(5, GOOD_KP), segmentation=[])
    _, target = dataset(tmp_path, [no_mask])[0]
    assert target["masks"][0].sum() == 30 * 30  # the box stands in for it


def test_flip_indices_from_names_and_from_a_map():
    assert flip_indices(["nose", "left_eye", "right_eye", "Left Ear", "Right Ear", "tail"]) == [0, 2, 1, 4, 3, 5]
    assert flip_indices(["a", "b", "c"], [("a", "c")]) == [2, 1, 0]


def test_hflip_mirrors_keypoints_and_swaps_sides(tmp_path):
    ds = dataset(tmp_path, [person_ann(5, GOOD_KP)], keypoint_flip_map=None)
    image, target = ds[0]
    flipped_image, flipped = hflip(image, target)
    kp, out = target["keypoints"][0], flipped["keypoints"][0]
    order = [0, 2, 1, 4, 3]
    for j in range(5):
        src = kp[order[j]]
        if src[2] > 0:
            assert out[j].tolist() == [64 - src[0].item(), src[1].item(), src[2].item()]
        else:
            assert out[j].tolist() == [0, 0, 0]  # unlabelled stays (0, 0, 0)
    # twice is the identity
    assert torch.equal(hflip(flipped_image, flipped)[1]["keypoints"], target["keypoints"])


def test_hflip_refuses_keypoints_without_a_flip_order():
    target = {"boxes": torch.zeros(0, 4), "keypoints": torch.zeros(0, 3, 3)}
    with pytest.raises(ValueError, match="no 'keypoint_flip'"):
        hflip(torch.zeros(3, 4, 4), target)


def test_resize_scales_keypoints_per_axis():
    target = {"keypoints": torch.tensor([[[10.0, 20.0, 2.0]]])}
    _, out = resize(torch.zeros(3, 40, 80), target, (20, 160))
    assert out["keypoints"].tolist() == [[[20.0, 10.0, 2.0]]]
