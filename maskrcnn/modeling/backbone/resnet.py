"""ResNet body (He et al. 2016), torchvision's "v1.5" layout by default: the stride of a
downsampling bottleneck sits in its 3x3 convolution. `stride_in_1x1=True` puts it in the first 1x1
convolution instead, the original MSRA / Caffe layout that Detectron2's weights were trained with
(same shapes, different computation). Module names follow torchvision's ResNet, so ImageNet and
COCO checkpoints load by name. `groups` > 1 makes it a ResNeXt (Xie et al. 2017): grouped 3x3
convolutions, `width_per_group` channels per group (ResNeXt-50 32x4d: groups 32, width 4).

forward(x (N, 3, H, W)) -> {"c2": (N, C2, H/4, W/4), ..., "c5": (N, C5, H/32, W/32)}
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import NormFactory, conv_norm, freeze_batch_norm, frozen_bn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, norm: NormFactory, groups: int = 1,
                 width_per_group: int = 64):
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("grouped convolutions (ResNeXt) need a bottleneck ResNet (depth >= 50)")
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(width, out_channels, 3, 1, 1, bias=False)
        self.bn2 = norm(out_channels)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else conv_norm(self.downsample[0], self.downsample[1], x)
        out = torch.relu_(conv_norm(self.conv1, self.bn1, x))
        out = conv_norm(self.conv2, self.bn2, out)
        return torch.relu_(out.add_(identity))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, norm: NormFactory, groups: int = 1,
                 width_per_group: int = 64, stride_in_1x1: bool = False):
        super().__init__()
        out_channels = width * self.expansion
        # torchvision's ResNeXt width rule: width * (width_per_group / 64) channels per group
        inner = int(width * (width_per_group / 64.0)) * groups
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, stride_1x1, bias=False)
        self.bn1 = norm(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride_3x3, 1, groups=groups, bias=False)
        self.bn2 = norm(inner)
        self.conv3 = nn.Conv2d(inner, out_channels, 1, bias=False)
        self.bn3 = norm(out_channels)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else conv_norm(self.downsample[0], self.downsample[1], x)
        out = torch.relu_(conv_norm(self.conv1, self.bn1, x))
        out = torch.relu_(conv_norm(self.conv2, self.bn2, out))
        out = conv_norm(self.conv3, self.bn3, out)
        # in place: the conv's backward needs its input, not its output
        return torch.relu_(out.add_(identity))


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: NormFactory) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), norm(out_channels))


def resnet_stage(block: type[nn.Module], in_channels: int, width: int, num_blocks: int, stride: int,
                 norm: NormFactory, **block_options) -> nn.Sequential:
    """One stage: `num_blocks` blocks of `width` (output width * expansion channels), the
    first with `stride` (and the projection shortcut)."""
    blocks = []
    for b in range(num_blocks):
        blocks.append(block(in_channels, width, stride if b == 0 else 1, norm, **block_options))
        in_channels = width * block.expansion
    return nn.Sequential(*blocks)


RESNET_SPECS: dict[int, tuple[type[nn.Module], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


class ResNet(nn.Module):
    """ResNet stages c2..c5. `base_width` 64 is the standard model; smaller widths give the narrow
    variants used for CPU training and tests. `frozen_blocks` counts frozen blocks among
    (stem, c2, c3, c4, c5) from the input side: 2 (the detection default) freezes the stem and
    c2, 0 trains everything, 5 freezes the whole body. Frozen stages also freeze their batch
    norms' statistics (trainable norms there become FrozenBatchNorm2d). `num_stages` 3 stops
    after c4 (the C4 model, whose c5 stage is the RoI head)."""

    def __init__(
        self,
        *,
        depth: int = 50,
        base_width: int = 64,
        norm: NormFactory = frozen_bn(),
        frozen_blocks: int = 2,
        stride_in_1x1: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        num_stages: int = 4,
    ):
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
        block, layers = RESNET_SPECS[depth]
        if stride_in_1x1 and block is not Bottleneck:
            raise ValueError(f"stride_in_1x1 applies to bottleneck ResNets (depth >= 50), not depth {depth}")
        if (groups != 1 or width_per_group != 64) and block is not Bottleneck:
            raise ValueError(f"groups / width_per_group (ResNeXt) apply to bottleneck ResNets (depth >= 50), "
                             f"not depth {depth}")
        if groups < 1 or width_per_group < 1:
            raise ValueError(f"groups and width_per_group must be positive, got {groups} and {width_per_group}")
        if num_stages not in (3, 4):
            raise ValueError(f"num_stages must be 3 (up to c4) or 4, got {num_stages}")
        extra = {"stride_in_1x1": True} if stride_in_1x1 else {}
        if groups != 1 or width_per_group != 64:
            extra.update(groups=groups, width_per_group=width_per_group)
        self.block_options = dict(extra)  # for a res5 head built apart (C4)
        self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
        self.bn1 = norm(base_width)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = base_width
        self.out_channels: list[int] = []
        for i, num_blocks in enumerate(layers[:num_stages]):
            width = base_width * 2**i
            setattr(self, f"layer{i + 1}", resnet_stage(block, in_channels, width, num_blocks, 1 if i == 0 else 2,
                                                        norm, **extra))
            in_channels = width * block.expansion
            self.out_channels.append(in_channels)
        self.strides = [4, 8, 16, 32][:num_stages]
        self.freeze(frozen_blocks)

    def freeze(self, frozen_blocks: int) -> None:
        if not 0 <= frozen_blocks <= 5:
            raise ValueError(f"frozen_blocks must be in 0..5, got {frozen_blocks}")
        stages = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
        for stage in stages[:frozen_blocks]:
            for name in stage:
                if not hasattr(self, name):  # c5 of a C4 body: it lives in the RoI head
                    continue
                module = freeze_batch_norm(getattr(self, name))
                setattr(self, name, module)
                for p in module.parameters():
                    p.requires_grad_(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(torch.relu_(conv_norm(self.conv1, self.bn1, x)))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        if not hasattr(self, "layer4"):
            return {"c2": c2, "c3": c3, "c4": c4}
        return {"c2": c2, "c3": c3, "c4": c4, "c5": self.layer4(c4)}
