"""Overlay images: colored masks, outlines, boxes and "class score" captions.

    >>> overlay = draw_instances(image, det.boxes, det.labels, det.scores, det.masks,
    ...                          class_names=["__background__", "person", ...])  # doctest: +SKIP
    >>> overlay.save("overlay.png")                                               # doctest: +SKIP

Mask blending is one vectorized pass over a label map (each pixel takes the color of the
highest-scoring instance covering it, the same rule as `outputs.label_map`), so the cost does
not grow with a Python loop over pixels; only boxes and captions loop over instances.
"""
from __future__ import annotations

import colorsys
import functools
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..io import ImageSource, load_image
from .outputs import label_map

__all__ = ["draw_instances", "instance_colors"]

_GOLDEN = 0.618033988749895


def instance_colors(num: int) -> np.ndarray:
    """uint8 (num, 3) RGB colors, the same for the same `num` on every run.

    Hues step by the golden ratio around the wheel, so consecutive instances (which usually
    neighbour each other in score order) get far-apart hues and no two of the first few dozen
    look alike; saturation and value alternate to separate the rare near-equal hues.
    """
    colors = [
        colorsys.hsv_to_rgb((0.07 + i * _GOLDEN) % 1.0, 0.85 if i % 2 == 0 else 0.6, 0.95 if i % 3 else 0.8)
        for i in range(num)
    ]
    return np.round(np.array(colors, dtype=np.float64).reshape(num, 3) * 255).astype(np.uint8)


