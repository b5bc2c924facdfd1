"""Box arithmetic: area, IoU, clipping, small-box removal and the delta encoding of R-CNN.

All boxes are (x1, y1, x2, y2) floats; no "+1" pixel convention anywhere.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# Largest allowed log-scale delta: exp(dw) never grows a box more than 1000/16 = 62.5x.
# Same value as torchvision and Detectron2, so their weights decode identically.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def box_area(boxes: Tensor) -> Tensor:
    """(R, 4) -> (R,)"""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU: (R1, 4), (R2, 4) -> (R1, R2). Computed as inter / ((area1 + area2) - inter)."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    inter = box_intersection(boxes1, boxes2)
    union = area1[:, None] + area2 - inter
    return inter / union


def box_intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection area: (R1, 4), (R2, 4) -> (R1, R2)."""
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_ioa(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over the area of boxes1: (R1, 4), (R2, 4) -> (R1, R2). Used for crowd regions.
    The area is clamped at 1e-6, so a zero-area box gives 0 rather than NaN."""
    return box_intersection(boxes1, boxes2) / box_area(boxes1).clamp(min=1e-6)[:, None]


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip (..., 4) boxes to an image of size (height, width)."""
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Boolean keep-mask (R,) of boxes whose width and height are both >= min_size; with
    min_size 0, both > 0 (the empty boxes are dropped, Detectron2's `nonempty`)."""
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    if min_size == 0:
        return (ws > 0) & (hs > 0)
    return (ws >= min_size) & (hs >= min_size)


class BoxCoder:
    """Encodes a target box relative to a reference box as (dx, dy, dw, dh) and back.

    dx = wx * (gx - rx) / rw, dw = ww * log(gw / rw), and likewise for y and h; decoding clamps
    dw and dh at `clip` so a wild prediction cannot overflow exp().
    """

    def __init__(self, weights: tuple[float, float, float, float], clip: float = BBOX_XFORM_CLIP):
        self.weights = tuple(float(w) for w in weights)
        self.clip = clip

    def encode(self, gt_boxes: Tensor, reference_boxes: Tensor) -> Tensor:
        """(R, 4) targets and (R, 4) references -> (R, 4) deltas."""
        wx, wy, ww, wh = self.weights
        ex_w = reference_boxes[:, 2] - reference_boxes[:, 0]
        ex_h = reference_boxes[:, 3] - reference_boxes[:, 1]
        ex_cx = reference_boxes[:, 0] + 0.5 * ex_w
        ex_cy = reference_boxes[:, 1] + 0.5 * ex_h
        gt_w = gt_boxes[:, 2] - gt_boxes[:, 0]
        gt_h = gt_boxes[:, 3] - gt_boxes[:, 1]
        gt_cx = gt_boxes[:, 0] + 0.5 * gt_w
        gt_cy = gt_boxes[:, 1] + 0.5 * gt_h
        dx = wx * (gt_cx - ex_cx) / ex_w
        dy = wy * (gt_cy - ex_cy) / ex_h
        dw = ww * torch.log(gt_w / ex_w)
        dh = wh * torch.log(gt_h / ex_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: Tensor, reference_boxes: Tensor) -> Tensor:
        """(R, 4*K) deltas and (R, 4) references -> (R, K, 4) boxes (one box per class)."""
        reference_boxes = reference_boxes.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths = reference_boxes[:, 2] - reference_boxes[:, 0]
        heights = reference_boxes[:, 3] - reference_boxes[:, 1]
        ctr_x = reference_boxes[:, 0] + 0.5 * widths
        ctr_y = reference_boxes[:, 1] + 0.5 * heights

        # (R, 4K) -> (R, K, 4); K spelled out so that R = 0 (no proposals) still reshapes
        deltas = deltas.reshape(deltas.shape[0], deltas.shape[1] // 4, 4)
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.clip)
        dh = (deltas[..., 3] / wh).clamp(max=self.clip)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * (torch.exp(dw) * widths[:, None])
        half_h = 0.5 * (torch.exp(dh) * heights[:, None])
        return torch.stack(
            (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2
        )
