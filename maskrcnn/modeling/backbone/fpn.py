"""Feature Pyramid Network (Lin et al. 2017) on top of a ResNet body.

forward(images (N, 3, H, W)) -> [P2, P3, P4, P5, P6], each (N, out_channels, H/s, W/s) for
strides s = 4, 8, 16, 32, 64. P6 is a stride-2 subsample of P5 and is used by the RPN only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import ConvNormAct, NormFactory
from .resnet import ResNet


class FPN(nn.Module):
    def __init__(self, *, in_channels: list[int], out_channels: int = 256, norm: NormFactory | None = None):
        super().__init__()
        self.lateral = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, norm=norm, activation=False) for c in in_channels
        )
        self.output = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm=norm, activation=False) for _ in in_channels
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """features: C2..C5 (finest first) -> P2..P6."""
        last = self.lateral[-1](features[-1])
        results = [self.output[-1](last)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            # top-down: nearest upsampling to the lateral's exact size (odd sizes round down)
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.output[i](last))
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2))
        return results


class ResNetFPN(nn.Module):
    """Backbone = ResNet body + FPN. Declares `out_channels` and `strides` of its outputs."""

    def __init__(self, *, body: ResNet, fpn: FPN, out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels
        self.strides = [4, 8, 16, 32, 64]

    def forward(self, images: Tensor) -> list[Tensor]:
        # Channels-last convolutions are markedly faster on CPU (oneDNN) and on tensor cores.
        c = self.body(images.contiguous(memory_format=torch.channels_last))
        return self.fpn([c["c2"], c["c3"], c["c4"], c["c5"]])
