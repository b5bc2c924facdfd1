"""Box branch of the second stage: RoI features -> class scores and class-specific box deltas.

Shape shorthand: R RoIs, C channels, P pooled size (7), K classes including background (0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import BoxCoder, batched_nms, clip_boxes, remove_small_boxes
from ..layers import NormFactory, conv_stack, full_precision, init_for_relu


class BoxHead(nn.Module):
    """Optional 3x3 convs, then fully connected layers with ReLU.

    v1 (paper, torchvision): no convs, two FC of 1024. v2 (torchvision `_v2`): four conv+norm
    layers, one FC of 1024.
    forward((R, C, P, P)) -> (R, fc_dims[-1])
    """

    def __init__(
        self,
        *,
        in_channels: int,
        pooled_size: int,
        conv_dims: tuple[int, ...] = (),
        fc_dims: tuple[int, ...] = (1024, 1024),
        norm: NormFactory | None = None,
    ):
        super().__init__()
        self.convs = conv_stack(in_channels, conv_dims, norm)
        fcs = []
        in_features = (conv_dims[-1] if conv_dims else in_channels) * pooled_size * pooled_size
        for dim in fc_dims:
            fcs.append(nn.Linear(in_features, dim))
            in_features = dim
        self.fcs = nn.ModuleList(fcs)
        self.out_features = in_features
        init_for_relu(self.convs.modules())

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x).flatten(1)
        for fc in self.fcs:
            x = torch.relu_(fc(x))
        return x


class BoxPredictor(nn.Module):
    """forward((R, D)) -> class logits (R, K), box deltas (R, 4K) for every class, background
    (class 0) first.

    `background_last=True` is Detectron2's layer layout: `cls_score` has the background as its
    last output and `bbox_pred` has 4(K - 1) outputs, none for the background. Its outputs are
    rearranged to the layout above (background logit moved to the front, zero deltas for the
    background), so the losses and the post-processing are the same for both layouts.
    """

    def __init__(self, *, in_features: int, num_classes: int, background_last: bool = False):
        super().__init__()
        self.background_last = background_last
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, (num_classes - 1 if background_last else num_classes) * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        class_logits, deltas = full_precision(self.cls_score(x)), full_precision(self.bbox_pred(x))
        if self.background_last:
            # (R, [c1..cK-1, bg]) -> (R, [bg, c1..cK-1]); (R, 4(K-1)) -> (R, 4K), background zeros
            class_logits = torch.cat([class_logits[:, -1:], class_logits[:, :-1]], dim=1)
            deltas = torch.cat([deltas.new_zeros((deltas.shape[0], 4)), deltas], dim=1)
        return class_logits, deltas


def box_losses(
    class_logits: Tensor, deltas: Tensor, labels: Tensor, regression_targets: Tensor
) -> dict[str, Tensor]:
    """Softmax cross-entropy over all sampled RoIs; smooth-L1 (beta 1/9) on the deltas of each
    positive RoI's own class, normalized by the number of sampled RoIs (torchvision).

    class_logits (R, K), deltas (R, 4K), labels int64 (R,), regression_targets (R, 4)."""
    classification_loss = F.cross_entropy(class_logits, labels)
    positive = torch.nonzero(labels > 0).squeeze(1)
    deltas = deltas.reshape(deltas.shape[0], -1, 4)  # (R, 4K) -> (R, K, 4)
    box_loss = F.smooth_l1_loss(
        deltas[positive, labels[positive]], regression_targets[positive], beta=1 / 9, reduction="sum"
    )
    return {"loss_classifier": classification_loss, "loss_box_reg": box_loss / max(1, labels.numel())}


def postprocess_boxes(
    class_logits: Tensor,
    deltas: Tensor,
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    box_coder: BoxCoder,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    min_size: float = 1e-2,
    nms=batched_nms,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per-class decode, clip, score > thresh, drop tiny (smaller than `min_size`; 0 keeps all
    but empty boxes), per-class NMS (`nms(boxes, scores, groups, iou_threshold)`), keep the top
    ones.

    Returns per image (boxes (D, 4), scores (D,), labels int64 (D,)), best first.
    """
    num_classes = class_logits.shape[-1]
    boxes = box_coder.decode(deltas, torch.cat(proposals))  # (R, K, 4)
    scores = F.softmax(class_logits, -1)
    counts = [p.shape[0] for p in proposals]
    results = []
    for boxes_i, scores_i, size in zip(boxes.split(counts), scores.split(counts), image_sizes):
        boxes_i = clip_boxes(boxes_i, size)
        labels_i = torch.arange(num_classes, device=boxes_i.device).view(1, -1).expand_as(scores_i)
        # drop the background column, then one candidate per (RoI, class) pair, row-major
        boxes_i = boxes_i[:, 1:].reshape(-1, 4)
        scores_i = scores_i[:, 1:].reshape(-1)
        labels_i = labels_i[:, 1:].reshape(-1)
        keep = (scores_i > score_thresh) & remove_small_boxes(boxes_i, min_size)
        boxes_i, scores_i, labels_i = boxes_i[keep], scores_i[keep], labels_i[keep]
        keep = nms(boxes_i, scores_i, labels_i, nms_thresh)[:detections_per_img]
        results.append((boxes_i[keep], scores_i[keep], labels_i[keep]))
    return results
