"""Mask R-CNN inference on a padded batch as one tensor program: no Python loop over images or
boxes, no data-dependent Python values, every variable-length step a tensor op. This is what
`export_onnx` traces (the normalize / resize / pad in front of it is `preprocess.py`).

It reuses the model's modules (backbone, RPN head, anchors, box and mask heads) and restates
the glue of `MaskRCNN.detect` + `postprocess` in batched form:

  - RPN: per level top-k, decode, clip, small-box and score filter, then one NMS node over all
    images with the FPN level as the NMS class (boxes (N, K, 4), scores (N, L, K), a box scoring
    -1 outside its own level); the best `post_nms_topk` per image are kept in an (N, P) layout
    (slots past an image's count are marked invalid).
  - RoI heads on the N * P proposals; per-class NMS is one NMS node whose batch entries are the
    (image, class) pairs (boxes (N * (K-1), P, 4)); the best `detections_per_img` per image.
  - The D detections of all images are then flattened (image index per detection), and the
    mask branch runs on exactly those.

Shape shorthand: N images, L levels, K classes with background, P proposals per image,
D detections of the whole batch, M = 28.

Ties are broken as the eager model breaks them (stable sorts; ONNX TopK and NonMaxSuppression
take the lower index first), so the same candidates survive in the same order.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling.layers import ConvNormAct, FrozenBatchNorm2d
from ..modeling.mask_rcnn import MaskRCNN
from ..modeling.roi_heads.mask_head import MaskHead
from ..modeling.roi_heads.roi_heads import RoIHeads
from ..modeling.rpn import RPN
from ..ops import MultiScaleRoIAlign, assign_fpn_levels
from ..ops.masks import _resize_weights
from . import ops

# Scores of boxes that must not take part in an NMS: below any real score (sigmoid and softmax
# outputs are >= 0), with the NMS score threshold between the two.
_EXCLUDED = -1.0
_NMS_SCORE_THRESHOLD = -0.5


def _norm_as_affine(norm: nn.Module) -> tuple[Tensor, Tensor] | None:
    """(scale, shift) of a frozen or eval-mode batch norm: y = x * scale + shift per channel."""
    if isinstance(norm, FrozenBatchNorm2d):
        return norm.scale_and_shift()  # what `conv_norm` folds, so the folded weights are the same
    if isinstance(norm, nn.BatchNorm2d) and not norm.training:
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        return scale, norm.bias - norm.running_mean * scale
    return None


@torch.no_grad()
def _fold_norms(model: nn.Module) -> None:
    """Fold every norm that follows a convolution into the convolution's weight and bias, and
    replace it by an identity. For the frozen norms this is the very arithmetic `conv_norm` does
    on each call (same float32 weights), done once; eval-mode BatchNorm2d (v2's heads) becomes
    one convolution instead of a convolution and a normalization, which also traces on a
    data-dependent batch (batch_norm checks for an empty one). The traced graph is some
    seven nodes per convolution shorter, which is much of the export time."""
    for module in model.modules():
        pairs = []
        if isinstance(module, ConvNormAct) and module.norm is not None:
            pairs.append(("conv", "norm"))
        for name, _ in module.named_children():
            if name.startswith("bn") and isinstance(getattr(module, "conv" + name[2:], None), nn.Conv2d):
                pairs.append(("conv" + name[2:], name))
        if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], nn.Conv2d):
            pairs.append(("0", "1"))
        for conv_name, norm_name in pairs:
            conv, norm = getattr(module, conv_name), getattr(module, norm_name)
            affine = _norm_as_affine(norm)
            if affine is None:
                continue
            scale, shift = affine
            weight = conv.weight * scale.view(-1, 1, 1, 1)
            bias = shift if conv.bias is None else conv.bias * scale + shift
            conv.weight, conv.bias = nn.Parameter(weight), nn.Parameter(bias)
            setattr(module, norm_name, nn.Identity())
    left = [n for n, m in model.named_modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d))]
    if left:
        raise ValueError(f"cannot fold these norms into a convolution for the export: {left}")


def _clip(boxes: Tensor, heights: Tensor, widths: Tensor) -> Tensor:
    """Clip (..., 4) boxes; heights / widths broadcast against boxes[..., 0]."""
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    x = torch.minimum(torch.maximum(boxes[..., 0::2], zero), widths[..., None])
    y = torch.minimum(torch.maximum(boxes[..., 1::2], zero), heights[..., None])
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def _not_small(boxes: Tensor, min_size: float) -> Tensor:
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


def _pool(pooler: MultiScaleRoIAlign, features: list[Tensor], boxes: Tensor, batch_index: Tensor) -> Tensor:
    """MultiScaleRoIAlign on (R, 4) boxes with their image index: each box is pooled from its
    FPN level (one RoiAlign per level on the boxes of that level, scattered back in order)."""
    features = features[: len(pooler.strides)]
    size = pooler.output_size
    if len(features) == 1:
        return ops.roi_align(features[0], boxes, batch_index, size, 1.0 / pooler.strides[0],
                             pooler.sampling_ratio, pooler.aligned)
    levels = assign_fpn_levels(boxes, pooler.min_level, pooler.max_level, pooler.canonical_size,
                               pooler.canonical_level, pooler.level_eps)
    selected, pooled = [], []
    for level, (feature, stride) in enumerate(zip(features, pooler.strides)):
        idx = torch.nonzero(levels == level).squeeze(1)
        selected.append(idx)
        pooled.append(ops.roi_align(feature, boxes[idx], batch_index[idx], size, 1.0 / stride,
                                    pooler.sampling_ratio, pooler.aligned))
    # back to box order: one gather from the concatenated levels (a scatter per level would
    # copy the whole output once per level)
    order = torch.cat(selected)
    position = torch.zeros(boxes.shape[0], dtype=order.dtype, device=order.device)
    position = position.index_put((order,), torch.arange(order.shape[0], device=order.device))  # (R,)
    return torch.cat(pooled)[position]


def _class_mask_logits(head: MaskHead, x: Tensor, labels: Tensor) -> Tensor:
    """`MaskHead` followed by `select_class`, with the last 1x1 convolution computed for each
    box's own class only: (D, C, 14, 14) features, (D,) labels -> (D, M, M) logits. The same
    sums (in another order: within float32 rounding) at 1/K of the predictor's work and memory."""
    x = torch.relu(head.deconv(head.convs(x)))  # (D, C, M, M)
    channel = labels - getattr(head, "first_class", 0)
    weight = head.predictor.weight[channel].reshape(channel.shape[0], 1, -1)  # (D, 1, C)
    logits = torch.bmm(weight, x.reshape(x.shape[0], x.shape[1], -1))  # (D, 1, M*M)
    return logits.reshape(-1, x.shape[-2], x.shape[-1]) + head.predictor.bias[channel][:, None, None]


def _unsupported_switches(model: MaskRCNN) -> list[str]:
    """The ModelConfig ablation switches (issue 11) this graph does not implement, as "name=value"."""
    config = getattr(model, "config", None)
    if config is None:
        return []
    defaults = dict(roi_extractor="align", mask_loss="sigmoid", class_agnostic_masks=False, mask_head="fcn")
    return [f"{k}={getattr(config, k)!r}" for k, v in defaults.items() if getattr(config, k, v) != v]


def _sorted_top(scores: Tensor, k) -> tuple[Tensor, Tensor]:
    """The k best of each row, best first, ties to the lower index (a stable sort; exports as
    TopK, which breaks ties the same way). (N, S) -> values, indices (N, k)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), order


class InferenceGraph(nn.Module):
    """forward(batch, resized_sizes, original_sizes, score_threshold[, frame])
        -> boxes (D, 4), scores (D,), labels int64 (D,), image_index int64 (D,),
           mask_probs (D, M, M) probabilities of each box's class, [masks (D, H, W): the same
           pasted into `frame`'s size, when `paste`].

    batch: float32 (N, 3, Hp, Wp), normalized, resized and zero-padded (as `MaskRCNN.preprocess`);
    resized_sizes / original_sizes: int64 (N, 2) (h, w) of each image after and before the
    resize; score_threshold: float32 scalar, the box score threshold (applied before the box
    NMS, like `MaskRCNN(..., score_thresh=)`); frame: any (N, 3, H, W) tensor whose H, W the
    masks are pasted at (the input images); each mask is zero outside its own image's size.
    Detections are ordered by image, then by descending score; boxes are in original pixels.
    """

    def __init__(self, model: MaskRCNN, *, paste: bool = False):
        super().__init__()
        if not model.roi_heads.has_mask:
            raise ValueError("the export needs a model with a mask branch")
        unsupported = _unsupported_switches(model)
        if unsupported:
            raise NotImplementedError(f"the export implements the default RoIAlign, per-class sigmoid FCN mask head; "
                                      f"this model has {', '.join(unsupported)}")
        if model.roi_heads.has_keypoints:
            # rather than a graph that silently drops them
            raise NotImplementedError("the export has no keypoint branch yet: export a model without keypoints")
        if getattr(model.rpn.anchor_generator, "offset", None) is not None:
            raise NotImplementedError("the export implements torchvision's anchor grid, not Detectron2's offset one")
        # A copy, contiguous (channels-last strides mean nothing to ONNX and slow the tracing)
        # and with the norms folded into the convolutions.
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        _fold_norms(model)
        self.backbone = model.backbone
        self.rpn: RPN = model.rpn
        self.roi_heads: RoIHeads = model.roi_heads
        self.num_classes = model.num_classes
        self.paste = paste

    def forward(self, batch: Tensor, resized_sizes: Tensor, original_sizes: Tensor,
                score_threshold: Tensor, frame: Tensor | None = None):
        # the backbone's body and FPN without ResNetFPN.forward's channels-last copy of the input
        c = self.backbone.body(batch)
        features = self.backbone.fpn([c["c2"], c["c3"], c["c4"], c["c5"]])
        proposals, proposal_valid = self.propose(batch, features, resized_sizes)
        return self.detect(features, proposals, proposal_valid, resized_sizes, original_sizes,
                           score_threshold, frame)

    def propose(self, batch: Tensor, features: list[Tensor], resized_sizes: Tensor) -> tuple[Tensor, Tensor]:
        """RPN.select_proposals for the whole batch: proposals (N, P, 4), valid (N, P).

        Each level contributes exactly `pre_nms_topk` candidates: its objectness is extended by
        that many -inf entries before the top-k, and candidates that land there are invalid. A
        level with fewer anchors thus yields all of them, as in eager (which takes
        min(k, anchors)), and every shape after this point is fixed by the config, not by
        symbolic arithmetic on the image size (which made the export several times slower)."""
        rpn = self.rpn
        objectness_maps, delta_maps = rpn.head(features)
        num_images = batch.shape[0]
        pre_nms_topk, post_nms_topk = rpn.pre_nms_topk[False], rpn.post_nms_topk[False]
        image = torch.arange(num_images, device=batch.device)[:, None]
        logits, deltas, anchors, real, levels = [], [], [], [], []
        for level, (obj_map, delta_map) in enumerate(zip(objectness_maps, delta_maps)):
            _, num_anchors, height, width = obj_map.shape
            obj = obj_map.permute(0, 2, 3, 1).reshape(num_images, -1)  # (N, H*W*A), anchor order (y, x, a)
            count = obj.shape[1]
            padded = torch.cat([obj, torch.full((num_images, pre_nms_topk), float("-inf"), dtype=obj.dtype,
                                                device=obj.device)], dim=1)
            idx = padded.topk(pre_nms_topk, dim=1).indices  # (N, k)
            is_real = idx < count
            idx = torch.where(is_real, idx, torch.zeros_like(idx))
            logits.append(obj.gather(1, idx))
            # Only the k chosen anchors and their deltas, gathered from (y, x, a) of each index
            # (the full anchor grid and flattened deltas of `RPN.forward` are never built).
            a, cell = idx % num_anchors, idx // num_anchors
            y = cell // width
            x = cell - y * width  # (cell % width: remainder by a symbolic size does not export)
            coord = torch.arange(4, device=idx.device)
            # deltas (N, A*4, H, W): the value of coordinate j of anchor a at (y, x)
            flat = (((a * 4)[..., None] + coord) * height + y[..., None]) * width + x[..., None]  # (N, k, 4)
            deltas.append(delta_map.reshape(num_images, -1).gather(1, flat.reshape(num_images, -1)).view(num_images, -1, 4))
            anchors.append(self._anchors(level, a, x, y, batch.shape[-2] // height, batch.shape[-1] // width))
            real.append(is_real)
            levels.append(torch.full((pre_nms_topk,), level, dtype=torch.int64, device=obj.device))
        # (N, K) logits, (N, K, 4) deltas and anchors, (N, K) real, (K,) levels; K = L * k
        logits, deltas, anchors, real = (torch.cat(t, dim=1) for t in (logits, deltas, anchors, real))
        levels = torch.cat(levels)
        scores = torch.sigmoid(logits)
        boxes = rpn.box_coder.decode(deltas.reshape(-1, 4), anchors.reshape(-1, 4)).view(num_images, -1, 4)
        sizes = resized_sizes.to(boxes.dtype)
        boxes = _clip(boxes, sizes[:, 0, None], sizes[:, 1, None])
        valid = real & _not_small(boxes, rpn.min_size) & (scores >= rpn.score_thresh)

        # NMS within each level: the level is the NMS class, (N, L, K) scores.
        in_level = levels[None, :] == torch.arange(len(objectness_maps), device=levels.device)[:, None]
        level_scores = torch.where(valid[:, None, :] & in_level[None], scores[:, None, :],
                                   torch.full_like(scores[:, None, :], _EXCLUDED))
        selected = ops.nms(boxes, level_scores, rpn.nms_thresh, _NMS_SCORE_THRESHOLD)
        kept = torch.zeros_like(valid).index_put((selected[:, 0], selected[:, 2]), torch.ones_like(selected[:, 0], dtype=torch.bool))
        ranked = torch.where(kept, scores, torch.full_like(scores, float("-inf")))
        top_scores, order = _sorted_top(ranked, min(post_nms_topk, ranked.shape[1]))  # (N, P)
        proposal_valid = top_scores > float("-inf")
        proposals = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        proposals = torch.where(proposal_valid[..., None], proposals, torch.zeros_like(proposals))
        return proposals, proposal_valid

    def _anchors(self, level: int, a: Tensor, x: Tensor, y: Tensor, stride_y, stride_x) -> Tensor:
        """`AnchorGenerator` for chosen anchors only: cell anchor a shifted to grid cell (y, x)
        with the level's grid step (padded size // feature size). Same float32 sums (of whole
        numbers, so exact) as the full grid. (...) int64 -> (..., 4)."""
        cell = getattr(self.rpn.anchor_generator, f"cell_{level}")  # (A, 4)
        shift_x, shift_y = (x * stride_x).to(cell.dtype), (y * stride_y).to(cell.dtype)
        return torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1) + cell[a]

    def detect(self, features: list[Tensor], proposals: Tensor, proposal_valid: Tensor, resized_sizes: Tensor,
               original_sizes: Tensor, score_threshold: Tensor, frame: Tensor | None):
        heads = self.roi_heads
        num_images, per_image = proposal_valid.shape
        k1 = self.num_classes - 1
        boxes_in = proposals.reshape(-1, 4)  # (N*P, 4)
        image_of_roi = torch.arange(num_images, device=proposals.device)[:, None].expand(-1, per_image).reshape(-1)
        box_features = heads.box_head(_pool(heads.box_pooler, features, boxes_in, image_of_roi))
        class_logits, deltas = heads.box_predictor(box_features)
        boxes = heads.box_coder.decode(deltas, boxes_in)  # (N*P, K, 4)
        scores = F.softmax(class_logits, -1)
        sizes = resized_sizes.to(boxes.dtype)[image_of_roi]  # (N*P, 2)
        boxes = _clip(boxes, sizes[:, 0, None], sizes[:, 1, None])[:, 1:]  # (N*P, K-1, 4), no background
        scores = scores[:, 1:]
        valid = (scores > score_threshold) & _not_small(boxes, 1e-2) & proposal_valid.reshape(-1, 1)

        # Per-class NMS: one NMS batch entry per (image, class), (N*(K-1), P, 4) boxes.
        nms_boxes = boxes.reshape(num_images, per_image, k1, 4).permute(0, 2, 1, 3).reshape(-1, per_image, 4)
        nms_scores = torch.where(valid, scores, torch.full_like(scores, _EXCLUDED))
        nms_scores = nms_scores.reshape(num_images, per_image, k1).permute(0, 2, 1).reshape(-1, 1, per_image)
        selected = ops.nms(nms_boxes, nms_scores, heads.nms_thresh, _NMS_SCORE_THRESHOLD)
        kept = torch.zeros((num_images * k1, per_image), dtype=torch.bool, device=boxes.device)
        kept = kept.index_put((selected[:, 0], selected[:, 2]), torch.ones_like(selected[:, 0], dtype=torch.bool))
        # back to the eager candidate order: (RoI, class) row-major within each image
        kept = kept.view(num_images, k1, per_image).permute(0, 2, 1).reshape(num_images, -1)
        scores = scores.reshape(num_images, -1)  # (N, P*(K-1))
        ranked = torch.where(kept, scores, torch.full_like(scores, float("-inf")))
        top_scores, order = _sorted_top(ranked, min(heads.detections_per_img, ranked.shape[1]))
        image_index, slot = torch.nonzero(top_scores > float("-inf")).unbind(1)  # D detections
        candidate = order[image_index, slot]
        det_boxes = boxes.reshape(num_images, -1, 4)[image_index, candidate]
        det_scores = scores[image_index, candidate]
        det_labels = candidate % k1 + 1

        masks = _class_mask_logits(heads.mask_head, _pool(heads.mask_pooler, features, det_boxes, image_index),
                                   det_labels).sigmoid()

        # Boxes back to the original pixels (float32 ratios, as `scale_boxes`).
        ratios = original_sizes.to(torch.float32) / resized_sizes.to(torch.float32)  # (N, 2) h, w
        ratios = ratios[:, [1, 0, 1, 0]][image_index].to(det_boxes.dtype)
        det_boxes = det_boxes * ratios
        if not self.paste:
            return det_boxes, det_scores, det_labels, image_index, masks
        pasted = paste_in_frame(masks, det_boxes, original_sizes[image_index], frame.shape[-2], frame.shape[-1])
        return det_boxes, det_scores, det_labels, image_index, masks, pasted


def paste_in_frame(masks: Tensor, boxes: Tensor, image_sizes: Tensor, height, width, padding: int = 1) -> Tensor:
    """`maskrcnn.ops.paste_masks` for masks of different images at once: (D, M, M) masks,
    (D, 4) boxes, (D, 2) int64 image sizes -> (D, height, width), each mask zero outside its
    own image (rows >= h, columns >= w)."""
    m = masks.shape[-1]
    masks = F.pad(masks, (padding,) * 4)
    scale = float(m + 2 * padding) / m
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    x0, x1 = (x_c - w_half).long(), (x_c + w_half).long()
    y0, y1 = (y_c - h_half).long(), (y_c + h_half).long()
    box_w = (x1 - x0 + 1).clamp(min=1)
    box_h = (y1 - y0 + 1).clamp(min=1)
    wy = _resize_weights(y0, box_h, m + 2 * padding, height).to(masks.dtype)  # (D, H, M+2)
    wx = _resize_weights(x0, box_w, m + 2 * padding, width).to(masks.dtype)  # (D, W, M+2)
    wy = wy * (torch.arange(height, device=masks.device)[None, :] < image_sizes[:, :1]).to(wy.dtype)[..., None]
    wx = wx * (torch.arange(width, device=masks.device)[None, :] < image_sizes[:, 1:]).to(wx.dtype)[..., None]
    return torch.bmm(torch.bmm(wy, masks), wx.transpose(1, 2))
