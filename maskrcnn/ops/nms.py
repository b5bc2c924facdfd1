"""Greedy non-maximum suppression without a Python loop over boxes.

Greedy NMS keeps box i (in descending score order) unless an earlier *kept* box overlaps it by
more than the threshold. With S[j, i] = "j comes before i and IoU(j, i) > t", the kept set K is
the unique fixed point of K[i] = not any_j(S[j, i] and K[j]): K[0] is always kept, and K[i]
depends only on K[j < i]. Iterating from "keep everything" settles the first t boxes after t
steps, and usually converges in a handful of matrix steps, because suppression chains are
short; to bound the worst case (a chain as long as the input) it is done block by block, see
`_greedy_keep`. The result is exactly torchvision's greedy NMS (stable sort, IoU as
inter / ((area_i + area_j) - inter) in the boxes' dtype, drop when IoU > threshold compared in
double precision).
"""
from __future__ import annotations

import torch
from torch import Tensor



# Boxes settled together by `_greedy_keep`.
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


def _greedy_keep(suppresses: Tensor, block: int | None = None) -> Tensor:
    """suppresses: bool or 0/1 float (..., R, R), [j, i] true when j is ranked before i and
    overlaps it.
    Returns the bool (..., R) greedy keep mask.

    Blocks of `block` boxes are settled in rank order: first every box of the block that a kept
    box of an earlier block suppresses is dropped (one matrix product), then the block's own
    fixed point is iterated from "keep the rest". A block settles in at most `block` + 1 steps,
    so a long suppression chain costs O(R * block^2), not O(R^3) as one global iteration would.
    The "any kept j suppresses i" tests are 0/1 matrix products (exact: counts far below 2^24).
    """
    block = block or _BLOCK
    s = suppresses.to(torch.float32)
    num = s.shape[-1]
    keep = torch.ones(s.shape[:-1], dtype=torch.float32, device=s.device)
    for start in range(0, num, block):
        # A loop over blocks of ranked boxes (R / block steps), not over boxes.
        end = min(start + block, num)
        allowed = torch.ones_like(keep[..., start:end], dtype=torch.bool)
        if start > 0:
            allowed = (keep[..., None, :start] @ s[..., :start, start:end])[..., 0, :] == 0
        local = s[..., start:end, start:end]
        block_keep = allowed.to(torch.float32)
        while True:
            hit = (block_keep[..., None, :] @ local)[..., 0, :] > 0
            new_keep = (allowed & ~hit).to(torch.float32)
            if torch.equal(new_keep, block_keep):
                break
            block_keep = new_keep
        keep[..., start:end] = block_keep
    return keep.bool()


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
        # [j, i] = 1 where j ranks before i and IoU > t, made in place in the IoU tensor (the
        # RPN's groups are 2000 boxes: each (G, R, R) pass is tens of MB). Padding slots come
        # after a group's boxes, so they can never suppress one; no validity mask is needed.
        suppresses = _batched_box_iou(padded).gt_(threshold).triu_(1)
        keep[in_bucket] = _greedy_keep(suppresses)[rows, cols]
    return order[keep]


def _batched_box_iou(boxes: Tensor) -> Tensor:
    """(G, R, 4) -> (G, R, R) IoU within each group, same arithmetic as `box_iou` (so the same
    bits), one coordinate at a time and in place: about half the memory traffic of (G, R, R, 2)
    corner tensors."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1) * (y2 - y1)
    w = torch.minimum(x2[:, :, None], x2[:, None, :])
    w -= torch.maximum(x1[:, :, None], x1[:, None, :])
    h = torch.minimum(y2[:, :, None], y2[:, None, :])
    h -= torch.maximum(y1[:, :, None], y1[:, None, :])
    inter = w.clamp_(min=0).mul_(h.clamp_(min=0))
    union = area[:, :, None] + area[:, None, :]
    union -= inter
    return inter.div_(union)
