"""Small building blocks shared by the backbone and the heads."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NormFactory = Callable[[int], nn.Module]


def full_precision(x: Tensor) -> Tensor:
    """At least float32: head outputs leave reduced precision (bf16/fp16 autocast) here, so box
    decoding, NMS, softmax, losses and mask pasting never run in 8 or 11 mantissa bits.
    float64 (gradient checks) stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (buffers, not parameters).

    Detection batches are too small for batch statistics, so the ImageNet ones are frozen.
    y = (x - running_mean) / sqrt(running_var + eps) * weight + bias. torchvision's published
    v1 COCO weights expect eps=0.0; Detectron2's expect 1e-5.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # BatchNorm2d checkpoints carry a step counter that frozen statistics do not need.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_and_shift()
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor) -> Tensor:
    """norm(conv(x)). A frozen norm is an affine map, so it is folded into the convolution's
    weights and bias (recomputed each call, so the conv still trains): one pass over the
    activations instead of two."""
    if not isinstance(norm, FrozenBatchNorm2d):
        return norm(conv(x))
    scale, shift = norm.scale_and_shift()
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def frozen_bn(eps: float = 1e-5) -> NormFactory:
    return lambda channels: FrozenBatchNorm2d(channels, eps=eps)


def batch_norm(eps: float = 1e-5) -> NormFactory:
    return lambda channels: nn.BatchNorm2d(channels, eps=eps)


class ConvNormAct(nn.Module):
    """conv -> optional norm -> optional ReLU. The conv has a bias only when there is no norm."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        norm: NormFactory | None = None,
        activation: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, bias=norm is None)
        self.norm = norm(out_channels) if norm is not None else None
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return torch.relu(x) if self.activation else x


def conv_stack(in_channels: int, dims: tuple[int, ...], norm: NormFactory | None = None) -> nn.Sequential:
    """3x3 conv (+ norm) + ReLU layers of the given widths."""
    layers = []
    for dim in dims:
        layers.append(ConvNormAct(in_channels, dim, 3, norm=norm))
        in_channels = dim
    return nn.Sequential(*layers)


def init_for_relu(modules) -> None:
    """He initialization (fan-out) for the convolutions among `modules`, zero biases."""
    for layer in modules:
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
