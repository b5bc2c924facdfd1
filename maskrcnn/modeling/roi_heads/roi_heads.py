"""Second stage: sample RoIs from the proposals, run the box, mask and keypoint branches, compute their
losses (training targets given) and/or turn their outputs into detections.

Shape shorthand: N images, Ri proposals of image i, K classes including background, M = 28.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...ops import BoxCoder, MultiScaleRoIAlign, batched_nms
from ...structures import Detections
from ..matcher import BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD, Matcher, crowd_mask, match_to_gt, sample_balanced
from .box_head import BoxHead, BoxPredictor, box_losses, postprocess_boxes
from .keypoint_head import KeypointHead, decode_keypoints, keypoint_loss
from .mask_head import MaskHead, mask_loss, mask_probabilities, select_class


class RoIHeads(nn.Module):
    """forward(features (the FPN levels; the poolers use the ones they have strides for),
               proposals N x (Ri, 4), image_sizes, targets, want_detections)
        -> (detections, losses)

    detections (when wanted): one `Detections` per image in resized-image coordinates, masks as
    (D, M, M) probabilities of each box's class (None without a mask branch), keypoints (D, P, 3)
    and their scores (D, P) (None without a keypoint branch).
    `nms(boxes, scores, groups, iou_threshold) -> kept indices` is set by the builder, so an
    export can swap in its own operator.
    """

    def __init__(
        self,
        *,
        box_pooler: MultiScaleRoIAlign,
        box_head: BoxHead,
        box_predictor: BoxPredictor,
        mask_pooler: MultiScaleRoIAlign | None = None,
        mask_head: MaskHead | None = None,
        keypoint_pooler: MultiScaleRoIAlign | None = None,
        keypoint_head: KeypointHead | None = None,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        min_size: float = 1e-2,
        nms=batched_nms,
        mask_loss: str = "sigmoid",
    ):
        """mask_loss: "sigmoid" (per-class binary, the paper's) or "softmax" (multinomial over
        the classes, its Table 2b ablation); it also decides how masks become probabilities."""
        super().__init__()
        if mask_loss not in ("sigmoid", "softmax"):
            raise ValueError(f"mask_loss must be 'sigmoid' or 'softmax', got {mask_loss!r}")
        self.mask_loss = mask_loss
        self.min_size = min_size
        self.nms = nms
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head
        self.keypoint_pooler = keypoint_pooler
        self.keypoint_head = keypoint_head
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    @property
    def has_mask(self) -> bool:
        return self.mask_head is not None

    @property
    def has_keypoints(self) -> bool:
        return self.keypoint_head is not None

    def forward(
        self,
        features: list[Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
        want_detections: bool = True,
        score_thresh: float | None = None,
    ):
        losses: dict[str, Tensor] = {}
        if targets is not None:
            losses = self.losses(features, proposals, targets)
        detections = None
        if want_detections:
            detections = self.detect(features, proposals, image_sizes, score_thresh)
        return detections, losses

    def detect(
        self,
        features: list[Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        score_thresh: float | None = None,
    ) -> list[Detections]:
        """Inference path. `score_thresh` overrides the configured one for this call; raising it
        means the mask branch runs on fewer boxes."""
        box_features = self.box_head(self.box_pooler(features, proposals))
        class_logits, deltas = self.box_predictor(box_features)
        results = postprocess_boxes(
            class_logits, deltas, proposals, image_sizes, self.box_coder,
            self.score_thresh if score_thresh is None else score_thresh,
            self.nms_thresh, self.detections_per_img, min_size=self.min_size, nms=self.nms,
        )
        detections = [Detections(boxes=b, scores=s, labels=l) for b, s, l in results]
        boxes = [r[0] for r in results]
        if self.has_mask:
            labels = torch.cat([r[2] for r in results])
            mask_probs = mask_probabilities(self.mask_head(self.mask_pooler(features, boxes)), labels,
                                            self.mask_head.first_class, self.mask_loss)
            for det, m in zip(detections, mask_probs.split([b.shape[0] for b in boxes])):
                det.masks = m
        if self.has_keypoints:
            logits = self.keypoint_head(self.keypoint_pooler(features, boxes))
            for det, k, s in zip(detections, *decode_keypoints(logits, boxes)):
                det.keypoints, det.keypoint_scores = k, s
        return detections

    def mask_logits(self, features: list[Tensor], boxes: list[Tensor], labels: Tensor) -> Tensor:
        """(sum Di, M, M) mask logits of each box's own class."""
        return select_class(self.mask_head(self.mask_pooler(features, boxes)), labels, self.mask_head.first_class)

    def sample_proposals(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Match proposals (plus the gt boxes) to gt, then sample a 1:3 positive:negative batch.

        Returns per image: sampled proposals, labels (0 = background), matched gt index (into
        the image's non-crowd gt), and regression targets (R, 4)."""
        out_props, out_labels, out_idx, out_targets = [], [], [], []
        for props, target in zip(proposals, targets):
            crowd = crowd_mask(target)
            gt_boxes, gt_labels = target["boxes"][~crowd], target["labels"][~crowd]
            # Adding the gt boxes guarantees positives early in training, when proposals are poor.
            props = torch.cat([props, gt_boxes.to(props.dtype)])
            matches = match_to_gt(self.matcher, gt_boxes, target["boxes"][crowd], props)
            matched = matches.clamp(min=0)
            labels = gt_labels[matched] if gt_boxes.shape[0] else torch.zeros_like(matches)
            labels = torch.where(matches == BELOW_LOW_THRESHOLD, torch.zeros_like(labels), labels)
            labels = torch.where(matches == BETWEEN_THRESHOLDS, torch.full_like(labels, -1), labels)
            pos, neg = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
            keep = torch.cat([pos, neg])
            props, labels, matched = props[keep], labels[keep], matched[keep]
            matched_boxes = gt_boxes[matched] if gt_boxes.shape[0] else torch.zeros_like(props)
            reg = torch.zeros_like(props)
            npos = pos.numel()
            reg[:npos] = self.box_coder.encode(matched_boxes[:npos], props[:npos])
            out_props.append(props)
            out_labels.append(labels)
            out_idx.append(matched)
            out_targets.append(reg)
        return out_props, out_labels, out_idx, out_targets

    def losses(
        self, features: list[Tensor], proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        proposals = [p.detach() for p in proposals]
        props, labels, matched_idxs, reg_targets = self.sample_proposals(proposals, targets)
        box_features = self.box_head(self.box_pooler(features, props))
        class_logits, deltas = self.box_predictor(box_features)
        losses = box_losses(class_logits, deltas, torch.cat(labels), torch.cat(reg_targets))
        # The mask and keypoint branches train on positive RoIs only, against the matched gt.
        positive = [torch.nonzero(l > 0).squeeze(1) for l in labels]
        if self.has_mask:
            pos_props = [p[i] for p, i in zip(props, positive)]
            pos_labels = torch.cat([l[i] for l, i in zip(labels, positive)])
            pos_matched = [m[i] for m, i in zip(matched_idxs, positive)]
            gt_masks = [target["masks"][~crowd_mask(target)] for target in targets]
            mask_logits = self.mask_head(self.mask_pooler(features, pos_props))
            losses["loss_mask"] = mask_loss(mask_logits, pos_labels, pos_props, gt_masks, pos_matched,
                                            self.mask_head.first_class, self.mask_loss)
        if self.has_keypoints:
            # Of the positives, those whose gt has a labelled keypoint (persons, not other
            # classes): the rest have no valid heatmap, so the loss (torchvision's, a mean over
            # the valid heatmaps) is the same without them.
            gt_keypoints = [target["keypoints"][~crowd_mask(target)] for target in targets]
            labelled = [(kp[..., 2] > 0).any(dim=1) for kp in gt_keypoints]
            kp_rois = [i[has[m[i]]] for i, has, m in zip(positive, labelled, matched_idxs)]
            kp_props = [p[i] for p, i in zip(props, kp_rois)]
            kp_matched = [m[i] for m, i in zip(matched_idxs, kp_rois)]
            logits = self.keypoint_head(self.keypoint_pooler(features, kp_props))
            losses["loss_keypoint"] = keypoint_loss(logits, kp_props, gt_keypoints, kp_matched)
        return losses
