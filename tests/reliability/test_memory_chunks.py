"""Mask targets, pasting, mask resize and COCO mask decoding work through instances in chunks
(bounded memory); the results must be exactly those of doing all instances at once."""
import json

import numpy as np
import pytest
import torch

from maskrcnn.data import CocoDataset
from maskrcnn.modeling.transform import ImageTransform
from maskrcnn.ops import masks as mask_ops
from maskrcnn.ops import paste_masks, paste_masks_detectron2, roi_align


@pytest.fixture
def one_plane_per_chunk(monkeypatch):
    """Every chunk holds one plane: the most chunking there can be."""
    monkeypatch.setattr(mask_ops, "CHUNK_BYTES", 1)


def random_boxes(n, h, w, g):
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
    wh = 1 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5])
    return torch.cat([xy, xy + wh], 1)


def test_chunk_ranges_cover_everything_once():
    parts = list(mask_ops.chunk_ranges(10, 100, budget_bytes=4 * 100 * 3))
    assert [(p.start, p.stop) for p in parts] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [(p.start, p.stop) for p in mask_ops.chunk_ranges(2, 10**9, budget_bytes=1)] == [(0, 1), (1, 2)]


def test_mask_targets_chunked_equal_all_at_once(monkeypatch):
    g = torch.Generator().manual_seed(0)
    gt = (torch.rand(40, 50, 60, generator=g) > 0.5).to(torch.uint8)
    boxes = random_boxes(70, 50, 60, g)
    matched = torch.randint(0, 40, (70,), generator=g)
    # the formula before chunking: every gt mask as float, one RoIAlign call
    rois = torch.cat([matched[:, None].float(), boxes], 1)
    expected = roi_align(gt[:, None].float(), rois, 28, 1.0, sampling_ratio=0)[:, 0]
    monkeypatch.setattr(mask_ops, "CHUNK_BYTES", 4 * 50 * 60 * 3)  # 3 gt masks per chunk
    assert torch.equal(mask_ops.mask_targets(gt, boxes, matched, 28), expected)
    assert mask_ops.mask_targets(gt, boxes[:0], matched[:0], 28).shape == (0, 28, 28)


@pytest.mark.parametrize("paste", [paste_masks, paste_masks_detectron2])
def test_paste_chunked_and_thresholded_equal_all_at_once(paste, monkeypatch):
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(9, 28, 28, generator=g)
    boxes = random_boxes(9, 70, 90, g)
    whole = paste(masks, boxes, (70, 90))
    monkeypatch.setattr(mask_ops, "CHUNK_BYTES", 1)
    chunked = paste(masks, boxes, (70, 90))
    assert torch.equal(chunked, whole)
    binary = paste(masks, boxes, (70, 90), threshold=0.5)
    assert binary.dtype == torch.bool and torch.equal(binary, whole >= 0.5)
    assert paste(masks[:0], boxes[:0], (70, 90), threshold=0.5).dtype == torch.bool


def test_target_mask_resize_chunked_equals_all_at_once(one_plane_per_chunk):
    g = torch.Generator().manual_seed(2)
    masks = (torch.rand(5, 37, 53, generator=g) > 0.5).to(torch.uint8)
    target = {"boxes": torch.tensor([[1.0, 2.0, 20.0, 30.0]] * 5), "masks": masks}
    resized = ImageTransform._resize_target(target, (37, 53), (80, 115))["masks"]
    expected = torch.nn.functional.interpolate(masks[:, None].float(), size=(80, 115), mode="nearest")[:, 0]
    assert resized.dtype == torch.uint8 and torch.equal(resized, expected.to(torch.uint8))


def test_coco_masks_decoded_in_chunks_equal_pycocotools(tmp_path, one_plane_per_chunk):
    from PIL import Image
    from pycocotools import mask as mask_utils

    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "a.png")
    polygons = [[[2 + i, 3, 20 + i, 3, 20 + i, 25, 2 + i, 25]] for i in range(6)]
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100.0,
             "bbox": [2 + i, 3, 18, 22], "segmentation": p} for i, p in enumerate(polygons)]
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
            "categories": [{"id": 1, "name": "x"}], "annotations": anns}
    (tmp_path / "a.json").write_text(json.dumps(data))
    _, target = CocoDataset(tmp_path / "a.json", tmp_path)[0]
    expected = np.stack([mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(p, 30, 40))) for p in polygons])
    assert torch.equal(target["masks"], torch.from_numpy(expected))


@pytest.mark.parametrize("low_quality", [True, False])
def test_matcher_chunked_equals_the_whole_iou_matrix(low_quality, monkeypatch):
    from maskrcnn.modeling.matcher import Matcher
    from maskrcnn.ops import box_iou

    g = torch.Generator().manual_seed(3)
    gt = random_boxes(23, 60, 60, g)
    gt = torch.cat([gt, gt[:3], torch.tensor([[5.0, 5.0, 5.0, 5.0]])])  # duplicates (ties), an empty box (NaN)
    boxes = torch.cat([random_boxes(300, 60, 60, g), gt[:4], torch.tensor([[5.0, 5.0, 5.0, 5.0]])])
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)
    expected = matcher(box_iou(gt, boxes))
    monkeypatch.setattr(mask_ops, "CHUNK_BYTES", 4 * 7 * boxes.shape[0] * 2)  # two gt rows per chunk
    assert torch.equal(matcher.match_boxes(gt, boxes), expected)


def test_outline_without_padding_equals_the_padded_rule():
    from maskrcnn.inference.draw import _outline

    def padded_rule(labels, width):  # the definition: differs from a 4-neighbour, outside = 0
        edge = np.zeros(labels.shape, dtype=bool)
        inner = labels.copy()
        for _ in range(width):
            p = np.pad(inner, 1)
            c = p[1:-1, 1:-1]
            ring = ((c != p[:-2, 1:-1]) | (c != p[2:, 1:-1]) | (c != p[1:-1, :-2]) | (c != p[1:-1, 2:])) & (c > 0)
            edge |= ring
            inner[ring] = 0
        return edge

    rng = np.random.default_rng(0)
    for trial in range(30):
        h, w = rng.integers(1, 30, 2)
        labels = rng.integers(0, 4, (h, w)).astype(np.int32)
        if trial % 2:
            labels = np.kron(labels, np.ones((3, 3), np.int32))
        for width in (1, 2, 3):
            assert np.array_equal(_outline(labels, width), padded_rule(labels, width))
