"""Input transform: normalize, resize, pad into a batch; and map results back to each image.

Two resize conventions, so that published weights see the same pixels they were trained on:

resize="torchvision" follows torchvision's eager GeneralizedRCNNTransform arithmetic exactly
(normalize first, then a bilinear resize whose scale is min(min_size / short, max_size / long) in
Python (double) floats and whose size is floor(side * scale)). torchvision computes the scale in
float32 only when tracing or scripting; that gives a size one pixel smaller on about half of all
image sizes (375x500 -> 799x1066, not 800x1066).

resize="detectron2" follows Detectron2's ResizeShortestEdge: the size is rounded half up
(`detectron2_resized_size`), and the pixels are resized as uint8 by Pillow's bilinear filter
(reproduced bit for bit by `pillow_bilinear_resize`) before the normalization.

The model's input is always RGB in [0, 1]; `input_format="BGR"` and `pixel_scale=255` give the
network the BGR 0..255 pixels that Detectron2's MSRA weights expect (image_mean and image_std are
then in those units and that channel order).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.masks import chunk_ranges
from ..ops.keypoints import scale_keypoints
from ..structures import ImageList

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_size(height: int, width: int, min_size: float, max_size: float) -> tuple[int, int]:
    """Short side to min_size unless the long side would exceed max_size.

    Double-precision arithmetic, as torchvision's eager path and F.interpolate(scale_factor=...,
    recompute_scale_factor=True) do it; an exported graph must use the same (see export)."""
    scale = min(float(min_size) / min(height, width), float(max_size) / max(height, width))
    # At least one pixel: a 2 x 5000 strip would otherwise resize to 0 rows and fail inside
    # F.interpolate (torchvision fails there too); every size that works is unchanged.
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


def detectron2_resized_size(height: int, width: int, min_size: float, max_size: float) -> tuple[int, int]:
    """Detectron2's ResizeShortestEdge.get_output_shape, in Python floats: the short side to
    min_size, both sides scaled down if the long one exceeds max_size, then int(x + 0.5).
    A 300 x 451 image becomes 800 x 1203 here, 800 x 1202 with `resized_size`."""
    size = float(min_size)
    scale = size / min(height, width)
    new_h, new_w = (size, scale * width) if height < width else (scale * height, size)
    if max(new_h, new_w) > max_size:
        scale = float(max_size) / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    # at least one pixel, as `resized_size` (Detectron2 fails on a 1 x 5000 strip's 0 rows)
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


# Pillow's fixed-point resampling (libImaging/Resample.c): weights carry 22 fractional bits.
_PILLOW_PRECISION_BITS = 22


@functools.lru_cache(maxsize=64)
def _pillow_bilinear_taps(in_size: int, out_size: int) -> tuple[Tensor, Tensor]:
    """Source indices and integer weights, both (out_size, ksize), of each output pixel, as
    Pillow's precompute_coeffs + normalize_coeffs_8bpc compute them for the bilinear (triangle)
    filter, whose support (1) is widened by the reduction factor when shrinking. Python floats
    are C doubles and the operations are done in C's order, so the weights are Pillow's exactly.
    Unused taps have weight 0."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ss = 1.0 / filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    one = 1 << _PILLOW_PRECISION_BITS
    index = [[0] * ksize for _ in range(out_size)]
    weight = [[0] * ksize for _ in range(out_size)]
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward 0, as C's cast
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights, total = [], 0.0
        for x in range(xmax):
            t = abs((x + xmin - center + 0.5) * ss)
            w = 1.0 - t if t < 1.0 else 0.0
            weights.append(w)
            total += w
        if total != 0.0:
            weights = [w / total for w in weights]
        for x, w in enumerate(weights):
            index[xx][x] = xmin + x
            weight[xx][x] = int(-0.5 + w * one) if w < 0 else int(0.5 + w * one)
        for x in range(len(weights), ksize):
            index[xx][x] = xmin
    return torch.tensor(index, dtype=torch.int64), torch.tensor(weight, dtype=torch.int32)


