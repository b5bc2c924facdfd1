"""Our ops against torchvision's own (compiled CPU kernels and Python detection utilities).

Every input is drawn from a seeded torch.Generator; nothing is stored. Where the comparison is
not bit-exact, the tolerance is derived from float rounding next to the assertion.

    python -m pytest -q -m reference tests/reference/test_ops_reference.py
"""
from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from reference_utils import torchvision
from torchvision.models.detection import _utils as tv_det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops.poolers import LevelMapper

from maskrcnn.modeling.anchors import AnchorGenerator
from maskrcnn.ops import (
    BoxCoder,
    MultiScaleRoIAlign,
    assign_fpn_levels,
    batched_nms,
    box_iou,
    boxes_to_rois,
    nms,
    paste_masks,
    roi_align,
    roi_pool,
)

tv_ops = torchvision.ops


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_boxes(n, image_h, image_w, g, *, min_size=1.0, max_size=None, outside=0.2, dtype=torch.float32):
    """(n, 4) xyxy boxes with log-uniform sides in [min_size, max_size] (default: the image's
    larger side), top-left corners spread `outside` of the image beyond each edge, so some boxes
    stick out. Drawn in float64, then cast."""
    max_size = max_size or max(image_h, image_w)
    r = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    log_range = math.log(max_size / min_size)
    w = min_size * torch.exp(r(n) * log_range)
    h = min_size * torch.exp(r(n) * log_range)
    x1 = (r(n) * (1 + 2 * outside) - outside) * image_w - w / 2
    y1 = (r(n) * (1 + 2 * outside) - outside) * image_h - h / 2
    return torch.stack([x1, y1, x1 + w, y1 + h], 1).to(dtype)


# ---------------------------------------------------------------------------------------------
# Box IoU and the delta encoding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_iou_equals_torchvision(dtype, seed):
    g = generator(seed)
    boxes1 = random_boxes(300, 200, 300, g, dtype=dtype)
    boxes2 = random_boxes(200, 200, 300, g, dtype=dtype)
    boxes2[:50] = boxes1[:50]  # identical pairs: IoU 1
    boxes2[50] = boxes2[51]  # and a duplicate column
    # Same arithmetic, op for op (inter / ((area1 + area2) - inter)): bit-exact.
    torch.testing.assert_close(box_iou(boxes1, boxes2), tv_ops.box_iou(boxes1, boxes2), rtol=0, atol=0)


