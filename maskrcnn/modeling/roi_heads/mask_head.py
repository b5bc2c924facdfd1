"""Mask branch: a small FCN on 14x14 RoI features predicting one 28x28 mask per class.

The paper's ablations are options here: an MLP instead of the FCN (`MLPMaskHead`, Table 2e),
one class-agnostic mask instead of one per class (`class_agnostic`), and a softmax over the
classes with a multinomial loss instead of per-class sigmoids (`mask_loss(..., loss="softmax")`,
Table 2b).

Shape shorthand: R RoIs, C channels, K classes including background, M = 28.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import mask_targets
from ..layers import NormFactory, conv_stack, full_precision, init_for_relu


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
        class_agnostic: bool = False,
        deconv_channels: int | None = None,
    ):
        """class_agnostic: one mask channel for every class (the paper: "nearly as effective").
        deconv_channels: the transposed conv's output width (default: its input's); the C4
        head, which has no convs, maps res5's 2048 channels to 256."""
        super().__init__()
        self.convs = conv_stack(in_channels, conv_dims, norm)
        channels = conv_dims[-1] if conv_dims else in_channels
        self.deconv = nn.ConvTranspose2d(channels, deconv_channels or channels, 2, stride=2)
        channels = deconv_channels or channels
        # label l (1..K-1) reads channel l - first_class
        self.first_class = 0 if background_channel else 1
        self.predictor = nn.Conv2d(channels, mask_channels(num_classes, background_channel, class_agnostic), 1)
        init_for_relu(self.modules())

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)
        x = torch.relu_(self.deconv(x))
        return self.predictor(x)


class MLPMaskHead(nn.Module):
    """The paper's MLP mask head (Table 2e): flatten the (C, P, P) RoI features, fully
    connected layers with ReLU, then one linear layer to K masks of M x M. It has no spatial
    layout to keep, which is what the FCN's better masks are measured against.

    forward((R, C, P, P)) -> (R, K', M, M) logits, K' as `MaskHead`'s.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        pooled_size: int = 14,
        fc_dims: tuple[int, ...] = (1024, 1024),
        mask_size: int = 28,
        background_channel: bool = True,
        class_agnostic: bool = False,
    ):
        super().__init__()
        self.first_class = 0 if background_channel else 1
        self.mask_size = mask_size
        self.num_masks = mask_channels(num_classes, background_channel, class_agnostic)
        fcs, in_features = [], in_channels * pooled_size * pooled_size
        for dim in fc_dims:
            fcs.append(nn.Linear(in_features, dim))
            in_features = dim
        self.fcs = nn.ModuleList(fcs)
        self.predictor = nn.Linear(in_features, self.num_masks * mask_size * mask_size)
        init_for_relu(self.fcs)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for fc in self.fcs:
            x = torch.relu_(fc(x))
        return self.predictor(x).reshape(-1, self.num_masks, self.mask_size, self.mask_size)


def mask_channels(num_classes: int, background_channel: bool = True, class_agnostic: bool = False) -> int:
    """Output channels of a mask head: one per class (background included unless Detectron2's
    layout), or a single class-agnostic one."""
    return 1 if class_agnostic else num_classes - (0 if background_channel else 1)


def select_class(mask_logits: Tensor, labels: Tensor, first_class: int = 0) -> Tensor:
    """(R, K, M, M) logits, (R,) labels -> (R, M, M) logits of each RoI's class (channel
    label - first_class: 1 when the head has no background channel). A single channel is a
    class-agnostic head's one mask, read for every label."""
    if mask_logits.shape[1] == 1:
        return full_precision(mask_logits[:, 0])
    return full_precision(mask_logits[torch.arange(labels.shape[0], device=labels.device), labels - first_class])


def mask_probabilities(mask_logits: Tensor, labels: Tensor, first_class: int = 0, loss: str = "sigmoid") -> Tensor:
    """(R, K, M, M) logits -> (R, M, M) probabilities of each RoI's class: its channel's
    sigmoid, or (loss="softmax") its share of the softmax over all channels, background
    included, which is what the multinomial loss trains."""
    if loss == "softmax":
        return select_class(full_precision(mask_logits).softmax(dim=1), labels, first_class)
    return select_class(mask_logits, labels, first_class).sigmoid()


def mask_loss(
    mask_logits: Tensor,
    labels: Tensor,
    proposals: list[Tensor],
    gt_masks: list[Tensor],
    matched_idxs: list[Tensor],
    first_class: int = 0,
    loss: str = "sigmoid",
) -> Tensor:
    """Per-pixel binary cross-entropy on the gt class's channel only (no competition between
    classes), over positive RoIs. Targets are each RoI's gt mask cropped and resized to M x M.

    loss="softmax": the paper's multinomial alternative (Table 2b), a per-pixel cross-entropy
    of the softmax over all K channels, whose target is the gt class inside the mask and the
    background (channel 0) outside; a resized target's soft edge t splits the pixel's target
    as t on the class, 1 - t on the background. Needs a background channel and one per class.

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
    target = torch.cat(targets)
    # float32 targets; float64 logits (gradcheck) keep their precision, float16 ones (AMP) do not
    # round the targets
    target = target.to(torch.promote_types(target.dtype, mask_logits.dtype))
    if loss == "softmax":
        if first_class != 0 or mask_logits.shape[1] < 2:
            raise ValueError("the softmax mask loss needs a background channel and one channel per class")
        log_probs = F.log_softmax(full_precision(mask_logits), dim=1)  # never in bf16's 8 bits
        return -(target * select_class(log_probs, labels) + (1 - target) * log_probs[:, 0]).mean()
    return F.binary_cross_entropy_with_logits(select_class(mask_logits, labels, first_class), target)
