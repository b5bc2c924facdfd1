"""Keypoint branch (the paper's section 5, torchvision's keypointrcnn_resnet50_fpn): a deeper FCN
on 14x14 RoI features predicting one 56x56 heatmap per keypoint, trained as a spatial softmax.

Shape shorthand: R RoIs, C channels, K keypoints, S = 56.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import MultiScaleRoIAlign
from ...ops.keypoints import heatmaps_to_keypoints, keypoints_to_heatmap
from ..layers import NormFactory, conv_stack, init_for_relu


class KeypointHead(nn.Module):
    """8 x (3x3 conv 512, ReLU) -> 4x4 stride-2 transposed conv to K channels (28x28) ->
    bilinear 2x upsampling -> (R, K, 56, 56) heatmap logits. `norm` after each conv: the v2
    variant's batch norm, as its mask head has (torchvision's keypoint model has none).

    forward((R, C, 14, 14)) -> (R, K, 2 * 2 * 14, ...) logits.
    """

    def __init__(self, *, in_channels: int, num_keypoints: int, conv_dims: tuple[int, ...] = (512,) * 8,
                 norm: NormFactory | None = None):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.convs = conv_stack(in_channels, conv_dims, norm)
        channels = conv_dims[-1] if conv_dims else in_channels
        # kernel 4, stride 2, padding 1: exactly doubles the side
        self.deconv = nn.ConvTranspose2d(channels, num_keypoints, 4, stride=2, padding=1)
        init_for_relu(self.modules())

    def forward(self, x: Tensor) -> Tensor:
        x = self.deconv(self.convs(x))
        # scale_factor (not size) with recompute_scale_factor=False, as torchvision: the same
        # sampling positions for any input side
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False, recompute_scale_factor=False)


def keypoint_loss(
    keypoint_logits: Tensor,
    proposals: list[Tensor],
    gt_keypoints: list[Tensor],
    matched_idxs: list[Tensor],
) -> Tensor:
    """Cross-entropy over the S*S positions of each (RoI, keypoint) heatmap whose keypoint is
    labelled and inside the RoI, averaged over those; positive RoIs of all images.

    keypoint_logits (R, K, S, S); per image: proposals (Ri, 4), gt_keypoints (Gi, K, 3),
    matched_idxs (Ri,) into the image's gt.
    """
    num_rois, num_keypoints, size, width = keypoint_logits.shape
    if size != width:
        raise ValueError(f"keypoint heatmaps must be square, got {size}x{width}")
    targets, valid = [], []
    for boxes, keypoints, idx in zip(proposals, gt_keypoints, matched_idxs):
        t, v = keypoints_to_heatmap(keypoints[idx], boxes, size)
        targets.append(t.reshape(-1))
        valid.append(v.reshape(-1))
    if num_rois == 0 or not targets:
        return keypoint_logits.sum() * 0
    targets, valid = torch.cat(targets), torch.cat(valid)
    if not valid.any():
        return keypoint_logits.sum() * 0
    logits = keypoint_logits.reshape(num_rois * num_keypoints, size * size)
    return F.cross_entropy(logits[valid], targets[valid])


def decode_keypoints(keypoint_logits: Tensor, boxes: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """(sum Di, K, S, S) logits and each image's (Di, 4) boxes -> per image keypoints (Di, K, 3)
    and keypoint scores (Di, K), in the boxes' coordinates."""
    keypoints, scores = heatmaps_to_keypoints(keypoint_logits, torch.cat(boxes) if boxes else keypoint_logits.new_zeros((0, 4)))
    counts = [b.shape[0] for b in boxes]
    return list(keypoints.split(counts)), list(scores.split(counts))


def keypoint_branch(config, pooler_options: dict, norm: NormFactory | None = None) -> dict:
    """RoIHeads keywords for the keypoint branch a ModelConfig asks for (none if num_keypoints
    is 0): a 14x14 pooler on the box pooler's levels and a KeypointHead."""
    if config.num_keypoints < 0:
        raise ValueError(f"num_keypoints must be >= 0, got {config.num_keypoints}")
    if config.num_keypoints == 0:
        return {}
    names = config.keypoint_names
    if names is not None and len(names) != config.num_keypoints:
        raise ValueError(f"keypoint_names has {len(names)} names but num_keypoints is {config.num_keypoints}")
    for pair in config.keypoint_skeleton or []:
        if len(pair) != 2 or not all(1 <= int(k) <= config.num_keypoints for k in pair):
            raise ValueError(f"keypoint_skeleton pair {list(pair)} is not two keypoint numbers in 1..{config.num_keypoints}")
    return dict(
        keypoint_pooler=MultiScaleRoIAlign(output_size=14, **pooler_options),
        keypoint_head=KeypointHead(in_channels=config.fpn_channels, num_keypoints=config.num_keypoints,
                                   conv_dims=(config.keypoint_head_channels,) * 8, norm=norm),
    )