BOX_CODER_WEIGHTS = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weights", BOX_CODER_WEIGHTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_box_coder_encode_equals_torchvision(dtype, weights, seed):
    g = generator(seed)
    references = random_boxes(500, 400, 600, g, dtype=dtype)
    gt_boxes = random_boxes(500, 400, 600, g, dtype=dtype)
    ours = BoxCoder(weights).encode(gt_boxes, references)
    theirs = tv_det_utils.BoxCoder(weights).encode_single(gt_boxes, references)
    # Same expressions in the same order (the weights are exact in any float): bit-exact.
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weights", BOX_CODER_WEIGHTS)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_box_coder_decode_equals_torchvision(dtype, weights, seed, num_classes):
    g = generator(seed)
    n = 400
    references = random_boxes(n, 400, 600, g, dtype=dtype)
    deltas = torch.randn(n, 4 * num_classes, generator=g, dtype=torch.float64)
    # Large deltas: dw / ww and dh / wh far above log(1000 / 16) = 4.135, which decode clamps
    # (exp(20) * 600 would still fit in float32, exp(100) would not)
    deltas[: n // 4] *= 30.0
    deltas[n // 4: n // 2, 2::4] = 100.0 * torch.tensor(weights[2], dtype=torch.float64)
    deltas[n // 4: n // 2, 3::4] = -100.0 * torch.tensor(weights[3], dtype=torch.float64)
    # exactly at the clamp, and just below / above it
    clip = math.log(1000.0 / 16)
    deltas[n // 2, 2::4] = clip * weights[2]
    deltas[n // 2 + 1, 2::4] = math.nextafter(clip, 0) * weights[2]
    deltas[n // 2 + 2, 3::4] = math.nextafter(clip, 10) * weights[3]
    deltas = deltas.to(dtype)
    ours = BoxCoder(weights).decode(deltas, references)
    theirs = tv_det_utils.BoxCoder(weights).decode_single(deltas, references).reshape(n, num_classes, 4)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# NMS and batched NMS
# ---------------------------------------------------------------------------------------------


def clustered_boxes(n, g, *, clusters=20, size=500.0, dtype=torch.float32):
    """Boxes jittered around a few cluster centers, so that many pairs overlap at every IoU."""
    centers = torch.rand(clusters, 2, generator=g, dtype=torch.float64) * size
    sides = 10 + torch.rand(clusters, 2, generator=g, dtype=torch.float64) * 80
    which = torch.randint(0, clusters, (n,), generator=g)
    jitter = torch.randn(n, 4, generator=g, dtype=torch.float64) * 0.15
    c = centers[which] + jitter[:, :2] * sides[which]
    wh = sides[which] * torch.exp(jitter[:, 2:])
    return torch.cat([c - wh / 2, c + wh / 2], 1).to(dtype)


def tied_scores(n, g, levels, dtype=torch.float32):
    """Scores with only `levels` distinct values: many ties, whose order must be the input order."""
    return (torch.randint(0, levels, (n,), generator=g).to(torch.float64) / levels).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_nms_equals_torchvision(dtype, threshold, seed):
    g = generator(seed)
    boxes = clustered_boxes(600, g, dtype=dtype)
    boxes[:4, 2] = boxes[:4, 0]  # zero width: IoU 0 / 0 = NaN with a copy, never > threshold
    boxes[4:8] = boxes[:4]
    boxes[8:12] = boxes[20]  # exact duplicates: IoU 1
    scores = torch.rand(600, generator=g, dtype=torch.float64).to(dtype)
    assert nms(boxes, scores, threshold).tolist() == tv_ops.nms(boxes, scores, threshold).tolist()


@pytest.mark.parametrize("levels", [1, 3, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_nms_ties_in_scores_equal_torchvision(levels, seed):
    g = generator(seed)
    boxes = clustered_boxes(400, g)
    scores = tied_scores(400, g, levels)
    # both sort stably: among equal scores the lower index ranks first
    assert nms(boxes, scores, 0.5).tolist() == tv_ops.nms(boxes, scores, 0.5).tolist()


def test_nms_empty_and_one_box():
    empty = torch.zeros((0, 4))
    assert nms(empty, torch.zeros(0), 0.5).tolist() == tv_ops.nms(empty, torch.zeros(0), 0.5).tolist() == []
    assert batched_nms(empty, torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).dtype == torch.int64
    one = torch.tensor([[1.0, 2.0, 5.0, 9.0]])
    assert nms(one, torch.tensor([0.3]), 0.5).tolist() == tv_ops.nms(one, torch.tensor([0.3]), 0.5).tolist() == [0]
    groups = torch.tensor([7])
    assert batched_nms(one, torch.tensor([0.3]), groups, 0.5).tolist() == [0]
    assert tv_ops.batched_nms(one, torch.tensor([0.3]), groups, 0.5).tolist() == [0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_at_the_threshold_equals_torchvision(dtype):
    """Pairs whose IoU is the threshold itself, or one or a few float steps either side of it:
    box 0 is 10 x 10, box 1 is the same box cut to height h, IoU = h / 10 (as rounded in dtype).
    torchvision compares the dtype IoU to the threshold in double precision."""
    pairs, thresholds = [], []
    for threshold in (0.5, 0.7, 0.3, 0.65):
        h = torch.tensor(10.0 * threshold, dtype=dtype)
        steps = [h]
        for direction in (float("inf"), float("-inf")):
            x = h
            for _ in range(4):
                x = torch.nextafter(x, torch.tensor(direction, dtype=dtype))
                steps.append(x)
        for h in steps:
            pairs.append(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, float(h)]], dtype=dtype))
            thresholds.append(threshold)
    scores = torch.tensor([0.9, 0.8], dtype=dtype)
    outcomes = []
    for boxes, threshold in zip(pairs, thresholds):
        theirs = tv_ops.nms(boxes, scores, threshold).tolist()
        assert nms(boxes, scores, threshold).tolist() == theirs, (boxes[1], threshold)
        outcomes.append(len(theirs))
    assert set(outcomes) == {1, 2}  # both sides of the threshold were reached


def per_class_torchvision_nms(boxes, scores, classes, threshold):
    """torchvision.ops.nms on each class, all kept indices sorted stably by descending score."""
    keep = torch.zeros(boxes.shape[0], dtype=torch.bool)
    for c in torch.unique(classes):
        idx = torch.nonzero(classes == c).squeeze(1)
        keep[idx[tv_ops.nms(boxes[idx], scores[idx], threshold)]] = True
    kept = torch.nonzero(keep).squeeze(1)
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


@pytest.mark.parametrize(
    "num, num_classes, levels",
    [
        (1000, 5, None),      # 4000 coordinates: torchvision's coordinate-offset path (one nms call)
        (1000, 5, 4),         # the same, tied scores within and across classes
        (1001, 5, None),      # 4004 > 4000: torchvision's per-class loop ("vanilla") path
        (3000, 40, 4),        # the per-class loop, tied scores
        (10_000, 80, None),   # many classes, as box post-processing
        (10_000, 300, 20),    # many small classes, tied scores
    ],
)
def test_batched_nms_equals_torchvision(num, num_classes, levels):
    g = generator(num + num_classes)
    boxes = clustered_boxes(num, g, clusters=50, size=800.0)
    scores = torch.rand(num, generator=g) if levels is None else tied_scores(num, g, levels)
    classes = torch.randint(0, num_classes, (num,), generator=g)
    ours = batched_nms(boxes, scores, classes, 0.5)
    theirs = tv_ops.batched_nms(boxes, scores, classes, 0.5)
    assert 0 < ours.numel() < num
    # torchvision's coordinate-offset path computes the IoU of boxes shifted by class * (max
    # coordinate + 1): in float32 that changes the rounding of a near-threshold IoU, which these
    # random draws stay clear of (the threshold test above checks the boundary on unshifted
    # boxes). The same boxes are kept:
    assert sorted(ours.tolist()) == sorted(theirs.tolist())
    # in the same order of scores ...
    assert scores[ours].tolist() == scores[theirs].tolist()
    # ... and, among equal scores, in index order. torchvision's per-class path (> 4000
    # coordinates) ends with an unstable sort, so its order among tied scores is arbitrary
    # (with 3000 boxes and 4 score values it returns 1013 before 974): there the order is
    # checked against its own per-class nms followed by a stable sort.
    assert ours.tolist() == per_class_torchvision_nms(boxes, scores, classes, 0.5).tolist()
    if levels is None or boxes.numel() <= 4000:
        assert ours.tolist() == theirs.tolist()


def test_nms_single_class_thousands_of_boxes():
    """One group of 3000 heavily overlapping boxes: long suppression chains across our blocks."""
    g = generator(7)
    boxes = clustered_boxes(3000, g, clusters=10, size=300.0)
    scores = torch.rand(3000, generator=g)
    assert nms(boxes, scores, 0.7).tolist() == tv_ops.nms(boxes, scores, 0.7).tolist()


# ---------------------------------------------------------------------------------------------
# RoIAlign and RoIPool
# ---------------------------------------------------------------------------------------------


def roi_case(seed, *, scale, num=60, dtype=torch.float32, image=2, channels=3, map_hw=(13, 17)):
    """Features (image, C, h, w) for a map of `map_hw` cells and (num, 5) RoIs in input pixels
    (cells / scale): random boxes sticking out of the map, tiny (< 1 cell) and huge ones."""
    g = generator(seed)
    h, w = map_hw
    features = torch.rand(image, channels, h, w, generator=g, dtype=torch.float64) * 2 - 1
    image_h, image_w = h / scale, w / scale
    boxes = random_boxes(num, image_h, image_w, g, min_size=0.3 / scale, max_size=1.5 * max(image_h, image_w),
                         outside=0.3, dtype=torch.float64)
    boxes[0] = torch.tensor([-3.0, -2.0, w + 4.0, h + 5.0]) / scale  # bigger than the map
    boxes[1] = torch.tensor([-40.0, 1.0, 2 * w + 30.0, 2.0]) / scale  # huge and thin
    boxes[2] = torch.tensor([2.3, 3.1, 2.5, 3.2]) / scale  # a fraction of a cell
    boxes[3] = torch.tensor([4.0, 5.0, 4.0, 5.0]) / scale  # a point
    boxes[4] = torch.tensor([w - 0.4, h - 0.7, w + 0.6, h + 0.2]) / scale  # straddles the far corner
    boxes[5] = torch.tensor([-1.6, -0.9, 0.4, 0.3]) / scale  # straddles the near corner
    boxes[6] = torch.tensor([w + 2.0, 1.0, w + 6.0, 4.0]) / scale  # outside
    boxes[7] = torch.tensor([-5.0 * w, -4.0 * h, 6.0 * w, 7.0 * h]) / scale  # 11x the map
    # corners on half cells (RoIPool rounds them half away from zero: -0.5 -> -1, 2.5 -> 3)
    boxes[8] = torch.tensor([2.5, 1.5, 6.5, 7.5]) / scale
    boxes[9] = torch.tensor([-0.5, 3.5, 4.5, h - 1.5]) / scale
    batch = torch.randint(0, image, (num, 1), generator=g).to(torch.float64)
    return features.to(dtype), torch.cat([batch, boxes], 1).to(dtype)


def roi_align_atol(dtype, features, size):
    """Forward tolerance. Our RoIAlign computes torchvision's sample coordinates and bilinear
    weights with its formulas, but folds the 1 / count into each tap's weight and sums a bin's
    taps in another order, so the error is a few ulps of max|f|. This bound is the one the
    earlier grid_sample implementation needed (its normalized-coordinate round trip moved y by
    an ulp of y, |y| <= size cells, times two neighbouring cells' difference, <= 2 max|f|; twice
    that): much looser than needed now, kept as the contract."""
    return 2 * size * torch.finfo(dtype).eps * 2 * float(features.abs().max())


def bilinear_grad_atol(dtype, abs_grad, size):
    """Per-cell backward tolerance. A cell's gradient sums w * u / count over the samples that
    touch it, w a bilinear weight moved by up to size * eps by the round trip above. Each such
    sample lies within one cell, and its weights (summing to 1) fall in the cell's 3x3
    neighbourhood, so that error is at most size * eps * (3x3 sum of `abs_grad`), `abs_grad`
    being the gradient for |upstream|; the sums' own rounding (another order of additions) is
    below eps * `abs_grad` per sample per cell. The largest errors seen are 0.3-3.5 eps * the
    3x3 sum (the most with the 11x RoI, many samples per cell), for sizes 12-20."""
    neighbourhood = F.avg_pool2d(abs_grad, 3, stride=1, padding=1, count_include_pad=True) * 9
    return size * torch.finfo(dtype).eps * neighbourhood


def assert_within(actual, expected, atol):
    """Elementwise |actual - expected| <= atol (a tensor)."""
    excess = (actual - expected).abs() - atol
    worst = int(excess.flatten().argmax())
    assert (excess <= 0).all(), (
        f"{int((excess > 0).sum())} elements off; worst at flat index {worst}: "
        f"{actual.flatten()[worst].item()!r} vs {expected.flatten()[worst].item()!r}, "
        f"allowed {atol.flatten()[worst].item():.3g}")


ROI_ALIGN_CASES = [
    # (spatial scale, map size, output size, sampling ratio, aligned)
    (1.0, (13, 17), 7, 2, False),
    (1.0, (13, 17), 7, 0, True),
    (1.0, (13, 17), 14, 0, False),
    (0.25, (20, 15), 14, 2, True),
    (0.25, (20, 15), 7, 0, False),
    (1 / 32, (9, 12), 7, 0, True),
    (1 / 32, (9, 12), 14, 2, False),
    (1 / 32, (9, 12), (7, 5), 0, False),
    # one-cell axes (P5 of a 32-pixel-high batch): both neighbours are the one cell, and a sample
    # beyond it contributes 0
    (1 / 32, (1, 6), 7, 0, False),
    (0.25, (2, 1), 7, 2, True),
    (1 / 16, (1, 1), 7, 0, True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale, map_hw, output_size, sampling_ratio, aligned", ROI_ALIGN_CASES)
def test_roi_align_forward_equals_torchvision(dtype, scale, map_hw, output_size, sampling_ratio, aligned):
    features, rois = roi_case(int(1 / scale) + sampling_ratio, scale=scale, map_hw=map_hw, dtype=dtype)
    ours = roi_align(features, rois, output_size, scale, sampling_ratio, aligned)
    theirs = tv_ops.roi_align(features, rois, output_size, scale, sampling_ratio, aligned)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=roi_align_atol(dtype, features, max(map_hw)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale, map_hw, output_size, sampling_ratio, aligned", ROI_ALIGN_CASES)
def test_roi_align_backward_equals_torchvision(dtype, scale, map_hw, output_size, sampling_ratio, aligned):
    features, rois = roi_case(int(1 / scale) + sampling_ratio + 100, scale=scale, map_hw=map_hw, dtype=dtype)
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    upstream = torch.randn(rois.shape[0], features.shape[1], ph, pw, generator=generator(5), dtype=torch.float64)
    upstream = upstream.to(dtype)
    grads = []
    for op, u in ((roi_align, upstream), (tv_ops.roi_align, upstream), (tv_ops.roi_align, upstream.abs())):
        x = features.clone().requires_grad_(True)
        (op(x, rois, output_size, scale, sampling_ratio, aligned) * u).sum().backward()
        grads.append(x.grad)
    assert_within(grads[0], grads[1], bilinear_grad_atol(dtype, grads[2], max(map_hw)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale, map_hw", [(1.0, (13, 17)), (0.25, (20, 15)), (1 / 32, (9, 12)), (1 / 32, (1, 6))])
@pytest.mark.parametrize("output_size", [7, 3])
@pytest.mark.parametrize("ties", [False, True])
def test_roi_pool_equals_torchvision(dtype, scale, map_hw, output_size, ties):
    features, rois = roi_case(int(1 / scale) + output_size, scale=scale, map_hw=map_hw, dtype=dtype)
    if ties:
        # 5 values: most bins hold their maximum twice or more, and torchvision's gradient goes
        # to the first of them (row-major), not to all
        features = (features * 2).round() / 2
    x_ours = features.clone().requires_grad_(True)
    x_theirs = features.clone().requires_grad_(True)
    ours = roi_pool(x_ours, rois, output_size, scale)
    theirs = tv_ops.roi_pool(x_theirs, rois, output_size, scale)
    # max pooling picks input values: bit-exact, and so is the gradient (one cell per bin)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    upstream = torch.randn(ours.shape, generator=generator(3), dtype=dtype)
    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    # A cell's gradient is the sum of the upstream values of the k bins whose maximum it is,
    # added in another order (and, with threads, in a varying one): the sums differ by at most
    # k * eps * (sum of those |upstream|), k and the sum read off torchvision's backward.
    counts, abs_sums = (torch.autograd.grad(tv_ops.roi_pool(x, rois, output_size, scale), x, u)[0]
                        for x, u in ((features.clone().requires_grad_(True), torch.ones_like(upstream)),
                                     (features.clone().requires_grad_(True), upstream.abs())))
    assert counts.max() > 3  # cells shared by several bins
    assert_within(x_ours.grad, x_theirs.grad, counts * torch.finfo(dtype).eps * abs_sums)


# ---------------------------------------------------------------------------------------------
# Multi-scale RoIAlign (FPN level assignment)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fpn_levels_equal_torchvision_level_mapper(dtype, seed):
    g = generator(seed)
    boxes = random_boxes(2000, 800, 1216, g, min_size=2.0, max_size=1500.0, dtype=dtype)
    # exact powers of two of the canonical 224 (the +eps decides them), degenerate boxes
    special = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448], [10, 10, 66, 66],
                            [0, 0, 896, 896], [5, 5, 5, 5], [3, 3, 3, 40], [0, 0, 1e-3, 1e-3]], dtype=dtype)
    # sides of exactly 56 * 2^k at random offsets: the rounded width (x1 + side) - x1 falls an
    # ulp below the power of two about as often as above, and the +eps keeps the level
    offsets = torch.rand(200, 2, generator=g, dtype=torch.float64).to(dtype) * 500
    sides = (56.0 * 2 ** torch.randint(0, 5, (200, 1), generator=g)).to(dtype)
    powers_of_two = torch.cat([offsets, offsets + sides], 1)
    boxes = torch.cat([special, powers_of_two, boxes])
    theirs = LevelMapper(2, 5)([boxes[:1000], boxes[1000:]])
    assert assign_fpn_levels(boxes, 2, 5).tolist() == theirs.tolist()
    assert set(theirs.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("seed", [0, 1])
def test_multiscale_roi_align_equals_torchvision(seed):
    g = generator(seed)
    strides = [4, 8, 16, 32]
    padded_h, padded_w = 256, 352
    image_sizes = [(256, 341), (230, 352)]  # before padding: torchvision infers scales from these
    features = [torch.randn(2, 4, padded_h // s, padded_w // s, generator=g) for s in strides]
    boxes = [random_boxes(n, h, w, g, min_size=4.0, max_size=400.0, outside=0.0) for n, (h, w) in
             zip((70, 50), image_sizes)]
    boxes[0][:3] = torch.tensor([[-20.0, -30.0, 460.0, 440.0], [0.0, 0.0, 341.0, 256.0], [3.0, 4.0, 5.0, 6.0]])
    boxes[1][:2] = torch.tensor([[-5.0, -5.0, 500.0, 500.0], [100.0, 100.0, 100.5, 101.0]])
    ours = MultiScaleRoIAlign(strides=strides, output_size=7, sampling_ratio=2)(features, boxes)
    pooler = tv_ops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2)
    theirs = pooler(OrderedDict(zip(["p2", "p3", "p4", "p5"], features)), boxes, image_sizes)
    assert pooler.scales == [1 / s for s in strides]
    levels = assign_fpn_levels(boxes_to_rois(boxes)[:, 1:], 2, 5)
    assert set(levels.tolist()) == {0, 1, 2, 3}  # every level pooled something
    # RoIAlign's float32 rounding (see `tolerance`), on the largest map
    atol = roi_align_atol(torch.float32, torch.cat([f.flatten() for f in features]), padded_w / 4)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------
# Mask pasting
# ---------------------------------------------------------------------------------------------


def mask_boxes(n, image_h, image_w, g, dtype):
    boxes = random_boxes(n, image_h, image_w, g, min_size=0.2, max_size=max(image_h, image_w) * 0.9,
                         outside=0.15, dtype=torch.float64)
    boxes[0] = torch.tensor([-15.3, -12.8, image_w + 9.1, image_h + 7.7])  # bigger than the image
    boxes[1] = torch.tensor([7.0, 9.0, 7.0, 9.0])  # a point
    boxes[2] = torch.tensor([-0.4, -0.6, 0.3, 0.2])  # tiny, straddling 0 (truncation toward zero)
    boxes[3] = torch.tensor([image_w - 3.2, image_h - 2.6, image_w + 20.4, image_h + 11.9])  # corner
    boxes[4] = torch.tensor([image_w + 5.0, 3.0, image_w + 15.0, 10.0])  # outside
    boxes[5] = torch.tensor([2.5, 3.5, 3.1, 3.9])  # under one pixel
    return boxes.to(dtype)


@pytest.mark.parametrize("image_size", [(37, 53), (100, 150), (240, 180)])
@pytest.mark.parametrize("mask_size", [28, 14])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", [1, 2])
def test_paste_masks_equal_torchvision(image_size, mask_size, dtype, padding):
    g = generator(image_size[0] + mask_size)
    n = 24
    masks = torch.rand(n, mask_size, mask_size, generator=g, dtype=torch.float64).to(dtype)
    boxes = mask_boxes(n, *image_size, g, dtype)
    ours = paste_masks(masks, boxes, image_size, padding=padding)
    # torchvision's paste_mask_in_image cannot paste a box whose expanded integer box lies wholly
    # outside the image (its slice of the image is empty, its slice of the mask is not, and the
    # assignment raises): those are compared with 0, the rest with torchvision.
    height, width = image_size
    scale = (mask_size + 2 * padding) / mask_size
    w_half, h_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale, (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c, y_c = (boxes[:, 2] + boxes[:, 0]) * 0.5, (boxes[:, 3] + boxes[:, 1]) * 0.5
    x0, x1 = (x_c - w_half).long(), (x_c + w_half).long()
    y0, y1 = (y_c - h_half).long(), (y_c + h_half).long()
    inside = (x0 < width) & (x1 >= 0) & (y0 < height) & (y1 >= 0)
    assert 0 < int(inside.sum()) < n
    assert not ours[~inside].any()
    theirs = paste_masks_in_image(masks[inside][:, None], boxes[inside], image_size, padding=padding)[:, 0]
    # Same bilinear weights up to rounding: interpolate computes a source position
    # scale * (d + 0.5) - 0.5 with a fused multiply-add, we round the product first, so the
    # position (< M + 2 * padding) and its fraction can differ by an ulp of the position (32 / 7
    # * 3.5 - 0.5 is 15.5 for us, 15.500001 for interpolate), the value by that times the
    # difference of two neighbouring mask cells (<= 1) on each axis. The two products and sums
    # add a few ulps of 1.
    eps = torch.finfo(dtype).eps
    atol = 2 * (mask_size + 2 * padding) * eps + 8 * eps
    torch.testing.assert_close(ours[inside], theirs, rtol=0, atol=atol)
    assert (theirs > 0).any(dim=(1, 2)).sum() > n // 2


# ---------------------------------------------------------------------------------------------
# Anchors
# ---------------------------------------------------------------------------------------------


def fpn_feature_sizes(height, width, levels=5):
    """Sizes of P2..P6 of a ResNet-FPN for a padded batch (each stride-2 step rounds up; P6 is a
    stride-2 max pool of P5)."""
    sizes = []
    h, w = math.ceil(height / 4), math.ceil(width / 4)
    for _ in range(levels):
        sizes.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return sizes


@pytest.mark.parametrize(
    "batch, padded_size",
    [(2, (800, 1216)), (1, (800, 1088)), (3, (32, 32)), (1, (64, 2000)), (2, (608, 800)), (1, (96, 160))],
)
def test_anchors_equal_torchvision(batch, padded_size):
    sizes = ((32,), (64,), (128,), (256,), (512,))
    feature_sizes = fpn_feature_sizes(*padded_size)
    theirs_gen = TVAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    images = ImageList(torch.zeros(batch, 3, *padded_size), [padded_size] * batch)
    theirs = theirs_gen(images, [torch.zeros(batch, 1, h, w) for h, w in feature_sizes])
    ours = AnchorGenerator(sizes=tuple(s[0] for s in sizes), aspect_ratios=(0.5, 1.0, 2.0))(
        padded_size, feature_sizes)
    assert [a.shape[0] for a in ours] == [h * w * 3 for h, w in feature_sizes]
    assert len(theirs) == batch
    ours = torch.cat(ours)
    for anchors in theirs:
        # integers in float32: exact
        assert ours.dtype == anchors.dtype
        torch.testing.assert_close(ours, anchors, rtol=0, atol=0)
