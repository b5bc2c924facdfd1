"""Greedy non-maximum suppression without a Python loop over boxes.

Greedy NMS keeps box i (in descending score order) unless an earlier *kept* box overlaps it by
more than the threshold. With S[j, i] = "j comes before i and IoU(j, i) > t", the kept set K is
the unique fixed point of K[i] = not any_j(S[j, i] and K[j]): K[0] is always kept, and K[i]
depends only on K[j < i]. Iterating from "keep everything" settles the first t boxes after t
steps, and usually converges in a handful of matrix steps, because suppression chains are
short; to bound the worst case (a chain as long as the input) it is done block by block, see
`_padded_keep`. The result is exactly torchvision's greedy NMS (stable sort, IoU as
inter / ((area_i + area_j) - inter) in the boxes' dtype, drop when IoU > threshold compared in
double precision).
"""
from __future__ import annotations

import torch
from torch import Tensor



# Boxes settled together by `_padded_keep`.
_BLOCK = 256
# Smallest padded group size (smaller groups share one bucket).
_MIN_BUCKET = 8


def _threshold_for_dtype(iou_threshold: float, dtype: torch.dtype) -> float:
    """The largest value t of `dtype` with t <= iou_threshold, so `iou > t` in that dtype equals
    `iou > iou_threshold` done in double precision."""
    t = torch.tensor(iou_threshold, dtype=dtype)
    if t.double().item() > iou_threshold:
        t = torch.nextafter(t, torch.tensor(float("-inf"), dtype=dtype))
    return t.item()


def _padded_keep(boxes: Tensor, threshold: float) -> Tensor:
    """Greedy keep mask (G, R) of G groups of boxes (G, R, 4), each group in rank order and
    padded at its end with zero boxes (which overlap nothing, so they never suppress a box).

    Blocks of `_BLOCK` boxes are settled in rank order. A block's boxes are first tested against
    the boxes kept so far (only those: they are a third to a half of an RPN level's), then the
    block's own greedy pass is its fixed point, see `_settle`. So the IoU is computed for about
    R * kept + R * block pairs rather than R^2, and no (G, R, R) tensor is ever built: at the
    RPN's 2000 boxes per level that is the difference between 100 MB passes and a few MB.
    """
    groups, num, _ = boxes.shape
    keep = torch.zeros((groups, num), dtype=torch.bool, device=boxes.device)
    kept = boxes[:, :0]  # (G, K, 4): the kept boxes of the blocks so far, front-packed
    for start in range(0, num, _BLOCK):
        # A loop over blocks of ranked boxes (R / block steps), not over boxes.
        block = boxes[:, start:start + _BLOCK]
        if kept.shape[1]:
            allowed = ~_pairwise_iou(kept, block).gt_(threshold).any(1)
        else:
            allowed = torch.ones(block.shape[:2], dtype=torch.bool, device=boxes.device)
        block_keep = _settle(allowed, _pairwise_iou(block, block).gt_(threshold).triu_(1))
        keep[:, start:start + block.shape[1]] = block_keep
        count = int(block_keep.sum(1).max())
        if count:  # append each group's newly kept boxes; shorter groups padded with zero boxes
            first = torch.sort((~block_keep).to(torch.uint8), dim=1, stable=True).indices[:, :count]
            picked = block.gather(1, first[..., None].expand(-1, -1, 4))
            picked = torch.where(block_keep.gather(1, first)[..., None], picked, torch.zeros_like(picked))
            kept = torch.cat([kept, picked], 1)
    return keep


def _settle(allowed: Tensor, suppresses: Tensor) -> Tensor:
    """The greedy keep mask (G, B) of one block: boxes not `allowed` (suppressed by an earlier
    block) are dropped, and suppresses[g, j, i] says j ranks before i and overlaps it. Iterated
    from "keep every allowed box", which settles the first t boxes after t steps, so at most
    B + 1 steps; the "any kept j suppresses i" test is a 0/1 matrix product (exact: counts far
    below 2^24)."""
    local = suppresses.to(torch.float32)
    block_keep = allowed.to(torch.float32)
    while True:
        hit = (block_keep[..., None, :] @ local)[..., 0, :] > 0
        new_keep = (allowed & ~hit).to(torch.float32)
        if torch.equal(new_keep, block_keep):
            return new_keep.bool()
        block_keep = new_keep


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices (int64) of the boxes kept by greedy NMS, in descending score order."""
    return batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.int64), iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS applied independently within each group (class or level).

    boxes (R, 4), scores (R,), groups int (R,). Returns kept indices sorted by descending score.
    """
    num = boxes.shape[0]
    if num == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    threshold = _threshold_for_dtype(iou_threshold, boxes.dtype)
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes, groups = boxes[order], groups[order]

    # Per-group IoU matrices, padded to a common size. Groups are bucketed by size (powers of
    # two), so a few large groups (RPN levels) and many small ones (classes) both cost about
    # sum(group size^2), never (all boxes)^2. The loop runs over buckets, not boxes.
    _, group_of_box, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    by_group = torch.sort(group_of_box, stable=True).indices  # score order within each group
    starts = torch.cumsum(counts, 0) - counts
    slot_sorted = torch.arange(num, device=boxes.device) - starts[group_of_box[by_group]]
    slot = torch.empty_like(slot_sorted)
    slot[by_group] = slot_sorted  # position of each box inside its group
    bucket_of_group = torch.ceil(torch.log2(counts.clamp(min=_MIN_BUCKET).double())).long()
    keep = torch.zeros(num, dtype=torch.bool, device=boxes.device)
    for bucket in torch.unique(bucket_of_group).tolist():
        members = torch.nonzero(bucket_of_group == bucket).squeeze(1)  # groups in this bucket
        row_of_group = torch.full_like(counts, -1)
        row_of_group[members] = torch.arange(members.numel(), device=boxes.device)
        in_bucket = torch.nonzero(row_of_group[group_of_box] >= 0).squeeze(1)
        rows, cols = row_of_group[group_of_box[in_bucket]], slot[in_bucket]
        size = int(counts[members].max())
        padded = boxes.new_zeros((members.numel(), size, 4))
        padded[rows, cols] = boxes[in_bucket]
        # Padding slots come after a group's boxes and are zero boxes: no validity mask is needed.
        keep[in_bucket] = _padded_keep(padded, threshold)[rows, cols]
    return order[keep]


def _pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """(G, M, 4) x (G, N, 4) -> (G, M, N) IoU within each group, with `box_iou`'s arithmetic
    (so the same bits), one coordinate at a time and in place."""
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    w = torch.minimum(ax2[:, :, None], bx2[:, None, :])
    w -= torch.maximum(ax1[:, :, None], bx1[:, None, :])
    h = torch.minimum(ay2[:, :, None], by2[:, None, :])
    h -= torch.maximum(ay1[:, :, None], by1[:, None, :])
    inter = w.clamp_(min=0).mul_(h.clamp_(min=0))
    union = ((ax2 - ax1) * (ay2 - ay1))[:, :, None] + ((bx2 - bx1) * (by2 - by1))[:, None, :]
    union -= inter
    return inter.div_(union)