def _pillow_pass(image: Tensor, out_size: int, dim: int) -> Tensor:
    """One separable pass of Pillow's 8-bit resample along `dim` (-1 or -2) of a uint8 tensor:
    integer weighted sums plus 2^21, shifted right by 22 bits and clipped to 0..255. Exact in
    int32, as Pillow's own sums (at most 255 * 2^22 + 2^21 < 2^31)."""
    index, weight = _pillow_bilinear_taps(image.shape[dim], out_size)
    index, weight = index.to(image.device), weight.to(image.device)
    # whole rows are gathered when the pass runs along dim -2; the horizontal pass transposes
    src = image.transpose(-1, -2) if dim == -1 else image
    src = src.to(torch.int32).contiguous()
    acc = torch.full((*src.shape[:-2], out_size, src.shape[-1]), 1 << (_PILLOW_PRECISION_BITS - 1),
                     dtype=torch.int32, device=image.device)
    for k in range(index.shape[1]):
        # a loop over filter taps (at most 2 * ceil(reduction) + 1), not pixels
        acc += src.index_select(-2, index[:, k]) * weight[:, k, None]
    out = (acc >> _PILLOW_PRECISION_BITS).clamp_(0, 255).to(torch.uint8)
    return out.transpose(-1, -2).contiguous() if dim == -1 else out


def pillow_bilinear_resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 (C, H, W) -> uint8 (C, new_h, new_w), bit for bit what
    `PIL.Image.fromarray(hwc).resize((new_w, new_h), Image.BILINEAR)` returns for each channel:
    a horizontal pass, then a vertical one, each rounding to uint8."""
    if image.dtype != torch.uint8:
        raise TypeError(f"pillow_bilinear_resize takes uint8 images, got {image.dtype}")
    new_h, new_w = size
    if new_w != image.shape[-1]:
        image = _pillow_pass(image, new_w, -1)
    if new_h != image.shape[-2]:
        image = _pillow_pass(image, new_h, -2)
    return image


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Rescale (R, 4) boxes between two image sizes (h, w), as float32 ratios."""
    ratio_h = torch.tensor(to_size[0], dtype=torch.float32) / torch.tensor(from_size[0], dtype=torch.float32)
    ratio_w = torch.tensor(to_size[1], dtype=torch.float32) / torch.tensor(from_size[1], dtype=torch.float32)
    ratios = torch.stack((ratio_w, ratio_h, ratio_w, ratio_h)).to(boxes)
    return boxes * ratios


