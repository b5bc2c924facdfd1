"""Region Proposal Network (Ren et al. 2015) over the FPN levels.

Shape shorthand: N images, L levels, A anchors per location, Hl x Wl the size of level l,
S = sum over levels of Hl * Wl * A (anchors per image).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import BoxCoder, batched_nms, clip_boxes, remove_small_boxes
from ..structures import ImageList
from .anchors import AnchorGenerator
from .layers import ConvNormAct, full_precision
from .matcher import BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD, Matcher, crowd_mask, match_to_gt, sample_balanced


class RPNHead(nn.Module):
    """Shared conv(s) + ReLU, then per location A objectness logits and 4A box deltas.

    forward(features: L x (N, C, Hl, Wl)) -> (L x (N, A, Hl, Wl), L x (N, 4A, Hl, Wl))
    """

    def __init__(self, *, in_channels: int, num_anchors: int, num_convs: int = 1):
        super().__init__()
        self.conv = nn.Sequential(*(ConvNormAct(in_channels, in_channels, 3) for _ in range(num_convs)))
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        objectness, deltas = [], []
        for x in features:
            x = self.conv(x)
            objectness.append(self.objectness(x))
            deltas.append(self.deltas(x))
        return objectness, deltas


def flatten_head_outputs(objectness: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-level head maps -> (N, S) logits and (N, S, 4) deltas in anchor order (y, x, a)."""
    flat_obj, flat_deltas = [], []
    for obj, dlt in zip(objectness, deltas):
        n, a, h, w = obj.shape
        flat_obj.append(obj.permute(0, 2, 3, 1).reshape(n, -1))  # (N, A, H, W) -> (N, H*W*A)
        # (N, A*4, H, W) -> (N, A, 4, H, W) -> (N, H, W, A, 4) -> (N, H*W*A, 4)
        flat_deltas.append(dlt.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
    return full_precision(torch.cat(flat_obj, dim=1)), full_precision(torch.cat(flat_deltas, dim=1))


class RPN(nn.Module):
    """forward(images, features, targets=None) -> (proposals: N x (Ri, 4), losses).

    Proposals are in the coordinates of the resized (unpadded) images and carry no gradient.
    Losses are computed whenever targets are given (train or eval mode).
    `nms(boxes, scores, levels, iou_threshold) -> kept indices` is set by the builder, so an
    export can swap in its own operator. NMS ranks proposals by objectness probability
    (torchvision) or, with `rank_by_logits`, by the logit itself (Detectron2: the same order,
    except that distinct logits can round to one float32 probability).
    """

    def __init__(
        self,
        *,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        pre_nms_topk: dict[bool, int] = {True: 2000, False: 1000},
        post_nms_topk: dict[bool, int] = {True: 2000, False: 1000},
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
        min_size: float = 1e-3,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        box_coder_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        rank_by_logits: bool = False,
        nms=batched_nms,
    ):
        super().__init__()
        self.nms = nms
        self.rank_by_logits = rank_by_logits
        self.head = head
        self.anchor_generator = anchor_generator
        self.pre_nms_topk = dict(pre_nms_topk)
        self.post_nms_topk = dict(post_nms_topk)
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = min_size
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.box_coder = BoxCoder(box_coder_weights)

    def forward(
        self, images: ImageList, features: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        objectness_maps, delta_maps = self.head(features)
        feature_sizes = [tuple(f.shape[-2:]) for f in features]
        anchors_per_level = self.anchor_generator(tuple(images.tensor.shape[-2:]), feature_sizes)
        anchors = torch.cat(anchors_per_level, dim=0)  # (S, 4), the same for every image
        objectness, deltas = flatten_head_outputs(objectness_maps, delta_maps)

        counts = [a.shape[0] for a in anchors_per_level]
        proposals = self.select_proposals(anchors, deltas.detach(), objectness.detach(), counts, images.image_sizes)

        losses = {}
        if targets is not None:
            losses = self.losses(anchors, objectness, deltas, targets)
        return proposals, losses

    def select_proposals(
        self, anchors: Tensor, deltas: Tensor, objectness: Tensor, counts: list[int],
        image_sizes: list[tuple[int, int]],
    ) -> list[Tensor]:
        """Top-k per level, decode, clip, drop tiny boxes (min_size 0: empty ones), NMS per
        level, keep the best per image.

        anchors (S, 4), deltas (N, S, 4), objectness (N, S); only the top-k anchors are decoded."""
        pre_nms_topk = self.pre_nms_topk[self.training]
        top_idx, levels = [], []
        start = 0
        for level, count in enumerate(counts):
            k = min(pre_nms_topk, count)
            idx = objectness[:, start:start + count].topk(k, dim=1).indices + start  # (N, k)
            top_idx.append(idx)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=objectness.device))
            start += count
        top_idx = torch.cat(top_idx, dim=1)
        levels = torch.cat(levels)
        batch = torch.arange(objectness.shape[0], device=objectness.device)[:, None]
        logits = objectness[batch, top_idx]
        probs = torch.sigmoid(logits)
        scores = logits if self.rank_by_logits else probs
        # (N, K, 4) deltas of the kept anchors -> (N, K, 4) boxes
        boxes = self.box_coder.decode(deltas[batch, top_idx].reshape(-1, 4), anchors[top_idx].reshape(-1, 4))
        boxes = boxes.view(top_idx.shape[0], -1, 4)

        proposals = []
        for boxes_per_image, scores_per_image, probs_per_image, size in zip(boxes, scores, probs, image_sizes):
            boxes_per_image = clip_boxes(boxes_per_image, size)
            keep = remove_small_boxes(boxes_per_image, self.min_size) & (probs_per_image >= self.score_thresh)
            boxes_per_image, scores_per_image, lvl = boxes_per_image[keep], scores_per_image[keep], levels[keep]
            keep = self.nms(boxes_per_image, scores_per_image, lvl, self.nms_thresh)
            proposals.append(boxes_per_image[keep[: self.post_nms_topk[self.training]]])
        return proposals

    def losses(
        self, anchors: Tensor, objectness: Tensor, deltas: Tensor, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Binary cross-entropy on sampled anchors and smooth-L1 (beta 1/9) on sampled positives,
        both normalized by the number of sampled anchors, as in torchvision."""
        labels, pos_idx, neg_idx, gt_for_pos = [], [], [], []
        num_anchors = anchors.shape[0]
        for i, target in enumerate(targets):
            crowd = crowd_mask(target)
            gt_boxes = target["boxes"][~crowd]
            matches = match_to_gt(self.matcher, gt_boxes, target["boxes"][crowd], anchors)
            label = (matches >= 0).to(objectness.dtype)
            label[matches == BETWEEN_THRESHOLDS] = -1
            label[matches == BELOW_LOW_THRESHOLD] = 0
            pos, neg = sample_balanced(label, self.batch_size_per_image, self.positive_fraction)
            labels.append(label)
            pos_idx.append(pos + i * num_anchors)
            neg_idx.append(neg + i * num_anchors)
            gt_for_pos.append(gt_boxes[matches[pos]] if pos.numel() else anchors.new_zeros((0, 4)))
        pos_idx = torch.cat(pos_idx)
        sampled = torch.cat([pos_idx, torch.cat(neg_idx)])
        labels = torch.cat(labels)
        objectness = objectness.reshape(-1)
        deltas = deltas.reshape(-1, 4)

        anchors_for_pos = anchors[pos_idx % num_anchors]
        regression_targets = self.box_coder.encode(torch.cat(gt_for_pos), anchors_for_pos)
        box_loss = F.smooth_l1_loss(deltas[pos_idx], regression_targets, beta=1 / 9, reduction="sum")
        box_loss = box_loss / max(1, sampled.numel())
        objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}
