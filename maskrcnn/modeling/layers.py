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

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor) -> Tensor:
    """norm(conv(x)). A frozen norm is an affine map, so it is folded into the convolution's
    weights and bias: one pass over the activations instead of two. With gradients on, the fold
    is recomputed each call (so the conv still trains); without them it is kept until a weight
    changes, since refolding R50's 23 M weights costs about as much as its box branch."""
    if not isinstance(norm, FrozenBatchNorm2d):
        return norm(conv(x))
    cache = not torch.is_grad_enabled() and not torch.compiler.is_compiling()  # compile folds constants itself
    weight, bias = _folded(conv, norm) if cache else _fold(conv, norm)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _fold(conv: nn.Conv2d, norm: FrozenBatchNorm2d, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    scale, shift = norm.scale_and_shift()
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    if dtype is not None:  # autocast would cast them on every call
        weight, bias = weight.to(dtype), bias.to(dtype)
    return weight, bias


def _folded(conv: nn.Conv2d, norm: FrozenBatchNorm2d) -> tuple[Tensor, Tensor]:
    """The fold, cached on the norm (not in its state dict). The key holds each tensor's
    version counter and storage, so an in-place update, a load_state_dict, .to() or a changed
    eps all refold; and the autocast dtype, so the cached weights are already in it."""
    tensors = [t for t in (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
               if t is not None]
    try:
        state = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)
    except RuntimeError:  # inference tensors (a model built under inference_mode) have no versions
        return _fold(conv, norm)
    device = conv.weight.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    key = (state, norm.eps, dtype)
    cached = getattr(norm, "_folded_cache", None)
    if cached is None or cached[0] != key:
        cached = norm._folded_cache = (key, _fold(conv, norm, dtype))
    return cached[1]


def frozen_bn(eps: float = 1e-5) -> NormFactory:
    return lambda channels: FrozenBatchNorm2d(channels, eps=eps)


def batch_norm(eps: float = 1e-5) -> NormFactory:
    return lambda channels: nn.BatchNorm2d(channels, eps=eps)


class SyncableBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d chosen as "sync_bn": plain batch norm in one process, replaced by
    torch.nn.SyncBatchNorm (statistics over all processes) when training under DDP, see
    `convert_sync_batch_norm`. The type marks which layers asked for it, so that a model with
    "bn" heads and a "sync_bn" backbone converts only the backbone."""


def group_norm(num_groups: int = 32) -> NormFactory:
    def make(channels: int) -> nn.Module:
        if channels % num_groups:
            raise ValueError(f"GroupNorm: a layer of {channels} channels cannot be split into {num_groups} "
                             "groups; set gn_groups to a divisor of every layer's width")
        return nn.GroupNorm(num_groups, channels)
    return make


# Names of the norm layers a model can be configured with (ModelConfig.backbone_norm / head_norm).
NORM_CHOICES = ("frozen_bn", "bn", "sync_bn", "gn", "none")


def norm_factory(name: str, *, eps: float = 1e-5, gn_groups: int = 32) -> NormFactory | None:
    """"frozen_bn": fixed statistics and affine (as the published models; the identity unless
    weights are loaded), "bn": trainable batch norm, "sync_bn": batch norm synchronized over
    DDP processes, "gn": GroupNorm with `gn_groups` groups (Wu & He 2018), "none": None.
    `eps` is the frozen norm's (torchvision's v1 weights expect 0.0); trained ones use 1e-5."""
    if name == "frozen_bn":
        return frozen_bn(eps)
    if name == "bn":
        return batch_norm()
    if name == "sync_bn":
        return lambda channels: SyncableBatchNorm2d(channels)
    if name == "gn":
        return group_norm(gn_groups)
    if name == "none":
        return None
    raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(NORM_CHOICES)}")


def convert_sync_batch_norm(module: nn.Module) -> int:
    """Replace, in place, every SyncableBatchNorm2d under `module` by a torch.nn.SyncBatchNorm
    with the same parameters and statistics. Returns how many were replaced."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SyncableBatchNorm2d):
                setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                count += 1
    return count


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace, in place, the trainable batch norms under `module` (itself included; the
    result is returned) by FrozenBatchNorm2d holding their current statistics: what a frozen
    stage of a batch-norm backbone is (Detectron2's FrozenBatchNorm2d.convert_frozen_batchnorm),
    so its statistics do not drift with training batches either."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in list(module.named_children()):
        new = freeze_batch_norm(child)
        if new is not child:
            setattr(module, name, new)
    return module


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
        return torch.relu_(x) if self.activation else x


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