class ImageTransform(nn.Module):
    """images: list of (3, Hi, Wi) float RGB tensors in [0, 1] -> padded, normalized ImageList.

    Training picks the short side at random from `min_size` (multi-scale); eval uses the last.
    input_format "RGB" / "BGR" and pixel_scale (1 or 255) say what the network sees; image_mean
    and image_std are in those units. resize: "torchvision" (normalize, then interpolate the
    float image; sizes rounded down) or "detectron2" (quantize to uint8, Pillow's bilinear
    resize, then normalize; sizes rounded half up). See the module docstring.
    """

    def __init__(
        self,
        *,
        min_size: int | tuple[int, ...] = 800,
        max_size: int = 1333,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        size_divisible: int = 32,
        input_format: str = "RGB",
        pixel_scale: float = 1.0,
        resize: str = "torchvision",
    ):
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
        if resize not in ("torchvision", "detectron2"):
            raise ValueError(f"resize must be 'torchvision' or 'detectron2', got {resize!r}")
        self.input_format = input_format
        self.pixel_scale = float(pixel_scale)
        self.resize = resize
        self.min_size = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        self.max_size = max_size
        self.register_buffer("image_mean", torch.tensor(image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(3, 1, 1), persistent=False)
        self.size_divisible = size_divisible

    def pick_min_size(self) -> int:
        if self.training and len(self.min_size) > 1:
            return self.min_size[int(torch.randint(len(self.min_size), ()).item())]
        return self.min_size[-1]

    def output_size(self, height: int, width: int, min_size: int | None = None) -> tuple[int, int]:
        """(h, w) an image of this size is resized to (at eval's min_size unless given)."""
        min_size = self.min_size[-1] if min_size is None else min_size
        rule = detectron2_resized_size if self.resize == "detectron2" else resized_size
        return rule(int(height), int(width), min_size, self.max_size)

    def normalize(self, image: Tensor, scale: float | None = None) -> Tensor:
        """RGB pixels -> the network's channel order, times `scale` (default `pixel_scale`, for
        [0, 1] input), minus the mean, over the std."""
        scale = self.pixel_scale if scale is None else scale
        if self.input_format == "BGR":
            image = image.flip(0)
        if scale != 1.0:
            image = image * scale
        return (image - self.image_mean.to(image)) / self.image_std.to(image)

    def resize_image(self, image: Tensor, size: tuple[int, int]) -> Tensor:
        """One (3, H, W) RGB [0, 1] image -> the normalized (3, h, w) network input."""
        if self.resize == "torchvision":
            image = self.normalize(image)
            return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        # Detectron2 resizes the uint8 image (Pillow), then converts it to float and normalizes.
        # An image read from 8-bit pixels (x / 255) quantizes back to exactly those pixels.
        pixels = torch.round(image * 255).clamp_(0, 255).to(torch.uint8)
        pixels = pillow_bilinear_resize(pixels, size)
        return self.normalize(pixels.to(image.dtype), self.pixel_scale / 255)

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        resized_images, resized_targets = [], [] if targets is not None else None
        for i, image in enumerate(images):
            h, w = image.shape[-2:]
            new_h, new_w = self.output_size(h, w, self.pick_min_size())
            image = self.resize_image(image, (new_h, new_w))
            resized_images.append(image)
            if targets is not None:
                resized_targets.append(self._resize_target(targets[i], (h, w), (new_h, new_w)))
        return self.batch(resized_images), resized_targets

    @staticmethod
    def _resize_target(target: dict[str, Tensor], old: tuple[int, int], new: tuple[int, int]) -> dict[str, Tensor]:
        target = dict(target)  # never mutate the caller's dict
        target["boxes"] = scale_boxes(target["boxes"], old, new)
        if "keypoints" in target:
            target["keypoints"] = scale_keypoints(target["keypoints"], old, new)
        if "masks" in target and target["masks"].shape[0] > 0:
            # a chunk of masks at a time as float: 3,000 instances at 512 px would be 3 GB at once
            masks = target["masks"]
            resized = masks.new_empty((masks.shape[0], *new), dtype=torch.uint8)
            for part in chunk_ranges(masks.shape[0], max(old[0] * old[1], new[0] * new[1])):
                resized[part] = F.interpolate(masks[part, None].float(), size=new, mode="nearest")[:, 0].to(torch.uint8)
            target["masks"] = resized
        elif "masks" in target:
            target["masks"] = target["masks"].new_zeros((0, *new))
        return target

    def batch(self, images: list[Tensor]) -> ImageList:
        """Zero-pad to a common size that is a multiple of `size_divisible` (bottom/right)."""
        max_h = max(img.shape[-2] for img in images)
        max_w = max(img.shape[-1] for img in images)
        d = self.size_divisible
        max_h, max_w = int(math.ceil(max_h / d) * d), int(math.ceil(max_w / d) * d)
        batched = images[0].new_zeros((len(images), 3, max_h, max_w))
        for img, slot in zip(images, batched):
            slot[:, : img.shape[-2], : img.shape[-1]].copy_(img)
        return ImageList(batched, [(int(img.shape[-2]), int(img.shape[-1])) for img in images])
