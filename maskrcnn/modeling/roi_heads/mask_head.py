"""Mask branch: a small FCN on 14x14 RoI features predicting one 28x28 mask per class.

Shape shorthand: R RoIs, C channels, K classes including background, M = 28.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import mask_targets
from ..layers import NormFactory, conv_stack, init_for_relu


class MaskHead(nn.Module):
    """4 x (3x3 conv, ReLU) -> 2x2 stride-2 transposed conv, ReLU -> 1x1 conv to K logits.

    forward((R, C, 14, 14)) -> (R, K, 28, 28) logits; (R, K - 1, 28, 28) without a background
    channel (Detectron2's layout, `background_channel=False`): `select` picks the right one.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        conv_dims: tuple[int, ...] = (256, 256, 256, 256),
        norm: NormFactory | None = None,
        background_channel: bool = True,
        deconv_channels: int | None = None,
    ):
        """deconv_channels: the transposed conv's output width (default: its input's); the C4
        head, which has no convs, maps res5's 2048 channels to 256."""
        super().__init__()
        self.convs = conv_stack(in_channels, conv_dims, norm)
        channels = conv_dims[-1] if conv_dims else in_channels
        self.deconv = nn.ConvTranspose2d(channels, deconv_channels or channels, 2, stride=2)
        channels = deconv_channels or channels
        # label l (1..K-1) reads channel l - first_class
        self.first_class = 0 if background_channel else 1
        self.predictor = nn.Conv2d(channels, num_classes - self.first_class, 1)
        init_for_relu(self.modules())

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)
        x = torch.relu(self.deconv(x))
        return self.predictor(x)


def select_class(mask_logits: Tensor, labels: Tensor, first_class: int = 0) -> Tensor:
    """(R, K, M, M) logits, (R,) labels -> (R, M, M) logits of each RoI's class (channel
    label - first_class: 1 when the head has no background channel)."""
    return mask_logits[torch.arange(labels.shape[0], device=labels.device), labels - first_class]


def mask_loss(
    mask_logits: Tensor,
    labels: Tensor,
    proposals: list[Tensor],
    gt_masks: list[Tensor],
    matched_idxs: list[Tensor],
    first_class: int = 0,
) -> Tensor:
    """Per-pixel binary cross-entropy on the gt class's channel only (no competition between
    classes), over positive RoIs. Targets are each RoI's gt mask cropped and resized to M x M.

    mask_logits (R, K, M, M) for the positive RoIs of all images, labels (R,),
    proposals / gt_masks (Gi, H, W) / matched_idxs: per image.
    """
    size = mask_logits.shape[-1]
    targets = [
        mask_targets(masks, boxes, idx, size)
        for masks, boxes, idx in zip(gt_masks, proposals, matched_idxs)
        if boxes.shape[0] > 0
    ]
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0
    return F.binary_cross_entropy_with_logits(select_class(mask_logits, labels, first_class), torch.cat(targets))
