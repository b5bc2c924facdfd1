"""RoI heads of the C4 model (the paper's ResNet-C4 head; Detectron2's `Res5ROIHeads`).

Each RoI is pooled 14x14 from the stride-16 C4 map and run through the res5 stage (its first
block has stride 2: 14x14 -> 7x7). That one 7x7 map serves both branches:
    box:  mean over the 7x7 -> class logits and box deltas (BoxPredictor)
    mask: 2x2 stride-2 transposed conv + ReLU -> 1x1 conv: one 14x14 mask logit map per class
          (MaskHead without 3x3 convs)
In training the mask branch takes the res5 features of the positive sampled RoIs, computed once
for both branches (as Detectron2); at inference it pools the detected boxes anew.

Shape shorthand: R RoIs, C4 / C5 channels of the res4 / res5 stages, K classes with background.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...ops import MultiScaleRoIAlign
from ...structures import Detections
from ..matcher import crowd_mask
from .box_head import BoxPredictor, box_losses, postprocess_boxes
from .mask_head import MaskHead, mask_loss, mask_probabilities, select_class
from .roi_heads import RoIHeads


class MeanPool(nn.Module):
    """(R, C, h, w) -> (R, C): the box head of the C4 model after res5."""

    def __init__(self, channels: int):
        super().__init__()
        self.out_features = channels

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class Res5RoIHeads(RoIHeads):
    """RoIHeads with res5 shared by the box and mask branches.

    res5: the ResNet's c5 stage ((R, C4, 14, 14) -> (R, C5, 7, 7)); pooler: one-level 14x14
    RoIAlign (or RoIPool / RoIWarp) at stride 16; mask_head: a MaskHead with no convs on C5
    channels (None: boxes only), class-specific or class-agnostic. The other options are
    RoIHeads', mask_loss ("sigmoid" / "softmax") among them.
    """

    def __init__(
        self,
        *,
        res5: nn.Sequential,
        res5_channels: int,
        pooler: MultiScaleRoIAlign,
        box_predictor: BoxPredictor,
        mask_head: MaskHead | None = None,
        **options,
    ):
        super().__init__(box_pooler=pooler, box_head=MeanPool(res5_channels), box_predictor=box_predictor,
                         mask_pooler=pooler if mask_head is not None else None, mask_head=mask_head, **options)
        self.res5 = res5

    def res5_features(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """(sum Ri, C5, 7, 7): res5 on each box's 14x14 RoIAlign of C4."""
        return self.res5(self.box_pooler(features, boxes))

    def detect(
        self,
        features: list[Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        score_thresh: float | None = None,
    ) -> list[Detections]:
        class_logits, deltas = self.box_predictor(self.box_head(self.res5_features(features, proposals)))
        results = postprocess_boxes(
            class_logits, deltas, proposals, image_sizes, self.box_coder,
            self.score_thresh if score_thresh is None else score_thresh,
            self.nms_thresh, self.detections_per_img, min_size=self.min_size, nms=self.nms,
        )
        if not self.has_mask:
            return [Detections(boxes=b, scores=s, labels=l) for b, s, l in results]
        boxes = [r[0] for r in results]
        mask_probs = mask_probabilities(self.mask_head(self.res5_features(features, boxes)),
                                        torch.cat([r[2] for r in results]), self.mask_head.first_class, self.mask_loss)
        return [Detections(boxes=b, scores=s, labels=l, masks=m)
                for (b, s, l), m in zip(results, mask_probs.split([b.shape[0] for b in boxes]))]

    def mask_logits(self, features: list[Tensor], boxes: list[Tensor], labels: Tensor) -> Tensor:
        """(sum Di, 14, 14) mask logits of each box's own class."""
        return select_class(self.mask_head(self.res5_features(features, boxes)), labels, self.mask_head.first_class)

    def losses(
        self, features: list[Tensor], proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        proposals = [p.detach() for p in proposals]
        props, labels, matched_idxs, reg_targets = self.sample_proposals(proposals, targets)
        res5 = self.res5_features(features, props)  # (sum Ri, C5, 7, 7), images in order
        class_logits, deltas = self.box_predictor(self.box_head(res5))
        losses = box_losses(class_logits, deltas, torch.cat(labels), torch.cat(reg_targets))
        if self.has_mask:
            # positives of every image, as indices into the concatenated RoIs
            starts = torch.tensor([0] + [p.shape[0] for p in props[:-1]], device=res5.device).cumsum(0)
            positive = [torch.nonzero(l > 0).squeeze(1) for l in labels]
            rows = torch.cat([i + start for i, start in zip(positive, starts)])
            gt_masks = [target["masks"][~crowd_mask(target)] for target in targets]
            losses["loss_mask"] = mask_loss(
                self.mask_head(res5[rows]), torch.cat([l[i] for l, i in zip(labels, positive)]),
                [p[i] for p, i in zip(props, positive)], gt_masks,
                [m[i] for m, i in zip(matched_idxs, positive)], self.mask_head.first_class, self.mask_loss,
            )
        return losses
