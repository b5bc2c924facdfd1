"""NMS and batched NMS against a plain greedy loop.

The reference follows torchvision's CPU kernel: stable descending sort by score; IoU computed in
the boxes' dtype as inter / ((area_i + area_j) - inter); box j is dropped when IoU > threshold,
the comparison done in double precision.
"""
import importlib

import numpy as np
import pytest
import torch

from maskrcnn.ops import batched_nms, nms

# the module, not the function `maskrcnn.ops.nms` that shadows it as a package attribute
nms_module = importlib.import_module("maskrcnn.ops.nms")

DTYPES = [torch.float32, torch.float64]


def ref_nms(boxes, scores, threshold):
    """Greedy NMS, one box at a time. Returns kept indices in descending score order."""
    np_dtype = np.float32 if boxes.dtype == torch.float32 else np.float64
    b = boxes.numpy().astype(np_dtype)
    s = scores.double().tolist()
    n = len(s)
    order = sorted(range(n), key=lambda i: -s[i])  # Python's sort is stable
    zero = np_dtype(0)
    areas = [(b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1]) for i in range(n)]  # numpy scalars: stays in dtype
    suppressed = [False] * n
    keep = []
    for a, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[a + 1:]:
            if suppressed[j]:
                continue
            w = max(zero, min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
            h = max(zero, min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
            inter = w * h
            iou = inter / ((areas[i] + areas[j]) - inter)
            assert iou.dtype == np_dtype
            if float(iou) > threshold:
                suppressed[j] = True
    return keep


def ref_batched_nms(boxes, scores, groups, threshold):
    keep = []
    for g in sorted(set(groups.tolist())):
        idx = torch.nonzero(groups == g).squeeze(1)
        keep.extend(idx[ref_nms(boxes[idx], scores[idx], threshold)].tolist())
    s = scores.double().tolist()
    # all kept boxes, by descending score; ties broken by index (stable)
    return sorted(keep, key=lambda i: (-s[i], i))


def random_boxes(n, seed, dtype, size=100.0, max_wh=40.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * max_wh + 1
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def random_scores(n, seed, dtype, levels=None):
    g = torch.Generator().manual_seed(seed + 1000)
    if levels is None:
        return torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
    # few distinct values: many ties
    return (torch.randint(0, levels, (n,), generator=g).to(torch.float64) / levels).to(dtype)


@pytest.fixture(autouse=True, params=["default_block", "block_7"])
def nms_block(request, monkeypatch):
    """Runs every test twice: with the default block size of the greedy pass, and with blocks of
    7 boxes, so that the inputs here (up to a few hundred boxes) cross many block boundaries."""
    if request.param == "block_7":
        monkeypatch.setattr(nms_module, "_BLOCK", 7)
    return request.param


@pytest.fixture
def count_padded_path(monkeypatch):
    """Counts calls to the padded per-group layout of batched_nms."""
    calls = []
    original = nms_module._padded_keep

    def spy(boxes, threshold):
        calls.append(tuple(boxes.shape))
        return original(boxes, threshold)

    monkeypatch.setattr(nms_module, "_padded_keep", spy)
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
def test_nms_matches_greedy_loop(dtype, threshold, seed):
    boxes = random_boxes(150, seed, dtype)
    scores = random_scores(150, seed, dtype)
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64
    assert keep.tolist() == ref_nms(boxes, scores, threshold)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_ties_in_scores(dtype):
    boxes = random_boxes(120, 3, dtype, size=40.0)
    scores = random_scores(120, 3, dtype, levels=4)
    expected = ref_nms(boxes, scores, 0.5)
    assert nms(boxes, scores, 0.5).tolist() == expected
    # all scores equal: pure index order decides
    flat = torch.full((120,), 0.25, dtype=dtype)
    assert nms(boxes, flat, 0.5).tolist() == ref_nms(boxes, flat, 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_long_suppression_chain(dtype):
    # Boxes sliding by one pixel: each overlaps its neighbours above the threshold, so whether
    # box i survives depends on the fate of box i-1, and so on down a chain of 200 boxes.
    n = 200
    x = torch.arange(n, dtype=torch.float64)
    boxes = torch.stack([x, torch.zeros(n, dtype=torch.float64), x + 4, torch.full((n,), 4.0, dtype=torch.float64)], 1)
    boxes = boxes.to(dtype)
    scores = torch.linspace(1, 0.1, n, dtype=torch.float64).to(dtype)
    for threshold in (0.5, 0.7, 0.3):
        keep = nms(boxes, scores, threshold)
        assert keep.tolist() == ref_nms(boxes, scores, threshold)
    # IoU(i, i+1) = 12/20 = 0.6 > 0.5 and IoU(i, i+2) = 8/24 < 0.5: keep every other box
    assert nms(boxes, scores, 0.5).tolist() == list(range(0, n, 2))
    # reversed scores: the chain runs the other way
    keep = nms(boxes, scores.flip(0), 0.5)
    assert keep.tolist() == ref_nms(boxes, scores.flip(0), 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_many_overlapping_boxes(dtype):
    # 300 jittered copies of a few boxes: dense clusters, lots of suppression
    g = torch.Generator().manual_seed(4)
    base = torch.tensor([[10.0, 10.0, 50.0, 60.0], [30.0, 20.0, 80.0, 70.0], [0.0, 0.0, 20.0, 20.0]],
                        dtype=torch.float64)
    boxes = base[torch.randint(0, 3, (300,), generator=g)] + torch.randn(300, 4, generator=g, dtype=torch.float64) * 3
    boxes = boxes.to(dtype)
    scores = random_scores(300, 4, dtype)
    for threshold in (0.5, 0.7, 0.9):
        keep = nms(boxes, scores, threshold)
        assert keep.tolist() == ref_nms(boxes, scores, threshold)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_empty_and_single(dtype):
    empty = nms(torch.zeros(0, 4, dtype=dtype), torch.zeros(0, dtype=dtype), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    empty = batched_nms(torch.zeros(0, 4, dtype=dtype), torch.zeros(0, dtype=dtype),
                        torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    one = nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=dtype), torch.tensor([0.3], dtype=dtype), 0.5)
    assert one.tolist() == [0]


def test_nms_threshold_boundary_float32():
    # float32(0.3) = 0.30000001192... is *above* 0.3. A box A = [0,0,3,1] inside B = [0,0,10,1]
    # has IoU = 3 / ((3 + 10) - 3), which float32 rounds to exactly float32(0.3). torchvision
    # compares that float32 IoU with the double threshold 0.3: 0.30000001 > 0.3, suppressed.
    # A float32-vs-float32(0.3) comparison would wrongly keep it.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 3.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    iou = (torch.tensor(3.0) / ((torch.tensor(3.0) + 10.0) - 3.0))
    assert iou.item() == torch.tensor(0.3, dtype=torch.float32).item() and iou.item() > 0.3
    assert ref_nms(boxes, scores, 0.3) == [0]
    assert nms(boxes, scores, 0.3).tolist() == [0]
    assert batched_nms(boxes, scores, torch.tensor([5, 5]), 0.3).tolist() == [0]
    # in float64 the IoU is the double 0.3 itself: not > 0.3, kept
    assert nms(boxes.double(), scores.double(), 0.3).tolist() == [0, 1]
    # float32(0.7) = 0.69999998... is below 0.7: IoU 7/10 in float32 is kept, in both dtypes
    boxes7 = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 7.0, 1.0]])
    assert nms(boxes7, scores, 0.7).tolist() == [0, 1]
    assert nms(boxes7.double(), scores.double(), 0.7).tolist() == [0, 1]
    # IoU exactly 0.5 is representable: equal is not greater, kept
    boxes5 = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    assert nms(boxes5, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes5, scores, 0.4999999).tolist() == [0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_nms_one_group_equals_nms(dtype):
    boxes = random_boxes(100, 5, dtype, size=50.0)
    scores = random_scores(100, 5, dtype)
    groups = torch.full((100,), 7, dtype=torch.int64)
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == nms(boxes, scores, 0.5).tolist()
    assert nms(boxes, scores, 0.5).tolist() == ref_nms(boxes, scores, 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_nms_dominant_group(dtype, count_padded_path):
    # one group of 120 and 60 singletons: the big group and the singletons go to separate
    # size buckets, so no (R, R) matrix and no 61 x 120 x 120 padding is built
    sizes = [120] + [1] * 60
    groups = torch.cat([torch.full((s,), 3 * i - 50, dtype=torch.int64) for i, s in enumerate(sizes)])
    perm = torch.randperm(len(groups), generator=torch.Generator().manual_seed(6))
    groups = groups[perm]
    n = len(groups)
    boxes = random_boxes(n, 6, dtype, size=40.0)
    scores = random_scores(n, 6, dtype, levels=20)
    keep = batched_nms(boxes, scores, groups, 0.5)
    assert keep.tolist() == ref_batched_nms(boxes, scores, groups, 0.5)
    assert sorted(count_padded_path) == [(1, 120, 4), (60, 1, 4)]
    # boxes of different groups never suppress each other
    assert (groups[keep].unique().numel()) == 61


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [7, 8])
def test_batched_nms_unequal_groups_bucketed(dtype, seed, count_padded_path):
    # 20 groups of sizes 1, 2, 4, ... up to 60 (R = 381), padded per size bucket
    sizes = [1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 18, 20, 22, 25, 30, 35, 40, 50, 60][: 20]
    g = torch.Generator().manual_seed(seed)
    groups = torch.cat([torch.full((s,), i * 2, dtype=torch.int64) for i, s in enumerate(sizes)])
    groups = groups[torch.randperm(len(groups), generator=g)]
    n = len(groups)
    assert len(sizes) * max(sizes) ** 2 < n * n
    boxes = random_boxes(n, seed, dtype, size=30.0)
    scores = random_scores(n, seed, dtype, levels=50)  # ties across and within groups
    for threshold in (0.3, 0.6):
        keep = batched_nms(boxes, scores, groups, threshold)
        assert keep.tolist() == ref_batched_nms(boxes, scores, groups, threshold)
    # buckets (up to 8], (8, 16], (16, 32], (32, 64], padded to their largest group, per call
    assert sorted(count_padded_path[:4]) == [(4, 16, 4), (4, 60, 4), (5, 30, 4), (7, 8, 4)]
    padded_entries = sum(g * k * k for g, k, _ in count_padded_path[:4])
    assert len(count_padded_path) == 8  # 4 buckets, 2 thresholds
    assert padded_entries <= 4 * sum(max(s, 8) ** 2 for s in sizes)  # about sum(size^2), not R^2
    assert padded_entries < n * n / 5


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_nms_identical_boxes_in_different_groups(dtype):
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 6, dtype=dtype)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.7, 0.2], dtype=dtype)
    groups = torch.tensor([0, 1, 2, 0, 1, 2])
    keep = batched_nms(boxes, scores, groups, 0.5)
    assert keep.tolist() == ref_batched_nms(boxes, scores, groups, 0.5) == [1, 2, 3]


def test_batched_nms_equals_offset_trick():
    # per-group NMS equals one NMS over boxes moved apart by group (torchvision's offset trick)
    n = 200
    # coordinates on a 1/8 grid, so shifting by multiples of 1000 below is exact in float32
    boxes = torch.round(random_boxes(n, 9, torch.float32, size=30.0) * 8) / 8
    scores = random_scores(n, 9, torch.float32, levels=30)
    groups = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(9))
    expected = ref_batched_nms(boxes, scores, groups, 0.5)
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == expected
    # offset trick: one group, boxes of different groups moved far apart
    shifted = boxes + groups[:, None].to(torch.float32) * 1000
    assert batched_nms(shifted, scores, torch.zeros_like(groups), 0.5).tolist() == expected
