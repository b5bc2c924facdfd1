"""FPN level assignment and multi-scale RoIAlign against per-box loops."""
import math

import pytest
import torch

from maskrcnn.ops import MultiScaleRoIAlign, assign_fpn_levels, boxes_to_rois, roi_align

DTYPES = [torch.float32, torch.float64]
STRIDES = [4, 8, 16, 32]


def ref_level(box, min_level=2, max_level=5):
    """torchvision's LevelMapper for one box: floor(4 + log2(sqrt(wh) / 224) + 1e-6), clamped."""
    x1, y1, x2, y2 = box
    area = (x2 - x1) * (y2 - y1)
    if area <= 0:
        return min_level  # log2(0) = -inf: the finest level
    k = math.floor(4 + math.log2(math.sqrt(area) / 224) + 1e-6)
    return min(max(k, min_level), max_level)


def random_boxes(n, image_h, image_w, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    # log-uniform sizes from 4 to 600 pixels: every level gets boxes
    w = torch.exp(torch.rand(n, generator=g, dtype=torch.float64) * math.log(150)) * 4
    h = w * torch.exp(torch.randn(n, generator=g, dtype=torch.float64) * 0.4)
    x1 = torch.rand(n, generator=g, dtype=torch.float64) * image_w - w / 3
    y1 = torch.rand(n, generator=g, dtype=torch.float64) * image_h - h / 3
    return torch.stack([x1, y1, x1 + w, y1 + h], 1).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_assign_fpn_levels_matches_loop(dtype):
    boxes = random_boxes(400, 800, 800, 0, dtype)
    special = torch.tensor([
        [0, 0, 224, 224],      # exactly canonical: level 4
        [0, 0, 112, 112],      # exactly half: level 3 (the +1e-6 keeps log2 = -1 from flooring to -2)
        [0, 0, 448, 448],      # level 5
        [10, 10, 66, 66],      # 56: level 2
        [0, 0, 223.9, 224],    # just under 224: level 3
        [0, 0, 896, 896],      # huge: clamped to 5
        [5, 5, 6, 6],          # tiny: clamped to 2
        [5, 5, 5, 9],          # zero area: 2
        [0, 0, 56, 224],       # sqrt(wh) = 112: level 3
    ], dtype=dtype)
    boxes = torch.cat([boxes, special])
    levels = assign_fpn_levels(boxes, 2, 5)
    assert levels.dtype == torch.int64
    expected = [ref_level(b) - 2 for b in boxes.tolist()]
    assert levels.tolist() == expected
    assert levels[-9:].tolist() == [2, 1, 3, 0, 1, 3, 0, 0, 1]
    assert set(levels.tolist()) == {0, 1, 2, 3}


def test_assign_fpn_levels_other_range():
    boxes = random_boxes(100, 800, 800, 1, torch.float64)
    levels = assign_fpn_levels(boxes, 3, 6)
    assert levels.tolist() == [ref_level(b, 3, 6) - 3 for b in boxes.tolist()]


def test_boxes_to_rois():
    b0 = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    b1 = torch.zeros(0, 4)
    b2 = torch.tensor([[5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]])
    rois = boxes_to_rois([b0, b1, b2])
    assert rois.tolist() == [[0, 1, 2, 3, 4], [2, 5, 6, 7, 8], [2, 9, 10, 11, 12]]


def _features(image_h, image_w, channels, dtype, seed, strides=STRIDES, batch=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, math.ceil(image_h / s), math.ceil(image_w / s), generator=g,
                        dtype=torch.float64).to(dtype) for s in strides]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_multiscale_roi_align_equals_per_box_roi_align(dtype, aligned, sampling_ratio):
    image_h, image_w = 256, 320
    features = _features(image_h, image_w, 3, dtype, seed=2)
    boxes = [random_boxes(17, image_h, image_w, 3, dtype), random_boxes(12, image_h, image_w, 4, dtype)]
    boxes[0][0] = torch.tensor([-120.3, -90.7, 400.2, 390.1])  # level 5, larger than the image
    boxes[1][0] = torch.tensor([30.3, 20.7, 290.2, 250.1])  # level 4
    pooler = MultiScaleRoIAlign(strides=STRIDES, output_size=4, sampling_ratio=sampling_ratio, aligned=aligned)
    out = pooler(features, boxes)
    assert out.shape == (29, 3, 4, 4) and out.dtype == dtype

    used = set()
    row = 0
    for image, image_boxes in enumerate(boxes):
        for box in image_boxes:
            level = ref_level(box.tolist())
            used.add(level)
            fmap = features[level - 2][image:image + 1]
            roi = torch.cat([torch.zeros(1, dtype=dtype), box])[None]
            expected = roi_align(fmap, roi, 4, 1.0 / STRIDES[level - 2], sampling_ratio, aligned)
            torch.testing.assert_close(out[row:row + 1], expected, rtol=1e-6, atol=1e-6)
            row += 1
    assert used == {2, 3, 4, 5}


def test_multiscale_roi_align_single_level_and_empty_image():
    dtype = torch.float64
    features = _features(64, 64, 2, dtype, seed=5, strides=[8])
    boxes = [torch.zeros(0, 4, dtype=dtype), random_boxes(6, 64, 64, 6, dtype)]
    pooler = MultiScaleRoIAlign(strides=[8], output_size=(2, 3), sampling_ratio=2)
    out = pooler(features, boxes)
    assert out.shape == (6, 2, 2, 3)
    rois = torch.cat([torch.ones(6, 1, dtype=dtype), boxes[1]], 1)
    torch.testing.assert_close(out, roi_align(features[0], rois, (2, 3), 1 / 8, 2))
    # no boxes at all
    four = _features(64, 64, 2, dtype, seed=7)
    empty = MultiScaleRoIAlign(strides=STRIDES, output_size=3)(four, [torch.zeros(0, 4, dtype=dtype)] * 2)
    assert empty.shape == (0, 2, 3, 3)


def test_multiscale_roi_align_gradient_reaches_every_used_level():
    dtype = torch.float64
    features = [f.requires_grad_() for f in _features(256, 256, 2, dtype, seed=8, batch=1)]
    boxes = [torch.tensor([[10, 10, 40, 40], [0, 0, 150, 150], [3, 3, 253, 253], [-100, -100, 400, 400]], dtype=dtype)]
    levels = [ref_level(b) for b in boxes[0].tolist()]
    assert levels == [2, 3, 4, 5]
    out = MultiScaleRoIAlign(strides=STRIDES, output_size=2)(features, boxes)
    out.sum().backward()
    for f in features:
        assert f.grad is not None and f.grad.abs().sum() > 0
