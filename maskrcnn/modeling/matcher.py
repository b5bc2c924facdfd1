"""Matching predictions to ground truth, and sampling balanced training examples.

Shared by the RPN (anchors) and the RoI heads (proposals).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..ops import box_ioa, box_iou
from ..ops.masks import chunk_ranges

BELOW_LOW_THRESHOLD = -1  # background
BETWEEN_THRESHOLDS = -2  # ignored in the loss


class Matcher:
    """Assigns each prediction the ground truth it overlaps most.

    match(iou (G, P)) -> int64 (P,): the matched gt index, or BELOW_LOW_THRESHOLD when the best
    IoU < low, or BETWEEN_THRESHOLDS when low <= IoU < high. With `allow_low_quality_matches`,
    the predictions that are some gt's best match (ties included) keep that match even below
    `high` (Faster R-CNN: every gt gets at least one anchor).
    """

    def __init__(self, high: float, low: float, allow_low_quality_matches: bool = False):
        if low > high:
            raise ValueError(f"low threshold {low} must not exceed high threshold {high}")
        self.high = high
        self.low = low
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> Tensor:
        matched_vals, matches = iou.max(dim=0)
        return self._assign(matched_vals, matches, self._ties_best(iou) if self.allow_low_quality_matches else None)

    def match_boxes(self, gt_boxes: Tensor, boxes: Tensor) -> Tensor:
        """`self(box_iou(gt_boxes, boxes))`, computed for a chunk of gt boxes at a time: the IoU
        of 3,000 instances with the 65,000 anchors of a 512 px image takes 5 GB at once (its
        intermediate (G, P, 2) tensors). Exactly the same result: running maxima keep the first
        maximal index (and NaN), as `max` does."""
        num_gt, num_boxes = gt_boxes.shape[0], boxes.shape[0]
        best = torch.full((num_boxes,), -torch.inf, dtype=boxes.dtype, device=boxes.device)
        best_index = torch.zeros((num_boxes,), dtype=torch.int64, device=boxes.device)
        is_best = torch.zeros((num_boxes,), dtype=torch.bool, device=boxes.device)
        for part in chunk_ranges(num_gt, 7 * num_boxes):  # box_iou holds ~7 floats per pair
            iou = box_iou(gt_boxes[part], boxes)
            values, index = iou.max(dim=0)
            better = (values > best) | (values.isnan() & ~best.isnan())
            best = torch.where(better, values, best)
            best_index = torch.where(better, index + part.start, best_index)
            if self.allow_low_quality_matches:
                is_best |= self._ties_best(iou)
        return self._assign(best, best_index, is_best if self.allow_low_quality_matches else None)

    @staticmethod
    def _ties_best(iou: Tensor) -> Tensor:
        """(P,) bool: predictions that tie some gt's best IoU."""
        return (iou == iou.max(dim=1).values[:, None]).any(dim=0)

    def _assign(self, matched_vals: Tensor, matches: Tensor, is_best: Tensor | None) -> Tensor:
        all_matches = matches.clone()
        matches[matched_vals < self.low] = BELOW_LOW_THRESHOLD
        matches[(matched_vals >= self.low) & (matched_vals < self.high)] = BETWEEN_THRESHOLDS
        if is_best is not None:
            matches = torch.where(is_best, all_matches, matches)
        return matches


def crowd_mask(target: dict[str, Tensor]) -> Tensor:
    """bool (G,): which of one image's gt instances are crowd regions (none if unflagged)."""
    crowd = target.get("iscrowd")
    if crowd is None:
        return torch.zeros(target["boxes"].shape[0], dtype=torch.bool, device=target["boxes"].device)
    return crowd.bool()


def match_to_gt(
    matcher: Matcher,
    gt_boxes: Tensor,
    crowd_boxes: Tensor,
    boxes: Tensor,
    crowd_ioa_thresh: float = 0.7,
) -> Tensor:
    """Match (P, 4) boxes to (G, 4) gt boxes; predictions mostly inside a crowd region are ignored.

    Returns int64 (P,) as `Matcher`. With no gt, every prediction is background.
    """
    if gt_boxes.shape[0] == 0:
        matches = torch.full((boxes.shape[0],), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=boxes.device)
    else:
        matches = matcher.match_boxes(gt_boxes, boxes)
    if crowd_boxes.shape[0] > 0:
        # A crowd box covers many unlabelled instances: a prediction inside it is neither a
        # positive nor a reliable negative, so it is left out of the loss.
        in_crowd = box_ioa(boxes, crowd_boxes).max(dim=1).values >= crowd_ioa_thresh
        matches = torch.where(in_crowd & (matches < 0), torch.full_like(matches, BETWEEN_THRESHOLDS), matches)
    return matches


def sample_balanced(labels: Tensor, batch_size: int, positive_fraction: float) -> tuple[Tensor, Tensor]:
    """Random subset of positives (label >= 1) and negatives (label == 0), ignoring -1.

    At most `positive_fraction * batch_size` positives; negatives fill the rest.
    Returns (positive indices, negative indices), int64.
    """
    positive = torch.nonzero(labels >= 1).squeeze(1)
    negative = torch.nonzero(labels == 0).squeeze(1)
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    perm_pos = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
    perm_neg = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
    return positive[perm_pos], negative[perm_neg]
