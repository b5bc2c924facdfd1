"""The paper's "C4" backbone (ResNet-50-C4, as in Faster R-CNN with ResNets): the stem and the
res2..res4 stages of a ResNet, giving one stride-16 feature map that feeds both the RPN and the
RoI heads. The res5 stage is not here: it is the RoI head, run on each pooled RoI
(`roi_heads.res5_head`).

forward(images (N, 3, H, W)) -> [C4 (N, out_channels, H/16, W/16)]
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .resnet import ResNet


class ResNetC4(nn.Module):
    """Backbone = ResNet body cut after c4. Declares `out_channels` and `strides` like ResNetFPN."""

    def __init__(self, *, body: ResNet):
        super().__init__()
        if hasattr(body, "layer4"):
            raise ValueError("ResNetC4 takes a ResNet body built with num_stages=3 (its res5 is the RoI head)")
        self.body = body
        self.out_channels = body.out_channels[-1]
        self.strides = [16]

    def forward(self, images: Tensor) -> list[Tensor]:
        # channels-last, as ResNetFPN: faster convolutions on CPU (oneDNN) and tensor cores
        return [self.body(images.contiguous(memory_format=torch.channels_last))["c4"]]