def _to_uint8_hwc(image: ImageSource | np.ndarray) -> np.ndarray:
    """Any image `load_image` accepts -> uint8 (H, W, 3)."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image  # the common case, without a round trip through float
    chw = load_image(image, max_pixels=None, name="image to draw on")
    return (chw * 255).round().to("cpu").byte().permute(1, 2, 0).numpy()


def _outline(labels: np.ndarray, width: int) -> np.ndarray:
    """bool (H, W): pixels of an instance within `width` pixels of a different label (or of
    the image border), i.e. an outline drawn just inside each mask."""
    edge = np.zeros(labels.shape, dtype=bool)
    inner = labels.copy()
    for _ in range(width):  # peel one pixel-wide ring per step
        padded = np.pad(inner, 1, constant_values=0)
        centre = padded[1:-1, 1:-1]
        ring = (
            (centre != padded[:-2, 1:-1]) | (centre != padded[2:, 1:-1])
            | (centre != padded[1:-1, :-2]) | (centre != padded[1:-1, 2:])
        ) & (centre > 0)
        edge |= ring
        inner[ring] = 0
    return edge


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's bundled font: scalable when Pillow has FreeType, a fixed bitmap font otherwise.
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # old Pillow without the size argument
        return ImageFont.load_default()


def _class_name(label: int, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
    if class_names is None:
        return str(label)
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    return str(class_names[label]) if 0 <= label < len(class_names) else str(label)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def draw_instances(
    image: ImageSource,
    boxes,
    labels,
    scores=None,
    masks=None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    *,
    alpha: float = 0.5,
    mask_threshold: float = 0.5,
    show_boxes: bool = True,
    show_labels: bool = True,
    keypoints=None,
    skeleton: Sequence[Sequence[int]] | None = None,
    keypoint_scores=None,
    keypoint_thresh: float | None = None,
) -> Image.Image:
    """Draw one image's detections; returns an RGB PIL image of the input's size.

    image: float (3, H, W) in [0, 1] or uint8 (3, H, W) tensor, uint8 (H, W, 3) array, a PIL
        image or a path (anything `load_image` takes).
    boxes: float (R, 4) xyxy pixels; labels: int (R,); scores: float (R,) or None (captions
        then show the class only, overlaps go to the lower index).
    masks: bool (R, H, W), float probabilities (binarized with `>= mask_threshold`), or None.
    class_names: indexed by label, so index 0 is background (torchvision's category lists
        work as they are), or a {label: name} dict; None shows the label number.
    alpha: mask opacity. Instance i gets color `instance_colors(R)[i]` for its mask, its
        outline (full strength, so touching instances stay apart) and its box.
    keypoints: float (R, P, 3) (x, y, v) or None: a dot per keypoint with v > 0 (and, given
        keypoint_scores (R, P) and keypoint_thresh, a score >= it), and a line for each
        `skeleton` pair ([i, j], 1-based as COCO's) whose two keypoints are both drawn.

    Pixels change only inside masks, on box lines and under captions.
    """
    rgb = _to_uint8_hwc(image)
    height, width = rgb.shape[:2]
    boxes_np = _np(boxes).astype(np.float64).reshape(-1, 4)
    labels_np = _np(labels).astype(np.int64).reshape(-1)
    num = boxes_np.shape[0]
    scores_np = None if scores is None else _np(scores).astype(np.float64).reshape(-1)
    if labels_np.shape[0] != num or (scores_np is not None and scores_np.shape[0] != num):
        raise ValueError(f"got {num} boxes, {labels_np.shape[0]} labels and "
                         f"{None if scores_np is None else scores_np.shape[0]} scores")
    colors = instance_colors(num)
    line = max(1, round(max(height, width) / 500))  # about 1 px at 500 px, 3 px at 1333 px

    out = rgb
    if masks is not None and num:
        m = _np(masks)
        if m.shape != (num, height, width):
            raise ValueError(f"expected masks of shape {(num, height, width)}, got {m.shape}")
        rank = scores_np if scores_np is not None else -np.arange(num, dtype=np.float64)
        labels_map = label_map(m if m.dtype == np.bool_ else m >= mask_threshold, rank)  # (H, W) int32
        palette = np.concatenate([np.zeros((1, 3)), colors]).astype(np.float32)  # row 0: background
        covered = labels_map > 0
        blended = rgb.astype(np.float32)
        blended[covered] = (1 - alpha) * blended[covered] + alpha * palette[labels_map[covered]]
        edge = _outline(labels_map, line)
        blended[edge] = palette[labels_map[edge]]
        out = np.rint(blended).clip(0, 255).astype(np.uint8)

    canvas = Image.fromarray(out)
    if keypoints is not None and num:
        _draw_keypoints(ImageDraw.Draw(canvas), keypoints, keypoint_scores, keypoint_thresh, skeleton, colors, line)
    if not (show_boxes or show_labels) or num == 0:
        return canvas
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, round(max(height, width) / 60)))
    for i in range(num):
        if not np.isfinite(boxes_np[i]).all():
            continue  # nothing sensible to draw, and PIL would raise
        x1, x2 = sorted(boxes_np[i, [0, 2]])
        y1, y2 = sorted(boxes_np[i, [1, 3]])
        color = tuple(int(c) for c in colors[i])
        if show_boxes:
            draw.rectangle((x1, y1, x2, y2), outline=color, width=line)
        if show_labels:
            text = _class_name(int(labels_np[i]), class_names)
            if scores_np is not None:
                text = f"{text} {scores_np[i]:.2f}"
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            tw, th, pad = right - left, bottom - top, 2
            # above the box when there is room, else just inside its top edge; kept in the image
            tx = min(max(x1, 0), max(width - tw - 2 * pad, 0))
            ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else max(y1, 0)
            ty = min(ty, max(height - th - 2 * pad, 0))
            draw.rectangle((tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad), fill=color)
            # dark text on light colors, white on dark ones (ITU-R 601 luma)
            luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
            draw.text((tx + pad - left, ty + pad - top), text, font=font,
                      fill=(0, 0, 0) if luma > 150 else (255, 255, 255))
    return canvas


def _draw_keypoints(draw: ImageDraw.ImageDraw, keypoints, scores, thresh, skeleton, colors: np.ndarray, line: int) -> None:
    """Skeleton lines in the instance's color, then keypoint dots (white-ringed, so they show
    on the instance's own mask)."""
    points = _np(keypoints).astype(np.float64)
    if points.ndim != 3 or points.shape[0] != len(colors) or points.shape[2] != 3:
        raise ValueError(f"expected keypoints of shape ({len(colors)}, P, 3), got {points.shape}")
    shown = (points[..., 2] > 0) & np.isfinite(points[..., :2]).all(-1)
    if scores is not None and thresh is not None:
        shown &= _np(scores).reshape(points.shape[:2]) >= thresh
    radius = line + 1
    for i in range(points.shape[0]):
        color = tuple(int(c) for c in colors[i])
        for a, b in skeleton or []:
            if 1 <= a <= points.shape[1] and 1 <= b <= points.shape[1] and shown[i, a - 1] and shown[i, b - 1]:
                draw.line([tuple(points[i, a - 1, :2]), tuple(points[i, b - 1, :2])], fill=color, width=line)
        for x, y in points[i, shown[i], :2]:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color, outline=(255, 255, 255))
